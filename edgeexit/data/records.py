"""The one in-memory form every data source is turned into.

Models, training and evaluation only ever see ``LabelledData``: float32 NCHW pixels in [0, 1],
int64 labels and the class names. Validating once here means no loader-specific quirk (uint8
pixels, NHWC layout, labels out of range) can reach a model and fail deep inside it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeexit.errors import DataError
from edgeexit.fileio import atomic_write_bytes

__all__ = ["EXTRA_PREFIX", "LabelledData"]

#: the .npz key prefix of a data set's further model inputs (``context/metadata``), as in reference.npz
EXTRA_PREFIX = "context/"


@dataclass(frozen=True, eq=False)
class LabelledData:
    """Images and labels ready for a model, plus where they came from.

    ``eq=False``: comparing two data sets element-wise is never what ``==`` should mean, and the
    default dataclass ``__eq__`` would fail on arrays anyway.
    """

    x: np.ndarray
    y: np.ndarray
    labels: tuple[str, ...]
    source: str
    #: further model inputs by name (a traced model's side vector), float32, one row per image; a
    #: model with several inputs takes ``x`` first, then these in its own order (``context_names``)
    extra: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Accept any sequence of names but store a tuple, so the record stays hashable and frozen.
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "extra", dict(self.extra))
        for name, value in self.extra.items():
            if not isinstance(value, np.ndarray) or value.dtype != np.float32 or value.ndim < 2:
                raise DataError(
                    f"LabelledData.extra[{name!r}] must be a float32 array of shape (N, ...); got {_describe(value)} "
                    f"(source: {self.source})"
                )
            if len(value) != len(self.x):
                raise DataError(
                    f"LabelledData.extra[{name!r}] has {len(value)} rows for {len(self.x)} images; expected one "
                    f"per image (source: {self.source})"
                )
        x, y, labels = self.x, self.y, self.labels
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4:
            raise DataError(
                f"LabelledData.x must be a float32 array of shape (N, C, H, W) with values in [0, 1]; "
                f"got {_describe(x)} (source: {self.source})"
            )
        if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.ndim != 1:
            raise DataError(
                f"LabelledData.y must be an int64 array of shape (N,); got {_describe(y)} (source: {self.source})"
            )
        if len(x) != len(y):
            raise DataError(
                f"LabelledData has {len(x)} images but {len(y)} labels; they must match (source: {self.source})"
            )
        if not labels or not all(isinstance(name, str) for name in labels):
            raise DataError(
                f"LabelledData.labels must be a non-empty sequence of class names (str); got {labels!r} "
                f"(source: {self.source})"
            )
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(labels)):
            raise DataError(
                f"LabelledData.y has class indices in [{int(y.min())}, {int(y.max())}] but there are "
                f"{len(labels)} class names, so indices must be in [0, {len(labels) - 1}] "
                f"(source: {self.source})"
            )

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        # The dataclass default would print every pixel.
        return (
            f"LabelledData(n={len(self)}, sample_shape={self.sample_shape}, "
            f"num_classes={self.num_classes}, source={self.source!r})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[1:])

    def subset(self, indices: Sequence[int] | np.ndarray | slice) -> LabelledData:
        """Select samples by position (a sequence, a boolean mask or a slice).

        Class names are kept even for classes that no longer occur, so label indices stay
        comparable with the model's outputs.
        """
        key: Any = indices if isinstance(indices, slice) else np.asarray(indices)
        if not isinstance(key, slice):
            if key.size == 0:
                key = key.astype(np.intp)
            elif key.dtype != np.bool_ and not np.issubdtype(key.dtype, np.integer):
                raise DataError(f"subset() takes integer positions, a boolean mask or a slice; got {key.dtype} values")
        try:
            x, y = self.x[key], self.y[key]
            extra = {name: value[key] for name, value in self.extra.items()}
        except IndexError as exc:
            raise DataError(f"subset() of a data set with {len(self)} samples failed: {exc}") from None
        if x.ndim != 4:  # a scalar index would drop the sample axis
            raise DataError("subset() needs a sequence of positions, not a single index")
        return LabelledData(x=x, y=y, labels=self.labels, source=self.source, extra=extra)

    def split(self, fraction: float, seed: int = 0) -> tuple[LabelledData, LabelledData]:
        """Shuffle once with ``seed`` and cut in two, e.g. to hold out a validation set.

        The first part gets ``round(len(self) * fraction)`` samples (Python's ``round``, so an
        exact half goes to the even count) and the second part the rest; the same seed always
        gives the same parts. Not stratified.
        """
        if not 0.0 < fraction < 1.0:
            raise DataError(f"split() fraction must be strictly between 0 and 1; got {fraction!r}")
        order = np.random.default_rng(seed).permutation(len(self))
        cut = round(len(self) * fraction)
        return self.subset(order[:cut]), self.subset(order[cut:])

    def head(self, n: int) -> LabelledData:
        """The first ``n`` samples (all of them if there are fewer), for quick smoke runs.

        The arrays are views of this data set's arrays, so it costs no copy.
        """
        if n < 0:
            raise DataError(f"head() needs n >= 0; got {n}")
        return self.subset(slice(0, n))

    def save_npz(self, path: str | os.PathLike[str]) -> None:
        """Write ``x``, ``y`` and ``labels`` so that ``load_npz`` gives the same data back.

        The file is written next to its destination and moved into place, so a crash or a full
        disk never leaves a half-written data set that a later run would trust.
        """
        target = Path(path)
        if not target.parent.is_dir():
            raise DataError(f"cannot write data set to {target}: directory {target.parent} does not exist")
        buffer = io.BytesIO()
        extra = {f"{EXTRA_PREFIX}{name}": value for name, value in self.extra.items()}
        np.savez(buffer, x=self.x, y=self.y, labels=np.array(self.labels, dtype=np.str_), **extra)
        try:
            atomic_write_bytes(target, buffer.getvalue())
        except OSError as exc:
            raise DataError(f"cannot write data set to {target}: {exc}") from None


def to_unit_float32(pixels: np.ndarray, what: str) -> np.ndarray:
    """Scale pixels to float32 in [0, 1], the range models are trained on.

    Integer pixels are taken as 8-bit (0..255). Float pixels must already be in [0, 1]: a float
    array holding 0..255 would otherwise train a model on the wrong scale without any error.
    """
    if pixels.dtype == np.uint8:
        out = pixels.astype(np.float32)
        out /= 255.0
        return np.ascontiguousarray(out)
    if pixels.size == 0:
        return np.ascontiguousarray(pixels, dtype=np.float32)
    lo, hi = pixels.min(), pixels.max()
    if np.issubdtype(pixels.dtype, np.integer) or pixels.dtype == np.bool_:
        if lo < 0 or hi > 255:
            raise DataError(
                f"{what} holds {pixels.dtype} pixels in [{lo}, {hi}]; integer pixels must be 8-bit (0..255)"
            )
        out = pixels.astype(np.float32)
        out /= 255.0
        return np.ascontiguousarray(out)
    if np.issubdtype(pixels.dtype, np.floating):
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
            raise DataError(
                f"{what} holds {pixels.dtype} pixels in [{lo}, {hi}]; float pixels must already be scaled "
                f"to [0, 1] (store uint8 0..255 instead to have them scaled on load)"
            )
        return np.ascontiguousarray(pixels, dtype=np.float32)
    raise DataError(f"{what} has {pixels.dtype} values; expected uint8 or float pixels")


def _describe(a: object) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__
