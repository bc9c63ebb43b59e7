"""Bring-your-own .npz: the common array layouts load, malformed files name the path and the layout."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgeexit.data import load_npz
from edgeexit.errors import DataError

LAYOUT = "an .npz with x: (N, C, H, W) or (N, H, W) and y: (N,) integer labels"


def test_uint8_without_channel_axis_is_scaled(tmp_path: Path) -> None:
    pixels = np.arange(5 * 6 * 7).reshape(5, 6, 7).astype(np.uint8)
    path = tmp_path / "grey.npz"
    np.savez(path, x=pixels, y=np.array([0, 1, 2, 1, 0], np.int32))
    data = load_npz(path)
    assert data.x.dtype == np.float32
    assert data.x.shape == (5, 1, 6, 7)
    np.testing.assert_array_equal(np.rint(data.x[:, 0] * 255).astype(np.uint8), pixels)
    assert data.y.dtype == np.int64
    assert data.labels == ("0", "1", "2")  # inferred from the largest label
    assert str(path) in data.source


@pytest.mark.parametrize("channels", [1, 3])
def test_nhwc_is_transposed_to_nchw(tmp_path: Path, channels: int) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(4, 9, 8, channels), dtype=np.uint8)
    path = tmp_path / "nhwc.npz"
    np.savez(path, x=pixels, y=np.zeros(4, np.int64), labels=np.array(["only"]))
    data = load_npz(path)
    assert data.x.shape == (4, channels, 9, 8)
    assert data.x.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(data.x, pixels.transpose(0, 3, 1, 2) / 255.0, rtol=1e-6)
    assert data.labels == ("only",)


def test_nchw_float_and_labels_pass_through(tmp_path: Path) -> None:
    pixels = np.linspace(0, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)  # float64, already NCHW
    path = tmp_path / "float.npz"
    np.savez(path, x=pixels, y=np.array([1, 0]), labels=np.array(["cat", "dog", "bird"]))
    data = load_npz(path)
    assert data.x.dtype == np.float32
    np.testing.assert_allclose(data.x, pixels, rtol=1e-6)
    assert data.labels == ("cat", "dog", "bird")


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


GOOD_X = np.zeros((3, 1, 4, 4), np.uint8)
GOOD_Y = np.array([0, 1, 0])


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"y": GOOD_Y}, "missing 'x'"),
        ({"x": GOOD_X}, "missing 'y'"),
        ({"images": GOOD_X, "targets": GOOD_Y}, "found images: uint8 (3, 1, 4, 4)"),
        ({"x": np.zeros((3, 16), np.uint8), "y": GOOD_Y}, "x has 2 dimensions"),
        ({"x": np.zeros((3, 1, 1, 4, 4), np.uint8), "y": GOOD_Y}, "x has 5 dimensions"),
        ({"x": GOOD_X, "y": np.array([0, 1])}, "x has 3 samples but y has 2"),
        ({"x": GOOD_X, "y": np.array([0.0, 1.0, 0.0])}, "integer labels"),
        ({"x": GOOD_X, "y": GOOD_Y[:, None]}, "integer labels"),
        ({"x": GOOD_X, "y": np.array([0, -1, 0])}, "negative"),
        ({"x": GOOD_X, "y": np.array([0, 5, 0]), "labels": np.array(["a", "b"])}, "only 2 classes"),
        ({"x": GOOD_X, "y": GOOD_Y, "labels": np.array([[1, 2]])}, "class names"),
        ({"x": GOOD_X * 0.0 + 255.0, "y": GOOD_Y}, "[0, 1]"),
        ({"x": GOOD_X.astype(np.int32) - 1, "y": GOOD_Y}, "8-bit"),
    ],
)
def test_malformed_arrays_name_path_and_problem(tmp_path: Path, arrays: dict[str, np.ndarray], fragment: str) -> None:
    path = write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError) as info:
        load_npz(path)
    message = str(info.value)
    assert str(path) in message
    assert fragment in message


def test_not_a_zip_names_path_and_layout(tmp_path: Path) -> None:
    path = tmp_path / "text.npz"
    path.write_text("x,y\n1,2\n")
    with pytest.raises(DataError) as info:
        load_npz(path)
    assert str(path) in str(info.value)
    assert LAYOUT in str(info.value)
    assert "starts with b'x,y" in str(info.value)


def test_truncated_zip_names_path(tmp_path: Path) -> None:
    good = write_npz(tmp_path / "good.npz", x=GOOD_X, y=GOOD_Y)
    path = tmp_path / "cut.npz"
    path.write_bytes(good.read_bytes()[:200])
    assert path.read_bytes()[:2] == b"PK"
    with pytest.raises(DataError, match=r"cut\.npz"):
        load_npz(path)


def test_npy_file_is_not_an_npz(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    with path.open("wb") as f:
        np.save(f, GOOD_X)
    with pytest.raises(DataError, match=r"single uint8 \(3, 1, 4, 4\)") as info:
        load_npz(path)
    assert str(path) in str(info.value)


def test_pickled_object_array_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "obj.npz"
    np.savez(path, x=GOOD_X, y=np.array([0, "a", None], dtype=object))
    with pytest.raises(DataError, match=r"obj\.npz"):
        load_npz(path)


def test_empty_zip_and_missing_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.npz"
    with zipfile.ZipFile(empty, "w"):
        pass
    with pytest.raises(DataError, match="found no arrays") as info:
        load_npz(empty)
    assert str(empty) in str(info.value)
    missing = tmp_path / "nope.npz"
    with pytest.raises(DataError, match="missing") as info:
        load_npz(missing)
    assert str(missing) in str(info.value)
