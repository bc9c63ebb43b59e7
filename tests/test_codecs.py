"""Codecs round-trip within their stated error, and their sizes are what travels."""

from __future__ import annotations

import numpy as np
import pytest

from edgeexit.codecs import DATATYPES, Encoded, create_codec, datatype_of, list_codecs
from edgeexit.errors import EdgeExitError

RNG = np.random.default_rng(0)
HIDDEN = np.maximum(RNG.normal(size=(3, 8, 4, 4)).astype(np.float32), 0) * 3  # ReLU-like: many exact zeros


def test_the_three_codecs_are_registered() -> None:
    assert list_codecs() == ["fp16", "fp32", "int8"]
    with pytest.raises(EdgeExitError, match="unknown codec 'bf16'; expected one of: fp16, fp32, int8"):
        create_codec("bf16")


@pytest.mark.parametrize(("name", "bytes_per_element"), [("fp32", 4), ("fp16", 2), ("int8", 1)])
def test_nbytes_is_what_travels(name: str, bytes_per_element: int) -> None:
    encoded = create_codec(name).encode(HIDDEN)
    assert encoded.nbytes == HIDDEN.size * bytes_per_element == len(encoded.data.tobytes())
    assert datatype_of(encoded.data) == create_codec(name).datatype


def test_fp32_is_exact_and_fp16_within_half_precision() -> None:
    np.testing.assert_array_equal(create_codec("fp32").decode(create_codec("fp32").encode(HIDDEN)), HIDDEN)
    fp16 = create_codec("fp16")
    np.testing.assert_allclose(fp16.decode(fp16.encode(HIDDEN)), HIDDEN, rtol=2**-11, atol=1e-7)


def test_fp16_saturates_instead_of_overflowing() -> None:
    fp16 = create_codec("fp16")
    decoded = fp16.decode(fp16.encode(np.array([[1e6, -1e6]], np.float32)))
    assert np.isfinite(decoded).all()
    assert decoded[0, 0] == 65504


@pytest.mark.parametrize("shift", [0.0, -5.0, 5.0])
def test_int8_error_is_at_most_half_a_step_and_zeros_stay_exact(shift: float) -> None:
    x = HIDDEN + shift
    codec = create_codec("int8")
    encoded = codec.encode(x)
    assert encoded.data.dtype == np.uint8
    assert 0 <= encoded.zero_point <= 255
    decoded = codec.decode(encoded)
    assert np.abs(decoded - x).max() <= encoded.scale / 2 + 1e-6  # type: ignore[operator]
    if shift == 0.0:
        assert (decoded[x == 0] == 0).all()


def test_int8_of_a_constant_tensor_is_exact() -> None:
    codec = create_codec("int8")
    for value in (0.0, 2.5, -1.0):
        x = np.full((1, 4), value, np.float32)
        np.testing.assert_allclose(codec.decode(codec.encode(x)), x, atol=1e-6)


def test_int8_needs_its_scale() -> None:
    with pytest.raises(ValueError, match="scale and zero_point"):
        create_codec("int8").decode(Encoded("int8", np.zeros((1, 2), np.uint8)))


def test_tail_inputs_follow_the_contract() -> None:
    assert [(w.name, w.datatype, w.dims) for w in create_codec("fp16").wire_inputs((8, 4, 4))] == [
        ("hidden", "FP16", (8, 4, 4))
    ]
    assert [(w.name, w.datatype, w.dims) for w in create_codec("int8").wire_inputs((16,))] == [
        ("hidden", "UINT8", (16,)),
        ("scale", "FP32", (1,)),
        ("zero_point", "UINT8", (1,)),
    ]


def test_tensors_spell_out_the_affine_parameters_per_sample() -> None:
    encoded = create_codec("int8").encode(HIDDEN)
    tensors = encoded.tensors()
    assert list(tensors) == ["hidden", "scale", "zero_point"]
    assert tensors["scale"].shape == tensors["zero_point"].shape == (3, 1)
    assert (tensors["scale"] == np.float32(encoded.scale)).all()
    assert list(create_codec("fp32").encode(HIDDEN).tensors()) == ["hidden"]


def test_every_wire_datatype_is_little_endian() -> None:
    assert all(d.byteorder in ("<", "|", "=") for d in DATATYPES.values())
    with pytest.raises(ValueError, match="no v2 datatype"):
        datatype_of(np.zeros(2, np.complex64))
