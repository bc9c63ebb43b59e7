"""MNIST-style IDX files, the format Fashion-MNIST and MNIST are distributed in.

The header is parsed rather than skipped by a fixed offset, so a labels file passed as images,
a truncated download or a file of another data type is reported instead of turning into noise.
Compression is detected from the gzip magic bytes, because distributions rename and recompress
these files freely.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeexit.data.records import LabelledData, to_unit_float32
from edgeexit.errors import DataError

__all__ = ["IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC", "load_idx"]

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, H, W)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N,)

_GZIP_MAGIC = b"\x1f\x8b"


def load_idx(
    images_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str],
    labels: Sequence[str] | None = None,
) -> LabelledData:
    """Pair an IDX images file with its IDX labels file.

    ``labels`` names the classes; without it they are "0", "1", ... up to the largest label.
    """
    images_path, labels_path = Path(images_path), Path(labels_path)
    images = _read_idx(images_path, IDX_IMAGES_MAGIC, "images (N, H, W)")
    targets = _read_idx(labels_path, IDX_LABELS_MAGIC, "labels (N,)")
    if len(images) != len(targets):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(targets)} labels; "
            f"they must be the images and labels of the same split"
        )
    y = targets.astype(np.int64)
    if labels is None:
        if not len(y):
            raise DataError(f"{labels_path}: no labels and no class names given, so the classes are unknown")
        names = tuple(str(i) for i in range(int(y.max()) + 1))
    else:
        names = tuple(labels)
        if len(y) and int(y.max()) >= len(names):
            raise DataError(
                f"{labels_path}: has label {int(y.max())} but only {len(names)} class names were given "
                f"(indices 0 .. {len(names) - 1})"
            )
    x = to_unit_float32(images[:, np.newaxis], str(images_path))
    return LabelledData(x=x, y=y, labels=names, source=f"IDX files {images_path} and {labels_path}")


def _read_idx(path: Path, magic: int, what: str) -> np.ndarray:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: IDX {what} file is missing") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read IDX {what} file: {exc}") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: gzip-compressed but cannot be decompressed ({exc}); re-download it") from None

    expected = f"expected magic 0x{magic:08x} (IDX {what}, unsigned bytes)"
    if len(raw) < 4:
        raise DataError(f"{path}: only {len(raw)} bytes, too short for an IDX header; {expected}")
    (found,) = struct.unpack(">I", raw[:4])
    if found != magic:
        raise DataError(f"{path}: magic number is 0x{found:08x}; {expected}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated inside the IDX header ({len(raw)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = math.prod(dims)
    if len(raw) - header != count:
        shape = " x ".join(str(d) for d in dims)
        problem = "truncated" if len(raw) - header < count else "longer than its header says"
        raise DataError(
            f"{path}: {problem}: the header declares {shape} = {count} bytes of data, the file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=count, offset=header).reshape(dims)
