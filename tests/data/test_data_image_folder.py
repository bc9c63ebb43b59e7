"""root/<class>/<images> with real PNGs written by Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeexit.data import load_image_folder
from edgeexit.errors import DataError


def save(path: Path, size_wh: tuple[int, int], color: int | tuple[int, int, int], mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size_wh, color).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    # "cat" sorts first, so cat/a.png (6 wide, 4 high) sets the default size.
    save(root / "cat" / "a.png", (6, 4), 255)
    save(root / "cat" / "b.png", (12, 8), 0)
    save(root / "dog" / "c.png", (3, 3), (255, 0, 0), mode="RGB")
    (root / "dog" / "notes.txt").write_text("not an image, ignored")
    (root / ".hidden").mkdir()
    return root


def test_classes_sorted_and_images_resized_to_first(folder: Path) -> None:
    data = load_image_folder(folder)
    assert data.labels == ("cat", "dog")
    assert data.y.tolist() == [0, 0, 1]
    assert data.x.dtype == np.float32
    assert data.x.shape == (3, 1, 4, 6)
    np.testing.assert_allclose(data.x[0], 1.0)
    np.testing.assert_allclose(data.x[1], 0.0)
    # Solid red in grey (ITU-R 601-2 luma): 255 * 299/1000, uniform after resizing.
    np.testing.assert_allclose(data.x[2], 76 / 255, atol=1 / 255)
    assert str(folder) in data.source


def test_explicit_size_is_height_width_and_rgb(folder: Path) -> None:
    data = load_image_folder(folder, size=(5, 7), color_mode="RGB")
    assert data.x.shape == (3, 3, 5, 7)
    red = data.x[2]
    np.testing.assert_allclose(red[0], 1.0)
    np.testing.assert_allclose(red[1:], 0.0)
    assert "5x7" in data.source


def test_unreadable_image_names_the_file(folder: Path) -> None:
    broken = folder / "dog" / "broken.png"
    broken.write_bytes(b"\x00garbage, not a PNG" * 10)
    with pytest.raises(DataError) as info:
        load_image_folder(folder)
    assert str(broken) in str(info.value)


def test_truncated_png_names_the_file(folder: Path) -> None:
    cut = folder / "cat" / "cut.png"
    save(cut, (64, 64), 128)
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.png"):
        load_image_folder(folder)


def test_empty_root_explains_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="one sub-directory per class") as info:
        load_image_folder(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_images_directly_in_root_explain_layout(tmp_path: Path) -> None:
    save(tmp_path / "a.png", (2, 2), 0)
    with pytest.raises(DataError, match="no class sub-directories"):
        load_image_folder(tmp_path)


def test_class_without_images_is_an_error(folder: Path) -> None:
    (folder / "empty_class").mkdir()
    with pytest.raises(DataError, match="empty_class"):
        load_image_folder(folder)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"color_mode": "CMYK"}, "color_mode"),
        ({"size": (0, 4)}, "size"),
        ({"size": (4,)}, "size"),
    ],
)
def test_bad_arguments(folder: Path, kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(DataError, match=fragment):
        load_image_folder(folder, **kwargs)  # type: ignore[arg-type]


def test_missing_root_and_file_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing"):
        load_image_folder(tmp_path / "nope")
    file_root = tmp_path / "file.png"
    save(file_root, (2, 2), 0)
    with pytest.raises(DataError, match="a file"):
        load_image_folder(file_root)
