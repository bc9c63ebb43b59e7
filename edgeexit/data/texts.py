"""Labelled texts: the record every text loader returns, and the steps text loaders share.

The tweets (``edgeexit.data.tweets``) and the Rotten Tomatoes snippets
(``edgeexit.data.rotten_tomatoes``) differ in how their files are read and cleaned; after that
they are the same: repeated texts are kept once under their majority label (so no text is in
both training and test data), and the rest is split train / validation / test per class with a
fixed seed. Those steps live here once.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import numpy as np

from edgeexit.errors import DataError

__all__ = [
    "SPLIT_NAMES",
    "DedupeCounts",
    "LabelledText",
    "TextData",
    "TextSplits",
    "check_shares",
    "class_counts",
    "dedupe_rows",
    "normalized",
    "split_texts",
    "stratified_split",
]

#: The three splits every text loader returns, in order.
SPLIT_NAMES = ("train", "validation", "test")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, eq=False)
class TextData:
    """Texts and their int64 labels, the text counterpart of ``LabelledData``."""

    texts: tuple[str, ...]
    y: np.ndarray
    labels: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "texts", tuple(self.texts))
        if not isinstance(self.y, np.ndarray) or self.y.dtype != np.int64 or self.y.ndim != 1:
            raise DataError(f"TextData.y must be an int64 array of shape (N,); got {self.y!r:.80} ({self.source})")
        if len(self.texts) != len(self.y):
            raise DataError(f"TextData has {len(self.texts)} texts but {len(self.y)} labels ({self.source})")
        if len(self.y) and (int(self.y.min()) < 0 or int(self.y.max()) >= len(self.labels)):
            raise DataError(f"TextData labels must lie in 0..{len(self.labels) - 1} ({self.source})")

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, count: int) -> TextData:
        """The first ``count`` samples (the split is already shuffled)."""
        return TextData(self.texts[:count], self.y[:count], self.labels, f"{self.source}, first {count}")


class Report(Protocol):
    """What a loader says about its file: what it dropped and why, one line per finding."""

    def lines(self) -> list[str]: ...


R = TypeVar("R", bound=Report)


@dataclass(frozen=True)
class TextSplits(Generic[R]):
    """Train / validation / test texts and the loader's report on the file (``noise``)."""

    train: TextData
    validation: TextData
    test: TextData
    noise: R


class LabelledText(Protocol):
    """A row as a loader reads it: at least its label index and its (cleaned) text."""

    @property
    def label(self) -> int: ...

    @property
    def text(self) -> str: ...


T = TypeVar("T", bound=LabelledText)


@dataclass(frozen=True)
class DedupeCounts:
    """What ``dedupe_rows`` found, counted in rows unless said otherwise."""

    duplicate_rows: int  # rows whose normalized text occurs more than once
    conflicting_texts: int  # distinct texts that carry more than one label
    conflicting_rows: int  # rows with such a text


def normalized(text: str) -> str:
    """The text as dedupe compares it: runs of whitespace as one space, lower case."""
    return _SPACES.sub(" ", text).strip().lower()


def dedupe_rows(rows: Sequence[T]) -> tuple[list[T], DedupeCounts]:
    """Each normalized text once, under its majority label (the first row carrying it); texts
    without a strict majority are dropped, since their label is unknown. Order: first occurrence."""
    groups: dict[str, list[T]] = collections.defaultdict(list)
    for row in rows:
        groups[normalized(row.text)].append(row)
    kept: list[T] = []
    for group in groups.values():
        votes = collections.Counter(r.label for r in group).most_common()
        if len(votes) > 1 and votes[0][1] == votes[1][1]:
            continue
        kept.append(next(r for r in group if r.label == votes[0][0]))
    repeated = [g for g in groups.values() if len(g) > 1]
    conflicting = [g for g in repeated if len({r.label for r in g}) > 1]
    return kept, DedupeCounts(
        duplicate_rows=sum(len(g) for g in repeated),
        conflicting_texts=len(conflicting),
        conflicting_rows=sum(len(g) for g in conflicting),
    )


def check_shares(shares: Sequence[float]) -> None:
    if len(shares) != 3 or any(s < 0 for s in shares) or abs(sum(shares) - 1.0) > 1e-6:
        raise DataError(
            f"shares must be three non-negative fractions (train, validation, test) summing to 1; got {shares}"
        )


def stratified_split(y: np.ndarray, shares: Sequence[float], seed: int) -> list[np.ndarray]:
    """Indices of each part: every class cut by ``shares`` in a seeded random order, then each
    part shuffled, so every part has the class balance of the whole and ``take(n)`` is fair."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in shares]
    bounds = np.cumsum(shares)[:-1]
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        for i, chunk in enumerate(np.split(members, (bounds * len(members)).round().astype(int))):
            parts[i].append(chunk)
    return [rng.permutation(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]


def split_texts(
    rows: Sequence[LabelledText], labels: tuple[str, ...], shares: Sequence[float], seed: int, source: str
) -> tuple[TextData, TextData, TextData]:
    """``rows`` as the train / validation / test ``TextData`` of ``stratified_split``."""
    check_shares(shares)
    y = np.array([r.label for r in rows], dtype=np.int64)
    texts = [r.text for r in rows]
    train, validation, test = (
        TextData(tuple(texts[i] for i in idx), y[idx], labels, f"{source}, {name} split")
        for idx, name in zip(stratified_split(y, shares, seed), SPLIT_NAMES, strict=True)
    )
    return train, validation, test


def class_counts(rows: Sequence[LabelledText], num_labels: int) -> tuple[int, ...]:
    counts = collections.Counter(r.label for r in rows)
    return tuple(counts[k] for k in range(num_labels))
