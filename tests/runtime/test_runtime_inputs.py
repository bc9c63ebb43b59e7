"""Files to model-ready samples (runtime/inputs.py): real .npy/.npz files and real PNGs written with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeexit.errors import EdgeExitError, InputError
from edgeexit.manifest import InputSpec, Preprocessing
from edgeexit.package import open_package
from edgeexit.runtime.inputs import load_samples, normalize, read_image


@pytest.fixture(scope="module")
def spec(digits_package: Path) -> InputSpec:
    return open_package(digits_package).manifest.input


def _expected(raw: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """``(pixel * scale - mean) / std`` computed here, channel by channel (C, H, W input)."""
    out = np.empty(raw.shape, np.float64)
    for c in range(raw.shape[-3]):
        mean = prep.mean[c] if len(prep.mean) > 1 else prep.mean[0]
        std = prep.std[c] if len(prep.std) > 1 else prep.std[0]
        out[..., c, :, :] = (raw[..., c, :, :].astype(np.float64) * prep.scale - mean) / std
    return out


def test_the_digits_package_scales_pixels_by_1_over_255(spec: InputSpec) -> None:
    prep = spec.preprocessing
    assert prep is not None
    assert prep.color_mode == "L"
    assert tuple(prep.size) == (8, 8)
    assert prep.scale == pytest.approx(1 / 255)
    assert tuple(prep.mean) == (0.0,)
    assert tuple(prep.std) == (1.0,)


# ---------------------------------------------------------------- .npy


def test_npy_single_sample(tmp_path: Path, spec: InputSpec, digits) -> None:
    path = tmp_path / "one.npy"
    np.save(path, digits.x[5])  # (1, 8, 8) float32
    [sample] = load_samples([path], spec)
    assert sample.name == "one.npy"
    assert sample.true_class is None
    assert sample.x.dtype == np.float32
    assert sample.x.shape == (1, 8, 8)
    np.testing.assert_array_equal(sample.x, digits.x[5])


def test_npy_single_sample_with_a_batch_axis(tmp_path: Path, spec: InputSpec, digits) -> None:
    path = tmp_path / "one.npy"
    np.save(path, digits.x[5:6])  # (1, 1, 8, 8)
    [sample] = load_samples([str(path)], spec)  # str paths work too
    assert sample.name == "one.npy"
    np.testing.assert_array_equal(sample.x, digits.x[5])


def test_npy_batch(tmp_path: Path, spec: InputSpec, digits) -> None:
    path = tmp_path / "batch.npy"
    np.save(path, digits.x[:6])
    samples = load_samples([path], spec)
    assert [s.name for s in samples] == [f"batch.npy[{i}]" for i in range(6)]
    for i, sample in enumerate(samples):
        assert sample.x.shape == (1, 8, 8)
        assert sample.x.flags.c_contiguous
        np.testing.assert_array_equal(sample.x, digits.x[i])


def test_uint8_pixels_are_normalized_per_the_manifest(tmp_path: Path, spec: InputSpec) -> None:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(3, 1, 8, 8), dtype=np.uint8)
    raw[0, 0, 0, 0], raw[0, 0, 0, 1] = 0, 255
    path = tmp_path / "raw.npy"
    np.save(path, raw)
    samples = load_samples([path], spec)
    assert len(samples) == 3
    for i, sample in enumerate(samples):
        assert sample.x.dtype == np.float32
        np.testing.assert_allclose(sample.x, _expected(raw[i], spec.preprocessing), atol=1e-6)
        np.testing.assert_allclose(sample.x, raw[i] / 255.0, atol=1e-6)  # what it means for this package
    assert samples[0].x[0, 0, 0] == 0.0
    assert samples[0].x[0, 0, 1] == pytest.approx(1.0)


def test_normalize_with_mean_and_std() -> None:
    prep = Preprocessing(color_mode="RGB", size=(2, 2), mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    raw = np.arange(3 * 2 * 2, dtype=np.uint8).reshape(3, 2, 2) * 20
    out = normalize(raw, prep)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, _expected(raw, prep), atol=1e-6)
    batch = normalize(np.stack([raw, raw]), prep)  # NCHW works too
    np.testing.assert_allclose(batch[1], out, atol=1e-6)


def test_float64_npy_is_refused(tmp_path: Path, spec: InputSpec) -> None:
    path = tmp_path / "double.npy"
    np.save(path, np.zeros((1, 8, 8), np.float64))
    with pytest.raises(InputError, match=r"double\.npy.*float64.*float32"):
        load_samples([path], spec)


def test_wrong_shape_npy_is_refused(tmp_path: Path, spec: InputSpec) -> None:
    path = tmp_path / "flat.npy"
    np.save(path, np.zeros((64,), np.float32))
    with pytest.raises(InputError, match=r"flat\.npy.*\(64,\).*expected one sample"):
        load_samples([path], spec)


def test_an_object_npy_is_refused(tmp_path: Path, spec: InputSpec) -> None:
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"objects\.npy"):
        load_samples([path], spec)


def test_a_garbage_npy_is_refused(tmp_path: Path, spec: InputSpec) -> None:
    path = tmp_path / "junk.npy"
    path.write_bytes(b"not numpy at all")
    with pytest.raises(InputError, match=r"junk\.npy"):
        load_samples([path], spec)


# ---------------------------------------------------------------- .npz


def test_npz_with_x_and_y_gives_true_classes(tmp_path: Path, spec: InputSpec, digits) -> None:
    path = tmp_path / "labelled.npz"
    np.savez(path, x=digits.x[:4], y=digits.y[:4])
    samples = load_samples([path], spec)
    assert [s.true_class for s in samples] == [int(v) for v in digits.y[:4]]
    assert all(isinstance(s.true_class, int) for s in samples)
    assert [s.name for s in samples] == [f"labelled.npz[{i}]" for i in range(4)]
    for i, sample in enumerate(samples):
        np.testing.assert_array_equal(sample.x, digits.x[i])


def test_npz_with_x_only(tmp_path: Path, spec: InputSpec, digits) -> None:
    path = tmp_path / "unlabelled.npz"
    np.savez(path, x=digits.x[:2])
    samples = load_samples([path], spec)
    assert [s.true_class for s in samples] == [None, None]


def test_npz_with_uint8_x_is_normalized(tmp_path: Path, spec: InputSpec) -> None:
    raw = np.full((2, 1, 8, 8), 51, np.uint8)
    path = tmp_path / "raw.npz"
    np.savez(path, x=raw, y=np.array([3, 4]))
    samples = load_samples([path], spec)
    np.testing.assert_allclose(samples[0].x, 0.2, atol=1e-6)
    assert [s.true_class for s in samples] == [3, 4]


def test_npz_without_x_is_refused(tmp_path: Path, spec: InputSpec, digits) -> None:
    path = tmp_path / "wrong.npz"
    np.savez(path, images=digits.x[:2], y=digits.y[:2])
    with pytest.raises(InputError, match=r"wrong\.npz.*'x'"):
        load_samples([path], spec)


def test_npz_with_mismatched_labels_is_refused(tmp_path: Path, spec: InputSpec, digits) -> None:
    path = tmp_path / "short.npz"
    np.savez(path, x=digits.x[:3], y=digits.y[:2])
    with pytest.raises(InputError, match=r"short\.npz.*'y'"):
        load_samples([path], spec)


def test_a_garbage_npz_is_refused(tmp_path: Path, spec: InputSpec) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(b"PK\x03\x04 this is no zip")
    with pytest.raises(InputError, match=r"broken\.npz"):
        load_samples([path], spec)


# ---------------------------------------------------------------- images


def test_a_grayscale_png_is_resized_to_the_manifest_size(tmp_path: Path, spec: InputSpec) -> None:
    pixels = (np.arange(16 * 16).reshape(16, 16) % 256).astype(np.uint8)
    path = tmp_path / "gray.png"
    Image.fromarray(pixels, mode="L").save(path)
    [sample] = load_samples([path], spec)
    assert sample.name == "gray.png"
    assert sample.true_class is None
    assert sample.x.shape == (1, 8, 8)
    assert sample.x.dtype == np.float32
    resized = np.asarray(Image.fromarray(pixels, mode="L").resize((8, 8), Image.BILINEAR), np.float64)
    np.testing.assert_allclose(sample.x[0], resized / 255.0, atol=1e-6)
    assert sample.x.min() >= 0.0
    assert sample.x.max() <= 1.0


def test_an_rgb_png_is_converted_to_the_package_colour_mode(tmp_path: Path, spec: InputSpec) -> None:
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    path = tmp_path / "colour.png"
    Image.fromarray(rgb, mode="RGB").save(path)
    x = read_image(path, spec)
    assert x.shape == (1, 8, 8)
    assert x.dtype == np.float32
    luma = (200 * 299 + 100 * 587 + 50 * 114) / 1000  # ITU-R 601-2, what Pillow's "L" uses
    np.testing.assert_allclose(x, luma / 255.0, atol=1.5 / 255)


def test_an_image_already_at_the_right_size(tmp_path: Path, spec: InputSpec, digits) -> None:
    pixels = np.round(digits.x[0, 0] * 255).astype(np.uint8)
    path = tmp_path / "exact.png"
    Image.fromarray(pixels, mode="L").save(path)
    [sample] = load_samples([path], spec)
    np.testing.assert_allclose(sample.x[0], pixels / 255.0, atol=1e-6)


def test_images_and_arrays_mix_in_one_call(tmp_path: Path, spec: InputSpec, digits) -> None:
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(tmp_path / "a.png")
    np.save(tmp_path / "b.npy", digits.x[:2])
    np.savez(tmp_path / "c.npz", x=digits.x[:1], y=digits.y[:1])
    samples = load_samples([tmp_path / "a.png", tmp_path / "b.npy", tmp_path / "c.npz"], spec)
    assert [s.name for s in samples] == ["a.png", "b.npy[0]", "b.npy[1]", "c.npz"]
    assert samples[-1].true_class == int(digits.y[0])


def test_a_garbage_png_is_refused_naming_the_file(tmp_path: Path, spec: InputSpec) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(InputError, match=r"broken\.png"):
        load_samples([path], spec)
    text = tmp_path / "notes.png"
    text.write_text("just text")
    with pytest.raises(InputError, match=r"notes\.png"):
        load_samples([text], spec)


def test_an_image_without_preprocessing_is_refused(tmp_path: Path, spec: InputSpec) -> None:
    from dataclasses import replace

    path = tmp_path / "gray.png"
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(path)
    bare = replace(spec, preprocessing=None)
    with pytest.raises(InputError, match="preprocessing"):
        load_samples([path], bare)
    np.save(tmp_path / "raw.npy", np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(InputError, match="preprocessing"):
        load_samples([tmp_path / "raw.npy"], bare)


def test_an_unknown_suffix_is_refused(tmp_path: Path, spec: InputSpec) -> None:
    path = tmp_path / "sample.csv"
    path.write_text("1,2,3\n")
    with pytest.raises(InputError, match=r"sample\.csv.*unknown type \.csv.*\.npy") as caught:
        load_samples([path], spec)
    assert ".png" in str(caught.value)
    bare = tmp_path / "noext"
    bare.write_bytes(b"\x00")
    with pytest.raises(InputError, match=r"\(none\)"):
        load_samples([bare], spec)


def test_a_missing_file_is_refused(tmp_path: Path, spec: InputSpec) -> None:
    with pytest.raises(InputError, match=r"missing\.npy does not exist"):
        load_samples([tmp_path / "missing.npy"], spec)
    with pytest.raises(InputError, match="does not exist"):
        load_samples([tmp_path], spec)  # a directory is not an input file


def test_input_errors_are_edgeexit_errors(tmp_path: Path, spec: InputSpec) -> None:
    with pytest.raises(EdgeExitError):
        load_samples([tmp_path / "missing.png"], spec)
