"""A directory of images with one sub-directory per class, the torchvision ``ImageFolder`` layout.

It is the layout people already have photos in, so it needs no conversion step. Pillow is
imported only here, inside the loader, because edge devices import ``edgeexit.data`` without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgeexit.data.records import LabelledData, to_unit_float32
from edgeexit.errors import DataError

__all__ = ["EXPECTED_FOLDER_LAYOUT", "IMAGE_SUFFIXES", "load_image_folder"]

EXPECTED_FOLDER_LAYOUT = (
    "a directory with one sub-directory per class holding that class's images, "
    "e.g. root/cat/001.png, root/dog/002.jpg (classes are ordered by directory name)"
)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})
_COLOR_MODES = {"L": 1, "RGB": 3}


def load_image_folder(
    root: str | os.PathLike[str],
    size: tuple[int, int] | None = None,
    color_mode: str = "L",
) -> LabelledData:
    """Load ``root/<class>/<image>`` into one array, all images resized to a common size.

    ``size`` is ``(height, width)``, the order of ``sample_shape``; by default it is the size of
    the first image (of the first class), so a folder of equally sized images is not resampled.
    ``color_mode`` is "L" (grey, 1 channel) or "RGB" (3 channels). Only files directly inside a
    class directory whose suffix is in ``IMAGE_SUFFIXES`` are read, and hidden files and
    directories (".DS_Store", ".ipynb_checkpoints") are ignored, so stray notes do not break
    loading; but every file that looks like an image must decode, since silently dropping one
    would change the data set.
    """
    root = Path(root)
    mode = color_mode.upper()
    if mode not in _COLOR_MODES:
        raise DataError(f"color_mode must be 'L' (grey) or 'RGB'; got {color_mode!r}")
    if size is not None and (len(size) != 2 or not all(isinstance(d, int | np.integer) and d > 0 for d in size)):
        raise DataError(f"size must be (height, width) with two positive integers; got {size!r}")
    if not root.is_dir():
        what = "a file" if root.exists() else "missing"
        raise DataError(f"{root}: cannot load an image folder, the path is {what}; expected {EXPECTED_FOLDER_LAYOUT}")

    class_dirs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    if not class_dirs:
        raise DataError(f"{root}: has no class sub-directories; expected {EXPECTED_FOLDER_LAYOUT}")
    files: list[Path] = []
    targets: list[int] = []
    for index, class_dir in enumerate(class_dirs):
        images = sorted(
            p
            for p in class_dir.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not images:
            raise DataError(
                f"{class_dir}: class directory has no image files ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                f"expected {EXPECTED_FOLDER_LAYOUT}"
            )
        files.extend(images)
        targets.extend([index] * len(images))

    try:
        from PIL import Image
    except ImportError:
        raise DataError(
            "loading an image folder needs Pillow: pip install pillow (or pip install 'edgeexit[data]')"
        ) from None

    pixels: np.ndarray | None = None
    for i, file in enumerate(files):
        try:
            with Image.open(file) as img:
                img = img.convert(mode)
                if size is None:
                    size = (img.height, img.width)
                if (img.height, img.width) != tuple(size):
                    img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                array = np.asarray(img, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise DataError(f"{file}: cannot read this image ({type(exc).__name__}: {exc})") from None
        if pixels is None:
            # Preallocate uint8 storage: one float copy at the end instead of a list of arrays.
            pixels = np.empty((len(files), *array.shape), dtype=np.uint8)
        pixels[i] = array
    # Both are set by the first image, and there is at least one (checked above).
    assert pixels is not None
    assert size is not None
    pixels = pixels[:, np.newaxis] if pixels.ndim == 3 else pixels.transpose(0, 3, 1, 2)
    x = to_unit_float32(pixels, str(root))
    return LabelledData(
        x=x,
        y=np.asarray(targets, dtype=np.int64),
        labels=tuple(p.name for p in class_dirs),
        source=(
            f"image folder {root} ({len(files)} images in {len(class_dirs)} classes, "
            f"{mode} at {size[0]}x{size[1]} pixels)"
        ),
    )
