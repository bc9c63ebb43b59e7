"""Data sets as one ``.npz`` file: the simplest way to bring your own data.

People export arrays from whatever they have, so the loader accepts the common variants (uint8 or
float pixels, with or without a channel axis, NHWC or NCHW) and normalises them, but refuses
anything ambiguous with a message that shows what was found and what is expected.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from edgeexit.data.records import EXTRA_PREFIX, LabelledData, to_unit_float32
from edgeexit.errors import DataError

__all__ = ["EXPECTED_NPZ_LAYOUT", "load_npz"]

EXPECTED_NPZ_LAYOUT = (
    'an .npz with x: (N, C, H, W) or (N, H, W) and y: (N,) integer labels (optional "labels": (K,) class names)'
)


def load_npz(path: str | os.PathLike[str]) -> LabelledData:
    """Read ``x``/``y`` (and optional ``labels``) from ``path`` into model-ready form.

    Without ``labels`` the class names are "0", "1", ... up to the largest label, which is what a
    model trained on integer targets would print anyway. A 4-D ``x`` is read as NHWC only when its
    last axis is 1 or 3 and its second is not; a shape such as (N, 3, 32, 3) stays NCHW, because
    guessing the other way would silently scramble channels.
    """
    path = Path(path)
    if not path.is_file():
        what = "a directory" if path.is_dir() else "missing"
        raise DataError(f"{path}: cannot load data set, the path is {what}; expected {EXPECTED_NPZ_LAYOUT}")
    try:
        with path.open("rb") as f:
            start = f.read(8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if not start.startswith((b"PK", b"\x93NUMPY")):
        # np.load would blame pickled data, which misleads for a CSV or an image renamed .npz.
        raise DataError(f"{path}: not an .npz (zip) archive, it starts with {start!r}; expected {EXPECTED_NPZ_LAYOUT}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc}); expected {EXPECTED_NPZ_LAYOUT}"
        ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(
            f"{path}: holds a single {_describe(archive)} (a .npy file), not named arrays; "
            f"expected {EXPECTED_NPZ_LAYOUT}"
        )
    with archive:
        try:
            arrays = {key: archive[key] for key in archive.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(
                f"{path}: an array in the archive cannot be read ({exc}); expected {EXPECTED_NPZ_LAYOUT}"
            ) from None
    found = ", ".join(f"{k}: {_describe(v)}" for k, v in arrays.items()) or "no arrays"
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(
            f"{path}: missing {' and '.join(repr(k) for k in missing)}; found {found}; expected {EXPECTED_NPZ_LAYOUT}"
        )

    x, y = arrays["x"], arrays["y"]
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise DataError(f"{path}: y must be (N,) integer labels; found {found}; expected {EXPECTED_NPZ_LAYOUT}")
    if x.ndim == 3:
        x = x[:, np.newaxis]
    elif x.ndim == 4:
        if x.shape[3] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{path}: x has {x.ndim} dimensions; found {found}; expected {EXPECTED_NPZ_LAYOUT}")
    if len(x) != len(y):
        raise DataError(
            f"{path}: x has {len(x)} samples but y has {len(y)}; found {found}; expected {EXPECTED_NPZ_LAYOUT}"
        )
    y = y.astype(np.int64)
    if len(y) and int(y.min()) < 0:
        raise DataError(f"{path}: y has negative labels (min {int(y.min())}); labels must be 0 .. K-1")

    if "labels" in arrays:
        names = arrays["labels"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DataError(f"{path}: 'labels' must be a 1-D array of class names (str); found {found}")
        labels = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist())
        if len(y) and int(y.max()) >= len(labels):
            raise DataError(
                f"{path}: y has label {int(y.max())} but 'labels' names only {len(labels)} classes "
                f"(indices 0 .. {len(labels) - 1})"
            )
    else:
        if not len(y):
            raise DataError(f"{path}: no samples and no 'labels', so the classes are unknown")
        labels = tuple(str(i) for i in range(int(y.max()) + 1))

    try:
        x = to_unit_float32(x, f"{path}: x")
    except DataError as exc:
        raise DataError(f"{exc}; expected {EXPECTED_NPZ_LAYOUT}") from None
    extra = {key[len(EXTRA_PREFIX) :]: value for key, value in arrays.items() if key.startswith(EXTRA_PREFIX)}
    return LabelledData(x=x, y=y, labels=labels, source=f"arrays in {path}", extra=extra)


def _describe(a: np.ndarray) -> str:
    return f"{a.dtype} {a.shape}"
