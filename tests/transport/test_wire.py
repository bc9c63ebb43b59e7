"""The tail request and reply exactly as docs/offload.md says, byte for byte, without a server."""

from __future__ import annotations

import numpy as np
import pytest

from edgeexit.codecs import Encoded, create_codec, list_codecs
from edgeexit.errors import EdgeExitError, OffloadError
from edgeexit.transport.generated import grpc_service_pb2 as pb
from edgeexit.transport.wire import build_request, parse_reply, read_request

DIMS = (16, 4, 4)


def _hidden(n: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.maximum(rng.normal(size=(n, *DIMS)), 0).astype(np.float32)  # ReLU-like: exact zeros too


@pytest.mark.parametrize("codec", ["fp32", "fp16", "int8"])
def test_request_round_trips_every_codec(codec: str) -> None:
    hidden = _hidden()
    encoded = create_codec(codec).encode(hidden)
    request = build_request("digits__from_1", encoded, package_id="abc123")
    wire = pb.ModelInferRequest.FromString(request.SerializeToString())  # through real bytes
    assert wire.model_name == "digits__from_1"
    assert wire.model_version == ""
    assert len(wire.inputs) == 1
    tensor = wire.inputs[0]
    assert tensor.name == "hidden"
    assert tensor.datatype == {"fp32": "FP32", "fp16": "FP16", "int8": "UINT8"}[codec]
    assert list(tensor.shape) == [3, *DIMS]
    assert not tensor.HasField("contents")  # raw only: typed contents are refused by the contract
    assert len(wire.raw_input_contents) == 1
    assert len(wire.raw_input_contents[0]) == encoded.nbytes
    assert wire.parameters["package_id"].string_param == "abc123"
    assert wire.parameters["codec"].string_param == codec
    if codec == "int8":
        assert wire.parameters["scale"].WhichOneof("parameter_choice") == "double_param"
        assert wire.parameters["zero_point"].WhichOneof("parameter_choice") == "int64_param"
        assert wire.parameters["scale"].double_param == pytest.approx(encoded.scale)
        assert wire.parameters["zero_point"].int64_param == encoded.zero_point
    else:
        assert "scale" not in wire.parameters
        assert "zero_point" not in wire.parameters
    package_id, back = read_request(wire)
    assert package_id == "abc123"
    decoded = create_codec(codec).decode(back)
    np.testing.assert_array_equal(decoded, create_codec(codec).decode(encoded))  # the wire adds no error
    tolerance = {"fp32": 0.0, "fp16": 2e-3, "int8": float(encoded.scale or 0) / 2 + 1e-6}[codec]
    np.testing.assert_allclose(decoded, hidden, atol=tolerance, rtol=1e-3 if codec == "fp16" else 0)


def test_every_registered_codec_is_covered() -> None:
    assert set(list_codecs()) == {"fp32", "fp16", "int8"}


def test_bytes_travel_little_endian() -> None:
    hidden = _hidden(1)
    big = Encoded("fp32", hidden.astype(">f4"))
    request = build_request("m", big, package_id="p")
    assert request.raw_input_contents[0] == hidden.astype("<f4").tobytes()


def test_a_payload_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(OffloadError, match=r"float64.*FP16"):
        build_request("m", Encoded("fp16", _hidden().astype(np.float64)), package_id="p")
    with pytest.raises(OffloadError, match="scale or a zero point but not both"):
        build_request("m", Encoded("int8", np.zeros((1, 2), np.uint8), scale=0.1), package_id="p")
    with pytest.raises(EdgeExitError, match="unknown codec 'zstd'"):
        build_request("m", Encoded("zstd", np.zeros((1, 2), np.uint8)), package_id="p")


def _reply(logits: np.ndarray, *, datatype: str = "FP32", shape: list[int] | None = None, name: str = "logits",
           raw: bytes | None = None, **params: float) -> pb.ModelInferResponse:  # fmt: skip
    reply = pb.ModelInferResponse()
    out = reply.outputs.add(name=name, datatype=datatype)
    out.shape.extend(shape if shape is not None else logits.shape)
    reply.raw_output_contents.append(raw if raw is not None else logits.astype("<f4").tobytes())
    for key, value in params.items():
        reply.parameters[key].double_param = value
    return reply


def test_a_good_reply_decodes() -> None:
    logits = np.arange(20, dtype=np.float32).reshape(2, 10)
    answer = parse_reply(_reply(logits, queue_ms=1.5, compute_ms=0.75, server_ms=3.0), samples=2, classes=10)
    np.testing.assert_array_equal(answer.logits, logits)
    assert answer.logits.dtype == np.float32
    assert (answer.queue_ms, answer.compute_ms, answer.server_ms) == (1.5, 0.75, 3.0)
    bare = parse_reply(_reply(logits), samples=2, classes=None)  # Triton sends no timings
    assert (bare.queue_ms, bare.compute_ms, bare.server_ms) == (None, None, None)


def test_typed_fp32_contents_are_read_too() -> None:
    reply = pb.ModelInferResponse()
    out = reply.outputs.add(name="logits", datatype="FP32", shape=[1, 3])
    out.contents.fp32_contents.extend([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(parse_reply(reply, samples=1).logits, [[1.0, 2.0, 3.0]])


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"datatype": "FP16"}, "is FP16; expected FP32 [2, 10]"),
        ({"shape": [2, 9]}, "shape [2, 9]; expected FP32 [2, 10]"),
        ({"shape": [3, 10]}, "shape [3, 10]"),
        ({"shape": [20]}, "shape [20]"),
        ({"raw": b"\x00" * 79}, "carries 79 bytes; expected 80"),
        ({"raw": b""}, "carries 0 bytes; expected 80"),
    ],
)
def test_a_reply_that_does_not_match_is_an_offload_error(change: dict, fragment: str) -> None:
    logits = np.zeros((2, 10), np.float32)
    with pytest.raises(OffloadError) as caught:
        parse_reply(_reply(logits, **change), samples=2, classes=10)
    assert fragment in str(caught.value)


def test_missing_outputs_and_non_finite_values_are_offload_errors() -> None:
    with pytest.raises(OffloadError, match=r"outputs none; expected 'logits'"):
        parse_reply(pb.ModelInferResponse(), samples=1, classes=10)
    two = _reply(np.zeros((1, 10), np.float32), name="a")
    two.outputs.add(name="b", datatype="FP32", shape=[1, 10])
    with pytest.raises(OffloadError, match=r"\['a', 'b'\]"):
        parse_reply(two, samples=1, classes=10)
    bad = np.zeros((1, 10), np.float32)
    bad[0, 3] = np.nan
    with pytest.raises(OffloadError, match="NaN or infinite"):
        parse_reply(_reply(bad), samples=1, classes=10)
    no_data = pb.ModelInferResponse()
    no_data.outputs.add(name="logits", datatype="FP32", shape=[1, 10])
    with pytest.raises(OffloadError, match="has no data"):
        parse_reply(no_data, samples=1, classes=10)


def test_garbage_bytes_do_not_parse_as_a_reply() -> None:
    """gRPC hands the client protobuf's DecodeError for bytes that are not a reply: a failure too."""
    from google.protobuf.message import DecodeError

    with pytest.raises(DecodeError):
        pb.ModelInferResponse.FromString(b"\xff\xff\xff\xff")
