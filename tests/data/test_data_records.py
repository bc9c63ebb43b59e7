"""LabelledData is the contract every loader hands to models, so its checks must hold exactly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edgeexit.data import LabelledData, load_npz
from edgeexit.errors import DataError


def make(n: int = 10, classes: int = 3, channels: int = 1) -> LabelledData:
    rng = np.random.default_rng(1)
    return LabelledData(
        x=rng.random((n, channels, 4, 5), dtype=np.float32),
        y=np.arange(n, dtype=np.int64) % classes,
        labels=tuple(f"class{i}" for i in range(classes)),
        source="unit test",
    )


def test_properties_and_short_repr() -> None:
    data = make(n=7, classes=3, channels=3)
    assert len(data) == 7
    assert data.num_classes == 3
    assert data.sample_shape == (3, 4, 5)
    assert "n=7" in repr(data)
    assert len(repr(data)) < 200


def test_labels_list_is_stored_as_tuple() -> None:
    data = LabelledData(x=np.zeros((2, 1, 2, 2), np.float32), y=np.array([0, 1]), labels=["a", "b"], source="s")
    assert data.labels == ("a", "b")


@pytest.mark.parametrize(
    ("x", "y", "labels", "fragment"),
    [
        (np.zeros((2, 1, 2, 2), np.uint8), np.array([0, 1]), ("a", "b"), "float32"),
        (np.zeros((2, 2, 2), np.float32), np.array([0, 1]), ("a", "b"), "(N, C, H, W)"),
        (np.zeros((2, 1, 2, 2), np.float32), np.array([0, 1], np.int32), ("a", "b"), "int64"),
        (np.zeros((2, 1, 2, 2), np.float32), np.array([[0, 1]]), ("a", "b"), "int64"),
        (np.zeros((3, 1, 2, 2), np.float32), np.array([0, 1]), ("a", "b"), "3 images but 2 labels"),
        (np.zeros((2, 1, 2, 2), np.float32), np.array([0, 1]), (), "non-empty"),
        (np.zeros((2, 1, 2, 2), np.float32), np.array([0, 2]), ("a", "b"), "[0, 1]"),
        (np.zeros((2, 1, 2, 2), np.float32), np.array([-1, 1]), ("a", "b"), "[0, 1]"),
    ],
)
def test_invalid_contents_raise(x: np.ndarray, y: np.ndarray, labels: tuple[str, ...], fragment: str) -> None:
    with pytest.raises(DataError, match="source: where") as info:
        LabelledData(x=x, y=y, labels=labels, source="where")
    assert fragment in str(info.value)


def test_subset_keeps_labels_and_source() -> None:
    data = make(n=10, classes=4)
    part = data.subset([3, 1])
    assert part.y.tolist() == [3, 1]
    np.testing.assert_array_equal(part.x, data.x[[3, 1]])
    assert part.labels == data.labels
    assert part.source == data.source
    assert len(data.subset(data.y == 0)) == 3
    assert len(data.subset([])) == 0


@pytest.mark.parametrize("indices", [[10], [0.5], 3])
def test_subset_rejects_bad_indices(indices: object) -> None:
    with pytest.raises(DataError):
        make(n=10).subset(indices)  # type: ignore[arg-type]


def test_split_sizes_disjoint_and_seeded() -> None:
    data = make(n=11)
    first, second = data.split(0.3, seed=5)
    assert len(first) == round(11 * 0.3) == 3
    assert len(second) == 8
    keys = [x.tobytes() for x in (*first.x, *second.x)]
    assert sorted(keys) == sorted(x.tobytes() for x in data.x)  # a partition of the data
    again, _ = data.split(0.3, seed=5)
    np.testing.assert_array_equal(first.x, again.x)
    other, _ = data.split(0.3, seed=6)
    assert not np.array_equal(first.x, other.x)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_fraction_outside_open_interval(fraction: float) -> None:
    with pytest.raises(DataError, match="fraction"):
        make().split(fraction)


def test_head() -> None:
    data = make(n=10)
    assert data.head(4).y.tolist() == [0, 1, 2, 0]
    assert len(data.head(100)) == 10
    with pytest.raises(DataError):
        data.head(-1)


def test_save_npz_round_trip_is_atomic(tmp_path: Path) -> None:
    data = make(n=6, classes=3, channels=3)
    target = tmp_path / "set.npz"
    target.write_bytes(b"old contents")  # replaced, not appended to
    data.save_npz(target)
    assert [p.name for p in tmp_path.iterdir()] == ["set.npz"]  # no temporary file left behind
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)
    loaded = load_npz(target)
    np.testing.assert_array_equal(loaded.x, data.x)
    np.testing.assert_array_equal(loaded.y, data.y)
    assert loaded.labels == data.labels
    with np.load(target, allow_pickle=False) as archive:
        assert sorted(archive.files) == ["labels", "x", "y"]


def test_save_npz_into_missing_directory_raises(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "set.npz"
    with pytest.raises(DataError, match="missing"):
        make().save_npz(target)


def test_write_bytes_atomic_replaces_whole_file(tmp_path: Path) -> None:
    from edgeexit.fileio import atomic_write_bytes

    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"first version, longer")
    atomic_write_bytes(os.fspath(target), b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
