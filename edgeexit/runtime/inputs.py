"""Turn files into model-ready samples, the way the manifest's preprocessing says.

``.npy`` / ``.npz`` hold either raw pixels (uint8: scaled and normalized here) or model-ready
float32 values; image files are read with Pillow, converted to the package's colour mode,
resized and normalized. Anything else is an InputError naming the file and what was expected.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeexit.data.records import LabelledData
from edgeexit.errors import DataError, InputError
from edgeexit.manifest import InputSpec, Manifest, Preprocessing

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm")


@dataclass(frozen=True, eq=False)
class Sample:
    """One model-ready input, where it came from, and its true class when the file said."""

    name: str
    x: np.ndarray
    true_class: int | None = None


def load_samples(paths: Sequence[str | Path], spec: InputSpec) -> list[Sample]:
    samples: list[Sample] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise InputError(f"input {path} does not exist; expected a .npy, .npz or image file")
        suffix = path.suffix.lower()
        if suffix == ".npy":
            samples += _from_array(path.name, _load_npy(path), None, spec, path)
        elif suffix == ".npz":
            x, y = _load_npz(path)
            samples += _from_array(path.name, x, y, spec, path)
        elif suffix in IMAGE_SUFFIXES:
            samples.append(Sample(path.name, read_image(path, spec)))
        else:
            raise InputError(
                f"input {path} has an unknown type {suffix or '(none)'}; expected .npy, .npz or an image "
                f"({', '.join(IMAGE_SUFFIXES)})"
            )
    return samples


def read_image(path: Path, spec: InputSpec) -> np.ndarray:
    prep = spec.preprocessing
    if prep is None:
        raise InputError(f"the package records no image preprocessing, so {path} cannot be turned into an input")
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise InputError("reading images needs Pillow: pip install pillow (it comes with edgeexit[device])") from None
    try:
        with Image.open(path) as image:
            converted = image.convert(prep.color_mode).resize((prep.size[1], prep.size[0]), Image.BILINEAR)
            pixels = np.asarray(converted, dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(f"cannot read image {path}: {err}; expected a readable image file") from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return normalize(pixels.transpose(2, 0, 1), prep)


def normalize(pixels: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """``(pixel * scale - mean) / std`` per channel, on a CHW or NCHW array of raw pixels."""
    channels = pixels.shape[-3]
    mean = np.asarray(prep.mean if len(prep.mean) == channels else prep.mean * channels, np.float32)
    std = np.asarray(prep.std if len(prep.std) == channels else prep.std * channels, np.float32)
    shape = (channels, 1, 1)
    out = (pixels.astype(np.float32) * np.float32(prep.scale) - mean.reshape(shape)) / std.reshape(shape)
    return out.astype(np.float32)


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise InputError(f"cannot read {path} as a numpy array: {err}") from None


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data.files:
                raise InputError(f"{path} has arrays {data.files}; expected 'x' (inputs) and optionally 'y' (labels)")
            return data["x"], (data["y"] if "y" in data.files else None)
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise InputError(f"cannot read {path} as an .npz archive: {err}") from None


def _from_array(name: str, x: np.ndarray, y: np.ndarray | None, spec: InputSpec, path: Path) -> list[Sample]:
    rank = len(spec.shape) - 1
    if x.ndim == rank:
        x = x[None]
    if x.ndim != rank + 1:
        raise InputError(
            f"{path} holds an array of shape {x.shape}; expected one sample {_shape(spec.shape[1:])} "
            f"or a batch {_shape(spec.shape)}"
        )
    if x.dtype == np.uint8:
        if spec.preprocessing is None:
            raise InputError(f"{path} holds raw uint8 pixels but the package records no preprocessing for them")
        x = normalize(x, spec.preprocessing)
    elif x.dtype != np.float32:
        raise InputError(
            f"{path} holds {x.dtype} values; expected uint8 raw pixels or float32 model-ready values "
            f"(convert with x.astype(np.float32))"
        )
    if y is not None and (y.ndim != 1 or len(y) != len(x)):
        raise InputError(f"{path}: 'y' has shape {y.shape}; expected ({len(x)},) labels, one per sample in 'x'")
    stem = name if len(x) == 1 else None
    return [
        Sample(stem or f"{name}[{i}]", np.ascontiguousarray(x[i]), None if y is None else int(y[i]))
        for i in range(len(x))
    ]


def _shape(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


def prepare_dataset(data: LabelledData, manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    """A data set (pixels scaled to [0, 1]) as this package's model input, refusing a mismatch.

    The package may expect other normalization (mean/std), so pixels are rebuilt as ``x * 255``
    and normalized the way ``edgeexit run`` treats raw images.
    """
    spec = manifest.input
    expected = tuple(spec.shape[1:])
    found = tuple(data.x.shape[1:])
    if len(expected) != len(found) or any(w is not None and w != g for w, g in zip(expected, found, strict=True)):
        raise DataError(
            f"the data's samples have shape {found} ({data.source}); the package expects {_shape(expected)}"
        )
    unnamed = data.labels == tuple(str(i) for i in range(data.num_classes))  # counted from y, not declared
    if data.num_classes > manifest.num_classes or (data.num_classes != manifest.num_classes and not unnamed):
        raise DataError(
            f"the data has {data.num_classes} classes ({data.source}); the package has {manifest.num_classes} outputs"
        )
    x = data.x
    prep = spec.preprocessing
    if prep is not None and not (
        abs(prep.scale - 1 / 255) < 1e-12 and all(m == 0 for m in prep.mean) and all(s == 1 for s in prep.std)
    ):
        x = normalize(x * 255.0, prep)
    return np.ascontiguousarray(x, dtype=np.float32), data.y
