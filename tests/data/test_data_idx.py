"""IDX files written here byte by byte, so the header parsing is checked against the format itself."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from edgeexit.data import load_idx
from edgeexit.errors import DataError


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def arrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, size=(7, 5, 4), dtype=np.uint8), np.array([0, 1, 2, 3, 0, 1, 2], np.uint8)


def write(path: Path, data: bytes, compress: bool) -> Path:
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.parametrize(
    ("compress", "images_name", "labels_name"),
    [
        (False, "images-idx3-ubyte", "labels-idx1-ubyte"),
        (True, "images-idx3-ubyte.gz", "labels-idx1-ubyte.gz"),
        (True, "images.idx", "labels.idx"),  # gzip found by its magic bytes, whatever the name
    ],
)
def test_round_trip(
    tmp_path: Path, arrays: tuple[np.ndarray, np.ndarray], compress: bool, images_name: str, labels_name: str
) -> None:
    images, labels = arrays
    images_path = write(tmp_path / images_name, idx_bytes(images), compress)
    labels_path = write(tmp_path / labels_name, idx_bytes(labels), compress)
    data = load_idx(images_path, labels_path, labels=["a", "b", "c", "d"])
    assert data.x.shape == (7, 1, 5, 4)
    assert data.x.dtype == np.float32
    np.testing.assert_array_equal(np.rint(data.x[:, 0] * 255).astype(np.uint8), images)
    assert data.y.dtype == np.int64
    assert data.y.tolist() == labels.tolist()
    assert data.labels == ("a", "b", "c", "d")
    assert str(images_path) in data.source


def test_default_labels_are_indices(tmp_path: Path, arrays: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = arrays
    data = load_idx(write(tmp_path / "i", idx_bytes(images), False), write(tmp_path / "l", idx_bytes(labels), False))
    assert data.labels == ("0", "1", "2", "3")


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_images(tmp_path: Path, arrays: tuple[np.ndarray, np.ndarray], compress: bool) -> None:
    images, labels = arrays
    images_path = write(tmp_path / "images", idx_bytes(images)[:-10], compress)
    labels_path = write(tmp_path / "labels", idx_bytes(labels), compress)
    with pytest.raises(DataError, match="truncated") as info:
        load_idx(images_path, labels_path)
    assert str(images_path) in str(info.value)
    assert "7 x 5 x 4 = 140 bytes" in str(info.value)


def test_truncated_gzip_stream(tmp_path: Path, arrays: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = arrays
    compressed = gzip.compress(idx_bytes(images))
    images_path = tmp_path / "images.gz"
    images_path.write_bytes(compressed[: len(compressed) // 2])
    labels_path = write(tmp_path / "labels", idx_bytes(labels), False)
    with pytest.raises(DataError, match="decompressed") as info:
        load_idx(images_path, labels_path)
    assert str(images_path) in str(info.value)


def test_wrong_magic_when_files_are_swapped(tmp_path: Path, arrays: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = arrays
    images_path = write(tmp_path / "images", idx_bytes(images), False)
    labels_path = write(tmp_path / "labels", idx_bytes(labels), False)
    with pytest.raises(DataError, match="0x00000801; expected magic 0x00000803") as info:
        load_idx(labels_path, images_path)
    assert str(labels_path) in str(info.value)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"\x00\x00", "too short"),
        (b"\x00\x00\x0d\x03" + b"\x00" * 20, "magic number is 0x00000d03"),  # float32 images
        (b"\x00\x00\x08\x03\x00\x00", "inside the IDX header"),
    ],
)
def test_malformed_headers(
    tmp_path: Path, arrays: tuple[np.ndarray, np.ndarray], payload: bytes, fragment: str
) -> None:
    images_path = write(tmp_path / "images", payload, False)
    labels_path = write(tmp_path / "labels", idx_bytes(arrays[1]), False)
    with pytest.raises(DataError, match=fragment):
        load_idx(images_path, labels_path)


def test_trailing_bytes_are_an_error(tmp_path: Path, arrays: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = arrays
    images_path = write(tmp_path / "images", idx_bytes(images), False)
    labels_path = write(tmp_path / "labels", idx_bytes(labels) + b"\x00", False)
    with pytest.raises(DataError, match="longer than its header says"):
        load_idx(images_path, labels_path)


def test_count_mismatch(tmp_path: Path, arrays: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = arrays
    images_path = write(tmp_path / "images", idx_bytes(images), False)
    labels_path = write(tmp_path / "labels", idx_bytes(labels[:-1]), False)
    with pytest.raises(DataError, match=r"7 images but .* 6 labels"):
        load_idx(images_path, labels_path)


def test_label_beyond_class_names(tmp_path: Path, arrays: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = arrays
    images_path = write(tmp_path / "images", idx_bytes(images), False)
    labels_path = write(tmp_path / "labels", idx_bytes(labels), False)
    with pytest.raises(DataError, match="label 3 but only 2 class names") as info:
        load_idx(images_path, labels_path, labels=["a", "b"])
    assert str(labels_path) in str(info.value)


def test_missing_file(tmp_path: Path, arrays: tuple[np.ndarray, np.ndarray]) -> None:
    labels_path = write(tmp_path / "labels", idx_bytes(arrays[1]), False)
    with pytest.raises(DataError, match="missing") as info:
        load_idx(tmp_path / "nope", labels_path)
    assert str(tmp_path / "nope") in str(info.value)
