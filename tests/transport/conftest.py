"""An in-process stand-in for a v2 tail server, so the client's contract is tested without the real one.

It decodes edgeexit's requests with ``read_request`` and answers with scripted logits, or misbehaves
on purpose (hangs, error statuses, replies that do not decode), which a real server never does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest

from edgeexit.codecs import create_codec
from edgeexit.transport.generated import grpc_service_pb2 as pb
from edgeexit.transport.generated import grpc_service_pb2_grpc as pb_grpc
from edgeexit.transport.wire import read_request

CLASSES = 10


def fake_logits(decoded: np.ndarray) -> np.ndarray:
    """A deterministic 'tail': per-sample logits from the decoded tensor, so a test can check them."""
    flat = decoded.reshape(decoded.shape[0], -1).astype(np.float32)
    return np.stack([flat[:, c::CLASSES].sum(axis=1) for c in range(CLASSES)], axis=1).astype(np.float32)


def logits_reply(logits: np.ndarray, **params: float) -> pb.ModelInferResponse:
    reply = pb.ModelInferResponse(model_name="m", model_version="1")
    out = reply.outputs.add(name="logits", datatype="FP32")
    out.shape.extend(logits.shape)
    reply.raw_output_contents.append(np.ascontiguousarray(logits, dtype="<f4").tobytes())
    for name, value in params.items():
        reply.parameters[name].double_param = value
    return reply


@dataclass
class Behaviour:
    """What the stand-in does with the next requests; tests change it while it runs."""

    delay_s: float = 0.0
    status: grpc.StatusCode | None = None
    reply: Callable[[pb.ModelInferRequest], pb.ModelInferResponse] | None = None
    token: str | None = None
    seen: list[pb.ModelInferRequest] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)


class StandIn(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.lock = threading.Lock()

    def ModelInfer(self, request, context):
        b = self.behaviour
        with self.lock:
            b.seen.append(request)
            b.metadata.append(dict(context.invocation_metadata()))
        if b.token is not None and dict(context.invocation_metadata()).get("authorization") != f"Bearer {b.token}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        if b.delay_s:
            time.sleep(b.delay_s)
        if b.status is not None:
            context.abort(b.status, f"scripted {b.status.name}")
        if b.reply is not None:
            return b.reply(request)
        _, encoded = read_request(request)
        decoded = create_codec(encoded.codec).decode(encoded)
        return logits_reply(fake_logits(decoded), queue_ms=0.25, compute_ms=0.5)


@dataclass
class Server:
    port: int
    behaviour: Behaviour
    server: grpc.Server

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(grace=None).wait()


def start_stand_in(
    behaviour: Behaviour | None = None, *, port: int = 0, credentials: grpc.ServerCredentials | None = None
) -> Server:
    behaviour = behaviour or Behaviour()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(StandIn(behaviour), server)
    target = f"127.0.0.1:{port}"
    bound = server.add_secure_port(target, credentials) if credentials else server.add_insecure_port(target)
    server.start()
    return Server(bound, behaviour, server)


@pytest.fixture
def stand_in() -> Iterator[Callable[..., Server]]:
    """Start stand-in servers; every one is stopped on teardown."""
    started: list[Server] = []

    def start(behaviour: Behaviour | None = None, **kwargs: object) -> Server:
        server = start_stand_in(behaviour, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def free_port() -> int:
    """A port nobody listens on (bound and released: nothing is started on it)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
