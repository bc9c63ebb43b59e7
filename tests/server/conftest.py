"""Fixtures for the tail server tests: tiny tail repositories, servers on 127.0.0.1 port 0, clients.

The tiny tails follow docs/offload.md exactly (one per codec: ``hidden`` FP32 / FP16 / UINT8 with
``scale`` and ``zero_point``, decoded in the graph, then Flatten + MatMul + Add → ``logits``), so
these tests do not wait for an export; tests that need a real package use ``digits_package``.
Every server and channel a test opens is closed in the fixture's teardown, pass or fail.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeexit.codecs import Encoded, create_codec, datatype_of
from edgeexit.repository import tail_config, tail_model_name, write_config
from edgeexit.server import ServerOptions, TailServer
from edgeexit.transport.generated import grpc_service_pb2 as pb
from edgeexit.transport.generated import grpc_service_pb2_grpc as pb_grpc

TINY_DIMS = (2, 3)
TINY_CLASSES = 4
TINY_PACKAGE_ID = "7a1e0000000000000000000000000001"
TINY_MODEL = "tiny"


def tail_graph(
    codec: str, dims: tuple[int, ...] = TINY_DIMS, classes: int = TINY_CLASSES, seed: int = 0
) -> onnx.ModelProto:
    """A tail as the export writes one: decode ``hidden`` in the graph, then a linear layer."""
    rng = np.random.default_rng(seed)
    features = int(np.prod(dims))
    weight = numpy_helper.from_array(rng.standard_normal((features, classes)).astype(np.float32), "weight")
    bias = numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "bias")
    element = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16, "int8": TensorProto.UINT8}[codec]
    inputs = [helper.make_tensor_value_info("hidden", element, ["N", *dims])]
    nodes = []
    if codec == "fp32":
        nodes.append(helper.make_node("Flatten", ["hidden"], ["flat"], axis=1))
    elif codec == "fp16":
        nodes += [
            helper.make_node("Cast", ["hidden"], ["decoded"], to=TensorProto.FLOAT),
            helper.make_node("Flatten", ["decoded"], ["flat"], axis=1),
        ]
    else:
        inputs += [
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("zero_point", TensorProto.UINT8, ["N", 1]),
        ]
        nodes += [
            helper.make_node("Cast", ["hidden"], ["q"], to=TensorProto.FLOAT),
            helper.make_node("Flatten", ["q"], ["q_flat"], axis=1),
            helper.make_node("Cast", ["zero_point"], ["zp"], to=TensorProto.FLOAT),
            helper.make_node("Sub", ["q_flat", "zp"], ["centred"]),
            helper.make_node("Mul", ["centred", "scale"], ["flat"]),
        ]
    nodes += [
        helper.make_node("MatMul", ["flat", "weight"], ["product"]),
        helper.make_node("Add", ["product", "bias"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        f"tail_{codec}",
        inputs,
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_repository(
    root: Path,
    *,
    model: str = TINY_MODEL,
    codecs: Sequence[str] = ("fp32", "fp16", "int8"),
    boundary: int = 0,
    package_id: str = TINY_PACKAGE_ID,
    max_batch_size: int = 8,
    max_queue_delay_us: int = 1000,
    versions: Sequence[int] = (1,),
) -> Path:
    """A Triton-layout repository of tiny tails, one model per codec (version v's weights: seed v)."""
    for codec in codecs:
        name = tail_model_name(model, boundary, codec)
        directory = root / name
        for version in versions:
            (directory / str(version)).mkdir(parents=True, exist_ok=True)
            onnx.save(tail_graph(codec, seed=version), str(directory / str(version) / "model.onnx"))
        config = tail_config(
            name=name,
            codec=codec,
            boundary=boundary,
            hidden_dims=TINY_DIMS,
            num_classes=TINY_CLASSES,
            package_id=package_id,
            max_batch_size=max_batch_size,
            max_queue_delay_us=max_queue_delay_us,
        )
        write_config(directory, config)
    return root


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32 / fp16 / int8 tails of the tiny model; read-only for tests (copy it to alter it)."""
    return write_repository(tmp_path_factory.mktemp("tiny") / "repo")


@pytest.fixture(scope="session")
def hidden() -> np.ndarray:
    """A batch of 5 boundary tensors with negative, zero and positive values."""
    rng = np.random.default_rng(42)
    return np.maximum(rng.standard_normal((5, *TINY_DIMS)).astype(np.float32), -0.5)


def reference_logits(model_path: Path, payload: Encoded) -> np.ndarray:
    """The tail run locally with ONNX Runtime on exactly what travels: what the server must return."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], payload.tensors())[0]


def infer_request(
    model: str,
    payload: Encoded | dict[str, np.ndarray],
    *,
    side_inputs: str = "parameters",
    **parameters: str | float | int,
) -> pb.ModelInferRequest:
    """A v2 request as docs/offload.md describes it; ``side_inputs="tensors"`` sends an int8 payload's
    scale and zero_point as input tensors (Triton style) instead of request parameters."""
    request = pb.ModelInferRequest(model_name=model)
    if isinstance(payload, Encoded):
        tensors = payload.tensors() if side_inputs == "tensors" else {"hidden": payload.data}
        if side_inputs == "parameters" and payload.scale is not None:
            parameters = {"scale": float(payload.scale), "zero_point": int(payload.zero_point), **parameters}
        parameters = {"codec": payload.codec, **parameters}
    else:
        tensors = payload
    for name, array in tensors.items():
        request.inputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
        request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    for key, value in parameters.items():
        if isinstance(value, str):
            request.parameters[key].string_param = value
        elif isinstance(value, float):
            request.parameters[key].double_param = value
        else:
            request.parameters[key].int64_param = value
    return request


def encode(codec: str, x: np.ndarray) -> Encoded:
    return create_codec(codec).encode(x)


def logits_of(response: pb.ModelInferResponse) -> np.ndarray:
    assert response.outputs[0].name == "logits"
    assert response.outputs[0].datatype == "FP32"
    return np.frombuffer(response.raw_output_contents[0], "<f4").reshape(tuple(response.outputs[0].shape))


@dataclass
class Client:
    """A channel to one server and the v2 stub on it."""

    channel: grpc.Channel
    stub: pb_grpc.GRPCInferenceServiceStub


@pytest.fixture
def start_server(tiny_repo: Path) -> Iterator[Callable[..., TailServer]]:
    """``start_server(*sources, **ServerOptions fields)``: a started server on 127.0.0.1, port 0."""
    started: list[TailServer] = []

    def start(*sources: Path, **options: object) -> TailServer:
        options.setdefault("listen", "127.0.0.1:0")
        options.setdefault("grace_s", 5.0)
        server = TailServer(list(sources) or [tiny_repo], ServerOptions(**options))  # type: ignore[arg-type]
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop(grace=0)


@pytest.fixture
def server(start_server: Callable[..., TailServer]) -> TailServer:
    return start_server()


@pytest.fixture
def connect() -> Iterator[Callable[..., Client]]:
    """``connect(server, credentials=None, options=())``: a client channel, closed at teardown."""
    channels: list[grpc.Channel] = []

    def open_channel(
        server: TailServer, credentials: grpc.ChannelCredentials | None = None, options: Sequence[tuple] = ()
    ) -> Client:
        target = f"127.0.0.1:{server.port}"
        channel = (
            grpc.secure_channel(target, credentials, options=list(options))
            if credentials is not None
            else grpc.insecure_channel(target, options=list(options))
        )
        channels.append(channel)
        return Client(channel, pb_grpc.GRPCInferenceServiceStub(channel))

    yield open_channel
    for channel in channels:
        channel.close()


@pytest.fixture
def client(server: TailServer, connect: Callable[..., Client]) -> Client:
    return connect(server)


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "a condition") -> None:
    """Poll a condition the test cannot be told about (a queue depth); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


class Wire:
    """The helpers above for test modules (conftest is not importable under --import-mode=importlib)."""

    dims = TINY_DIMS
    classes = TINY_CLASSES
    package_id = TINY_PACKAGE_ID
    model = TINY_MODEL
    request = staticmethod(infer_request)
    encode = staticmethod(encode)
    logits = staticmethod(logits_of)
    reference = staticmethod(reference_logits)
    write_repository = staticmethod(write_repository)
    tail_name = staticmethod(tail_model_name)
    wait_until = staticmethod(wait_until)

    @staticmethod
    def tail(codec: str) -> str:
        return tail_model_name(TINY_MODEL, 0, codec)


@pytest.fixture(scope="session")
def wire() -> type[Wire]:
    return Wire


@dataclass(frozen=True)
class LocalRun:
    """The digits package run locally, segment by segment, with ONNX Runtime: the hidden tensor
    at every boundary and the final exit's logits. What a tail server must agree with."""

    package: Path
    package_id: str
    model: str
    hidden: tuple[np.ndarray, ...]  # hidden[k]: boundary k's tensor, batch-first
    logits: np.ndarray


@pytest.fixture(scope="session")
def digits_local(digits_package: Path, digits) -> LocalRun:
    from edgeexit.package import open_package

    manifest = open_package(digits_package).manifest
    x = np.ascontiguousarray(digits.x[:16], dtype=np.float32).reshape(16, 1, 8, 8)
    hidden: list[np.ndarray] = []
    feeds = {manifest.input.name: x}
    for segment in manifest.segments:
        session = ort.InferenceSession(str(digits_package / segment.file), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        outputs = dict(zip(names, session.run(names, feeds), strict=True))
        if segment.hidden is not None:
            hidden.append(outputs[segment.hidden])
            feeds = {manifest.segments[segment.index + 1].inputs[0].name: outputs[segment.hidden]}
    logits = outputs[manifest.exits[-1].logits]
    return LocalRun(digits_package, manifest.package_id, manifest.model_name, tuple(hidden), logits)


@pytest.fixture(scope="module")
def digits_server(digits_local: LocalRun) -> Iterator[TailServer]:
    """A server on the digits package's tails, shared by a module's tests."""
    server = TailServer([digits_local.package], ServerOptions(listen="127.0.0.1:0")).start()
    yield server
    server.stop(grace=0)
