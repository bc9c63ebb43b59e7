"""Every malformed request gets NOT_FOUND or INVALID_ARGUMENT with a message saying what was
expected (docs/offload.md, "Status codes"), and the server keeps serving afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest

from edgeexit.server import ServerOptions, TailServer
from edgeexit.transport.generated import grpc_service_pb2 as pb

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def fp32(wire, x: np.ndarray, **parameters: object) -> pb.ModelInferRequest:
    return wire.request(wire.tail("fp32"), wire.encode("fp32", x), **parameters)


def int8(wire, x: np.ndarray, side_inputs: str = "parameters", **parameters: object) -> pb.ModelInferRequest:
    return wire.request(wire.tail("int8"), wire.encode("int8", x), side_inputs=side_inputs, **parameters)


def unknown_model(wire, x):
    return wire.request("resnet__from_9", wire.encode("fp32", x))


def unknown_version(wire, x):
    request = fp32(wire, x)
    request.model_version = "7"
    return request


def non_numeric_version(wire, x):
    request = fp32(wire, x)
    request.model_version = "latest"
    return request


def wrong_datatype(wire, x):
    return wire.request(wire.tail("fp32"), {"hidden": x.astype(np.float16)})


def wrong_shape(wire, x):
    return wire.request(wire.tail("fp32"), {"hidden": np.ascontiguousarray(x.reshape(len(x), 3, 2))})


def wrong_rank(wire, x):
    return wire.request(wire.tail("fp32"), {"hidden": np.ascontiguousarray(x.reshape(len(x), 6))})


def batch_too_large(wire, x):
    return fp32(wire, np.concatenate([x, x]))  # 10 samples, max_batch_size 8


def empty_batch(wire, x):
    return fp32(wire, x[:0])


def wrong_byte_count(wire, x):
    request = fp32(wire, x)
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    return request


def missing_input(wire, x):
    request = int8(wire, x)
    del request.parameters["scale"]
    del request.parameters["zero_point"]
    return request


def missing_zero_point_tensor(wire, x):
    request = int8(wire, x, side_inputs="tensors")
    del request.inputs[2]
    del request.raw_input_contents[2]
    return request


def extra_input(wire, x):
    return wire.request(wire.tail("fp32"), {"hidden": x, "extra": x})


def duplicate_input(wire, x):
    request = fp32(wire, x)
    request.inputs.append(request.inputs[0])
    request.raw_input_contents.append(request.raw_input_contents[0])
    return request


def no_inputs(wire, x):
    return pb.ModelInferRequest(model_name=wire.tail("fp32"))


def typed_contents(wire, x):
    request = pb.ModelInferRequest(model_name=wire.tail("fp32"))
    tensor = request.inputs.add(name="hidden", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    return request


def no_data(wire, x):
    request = fp32(wire, x)
    del request.raw_input_contents[:]
    return request


def raw_count_mismatch(wire, x):
    request = fp32(wire, x)
    request.raw_input_contents.append(b"\x00" * 4)
    return request


def codec_mismatch(wire, x):
    return fp32(wire, x, codec="fp16")


def unknown_output(wire, x):
    request = fp32(wire, x)
    request.outputs.add(name="probabilities")
    return request


def scale_on_an_fp32_tail(wire, x):
    return fp32(wire, x, scale=0.1)


def scale_not_a_double(wire, x):
    request = int8(wire, x)
    request.parameters["scale"].string_param = "0.1"
    return request


def scale_not_finite(wire, x):
    request = int8(wire, x)
    request.parameters["scale"].double_param = float("nan")
    return request


def zero_point_out_of_range(wire, x):
    request = int8(wire, x)
    request.parameters["zero_point"].int64_param = 300
    return request


def scale_twice(wire, x):
    request = int8(wire, x, side_inputs="tensors")
    request.parameters["scale"].double_param = 0.1
    return request


def package_id_not_a_string(wire, x):
    request = fp32(wire, x)
    request.parameters["package_id"].int64_param = 7
    return request


CASES: list[tuple[Callable, grpc.StatusCode, tuple[str, ...]]] = [
    (unknown_model, NOT_FOUND, ("unknown model 'resnet__from_9'", "tiny__from_0, tiny__from_0__fp16")),
    (unknown_version, NOT_FOUND, ("no version '7'", "loaded versions: 1")),
    (non_numeric_version, NOT_FOUND, ("no version 'latest'",)),
    (wrong_datatype, INVALID, ("datatype 'FP16'", "expected 'FP32'", "hidden FP32 [N, 2, 3]")),
    (wrong_shape, INVALID, ("shape [5, 3, 2]", "expected hidden FP32 [N, 2, 3]")),
    (wrong_rank, INVALID, ("shape [5, 6]", "expected hidden FP32 [N, 2, 3]")),
    (batch_too_large, INVALID, ("batch size 10", "1 <= N <= 8")),
    (empty_batch, INVALID, ("batch size 0", "1 <= N <= 8")),
    (wrong_byte_count, INVALID, ("holds 116 bytes", "expected 120", "5 x 6 elements x 4 bytes of FP32")),
    (missing_input, INVALID, ("missing inputs 'scale', 'zero_point'", "scale FP32 [N, 1] (or request parameter")),
    (missing_zero_point_tensor, INVALID, ("missing input 'zero_point'", "zero_point UINT8 [N, 1]")),
    (extra_input, INVALID, ("unexpected input 'extra'", "expects inputs hidden FP32 [N, 2, 3]")),
    (duplicate_input, INVALID, ("input 'hidden' appears twice",)),
    (no_inputs, INVALID, ("no inputs", "expects inputs hidden FP32 [N, 2, 3]")),
    (typed_contents, INVALID, ("typed contents", "raw_input_contents")),
    (no_data, INVALID, ("has no data", "raw_input_contents[0]")),
    (raw_count_mismatch, INVALID, ("1 inputs but 2 raw_input_contents", "one raw entry per input")),
    (codec_mismatch, INVALID, ("codec is 'fp16'", "takes codec 'fp32'")),
    (unknown_output, INVALID, ("unknown requested output 'probabilities'", "returns 'logits'")),
    (scale_on_an_fp32_tail, INVALID, ("parameter 'scale' has no input", "codec fp32")),
    (scale_not_a_double, INVALID, ("'scale' must be a finite double_param",)),
    (scale_not_finite, INVALID, ("'scale' must be a finite double_param",)),
    (zero_point_out_of_range, INVALID, ("'zero_point' must be an int64_param in [0, 255]",)),
    (scale_twice, INVALID, ("'scale' is both a request parameter and an input tensor",)),
    (package_id_not_a_string, INVALID, ("'package_id' must be a string_param",)),
]


@pytest.fixture(scope="module")
def shared_server(tiny_repo) -> Iterator[TailServer]:
    """One server for every malformed request: each must leave it serving the next."""
    server = TailServer([tiny_repo], ServerOptions(listen="127.0.0.1:0")).start()
    yield server
    server.stop(grace=0)


@pytest.mark.parametrize(("build", "code", "fragments"), CASES, ids=[c[0].__name__ for c in CASES])
def test_malformed_request_is_refused_with_what_was_expected(
    build: Callable, code: grpc.StatusCode, fragments: tuple[str, ...], shared_server: TailServer, connect, wire, hidden
) -> None:
    client = connect(shared_server)
    with pytest.raises(grpc.RpcError) as caught:
        client.stub.ModelInfer(build(wire, hidden), timeout=20)
    assert caught.value.code() == code, caught.value.details()
    for fragment in fragments:
        assert fragment in caught.value.details()
    # still serving
    assert wire.logits(client.stub.ModelInfer(fp32(wire, hidden[:1]), timeout=20)).shape == (1, wire.classes)


def raw_call(client) -> Callable:
    """ModelInfer sending bytes as they are (no serializer): for messages a stub cannot build."""
    return client.channel.unary_unary(
        MODEL_INFER, request_serializer=None, response_deserializer=pb.ModelInferResponse.FromString
    )


def test_bytes_that_do_not_parse_are_invalid_argument(shared_server: TailServer, connect, wire, hidden) -> None:
    client = connect(shared_server)
    with pytest.raises(grpc.RpcError) as caught:
        raw_call(client)(b"\x0a\xff\xff\xff\xff\x0f", timeout=20)  # field 1, length far past the end
    assert caught.value.code() == INVALID
    assert "do not parse as inference.ModelInferRequest" in caught.value.details()
    assert client.stub.ModelInfer(fp32(wire, hidden), timeout=20).outputs[0].name == "logits"


def test_an_oversize_message_is_invalid_argument_with_the_limit(
    start_server: Callable[..., TailServer], connect, wire, hidden
) -> None:
    server = start_server(max_message_bytes=200)
    client = connect(server)
    big = fp32(wire, np.concatenate([hidden, hidden[:3]]))  # 8 samples: 192 bytes of data plus framing
    size = big.ByteSize()
    assert size > 200
    with pytest.raises(grpc.RpcError) as caught:
        client.stub.ModelInfer(big, timeout=20)
    assert caught.value.code() == INVALID
    assert f"the request is {size} bytes" in caught.value.details()
    assert "at most 200 bytes" in caught.value.details()
    assert "--max-message-mb" in caught.value.details()
    assert client.stub.ModelInfer(fp32(wire, hidden[:1]), timeout=20).outputs[0].name == "logits"


def test_beyond_the_transport_limit_grpc_itself_answers_resource_exhausted(
    start_server: Callable[..., TailServer], connect, wire, hidden
) -> None:
    """Documented in edgeexit.server.app: grpc's receive limit is the message limit plus at least 4 MiB;
    past that grpc refuses the message before edgeexit sees it, and the server goes on."""
    server = start_server(max_message_bytes=200)
    client = connect(server)
    with pytest.raises(grpc.RpcError) as caught:
        raw_call(client)(b"\x00" * (5 << 20), timeout=20)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.stub.ModelInfer(fp32(wire, hidden[:1]), timeout=20).outputs[0].name == "logits"


def test_errors_are_counted_by_code(shared_server: TailServer, connect, wire, hidden) -> None:
    client = connect(shared_server)
    registry = shared_server.metrics.registry
    before = registry.get_sample_value("edgeexit_errors_total", {"code": "NOT_FOUND"}) or 0
    with pytest.raises(grpc.RpcError):
        client.stub.ModelInfer(unknown_model(wire, hidden), timeout=20)
    assert registry.get_sample_value("edgeexit_errors_total", {"code": "NOT_FOUND"}) == before + 1
    # an unknown model is counted under model="" so clients cannot grow the label set
    assert registry.get_sample_value("edgeexit_requests_total", {"model": "", "version": "", "code": "NOT_FOUND"})
