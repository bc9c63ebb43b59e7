"""The bounded queue (RESOURCE_EXHAUSTED, never unbounded growth), callers that give up, and a
graceful stop that finishes in-flight requests.

Determinism without sleeps: a gate wraps the model's session run, so a test knows a batch is
computing (``entered``) and decides when it ends (``release``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest

from edgeexit.server import TailServer


@dataclass
class Gate:
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def gate() -> Iterator[Gate]:
    opened = Gate()
    yield opened
    opened.release.set()  # never leave a worker thread blocked, whatever the test did


def gated(server: TailServer, key: str, gate: Gate) -> None:
    """Block ``key``'s session runs until ``gate.release`` (announcing each in ``gate.entered``)."""
    batcher = server.batchers[key]
    run = batcher.run

    def blocked(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        gate.entered.set()
        gate.release.wait(timeout=60)
        return run(feeds)

    batcher.run = blocked


def first_done(futures: list[grpc.Future], timeout: float = 20) -> None:
    done = threading.Event()
    for future in futures:
        future.add_done_callback(lambda _: done.set())
    assert done.wait(timeout), "no call finished"


def test_a_full_queue_answers_resource_exhausted(
    start_server: Callable[..., TailServer], connect, wire, hidden: np.ndarray, gate: Gate
) -> None:
    server = start_server(max_queue=1, max_batch_size=1, max_queue_delay_us=0)
    name = wire.tail("fp32")
    gated(server, f"{name}/1", gate)
    client = connect(server)
    request = wire.request(name, wire.encode("fp32", hidden[:1]))
    computing = client.stub.ModelInfer.future(request, timeout=30)
    assert gate.entered.wait(20)  # the first request is in its session run; the queue is empty
    contenders = [client.stub.ModelInfer.future(request, timeout=30) for _ in range(2)]
    first_done(contenders)  # one fills the queue (1 slot), the other is refused at once
    refused = [f for f in contenders if f.done()]
    assert len(refused) == 1
    assert refused[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1 requests queued" in refused[0].details()
    assert "--max-queue" in refused[0].details()
    gate.release.set()
    queued = next(f for f in contenders if f is not refused[0])
    for future in (computing, queued):
        assert future.result().outputs[0].name == "logits"
    registry = server.metrics.registry
    assert registry.get_sample_value("edgeexit_errors_total", {"code": "RESOURCE_EXHAUSTED"}) == 1
    assert registry.get_sample_value("edgeexit_queue_depth", {"model": name, "version": "1"}) == 0


def test_a_request_whose_caller_gave_up_is_never_computed(
    start_server: Callable[..., TailServer], connect, wire, hidden: np.ndarray, gate: Gate
) -> None:
    server = start_server(max_batch_size=1, max_queue_delay_us=0)
    name = wire.tail("fp32")
    gated(server, f"{name}/1", gate)
    client = connect(server)
    request = wire.request(name, wire.encode("fp32", hidden[:1]))
    computing = client.stub.ModelInfer.future(request, timeout=30)
    assert gate.entered.wait(20)
    with pytest.raises(grpc.RpcError) as caught:
        client.stub.ModelInfer(request, timeout=0.5)  # queued behind the blocked batch; its deadline passes
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    labels = {"model": name, "version": "1"}
    registry = server.metrics.registry
    wire.wait_until(lambda: registry.get_sample_value("edgeexit_queue_depth", labels) == 0, what="the queue to empty")
    gate.release.set()
    assert computing.result().outputs[0].name == "logits"
    assert client.stub.ModelInfer(request, timeout=30).outputs[0].name == "logits"
    # two session runs (the blocked one and the last call); none for the abandoned request
    assert registry.get_sample_value("edgeexit_batch_size_count", labels) == 2
    assert registry.get_sample_value("edgeexit_requests_total", {**labels, "code": "CANCELLED"}) == 1


def test_stop_finishes_queued_requests_at_once_and_refuses_new_ones(
    start_server: Callable[..., TailServer], connect, wire, tiny_repo, hidden: np.ndarray
) -> None:
    """Two requests wait for a batching delay far longer than the test; stop() runs them now."""
    server = start_server(max_queue_delay_us=600_000_000)
    name = wire.tail("fp16")
    client = connect(server)
    payloads = [wire.encode("fp16", hidden[:2]), wire.encode("fp16", hidden[2:3])]
    futures = [client.stub.ModelInfer.future(wire.request(name, p), timeout=60) for p in payloads]
    batcher = server.batchers[f"{name}/1"]
    wire.wait_until(lambda: batcher.depth == 2, what="both requests to queue")
    server.stop(grace=30)
    model_path = tiny_repo / name / "1" / "model.onnx"
    for payload, future in zip(payloads, futures, strict=True):
        response = future.result()
        np.testing.assert_allclose(wire.logits(response), wire.reference(model_path, payload), rtol=1e-6, atol=1e-6)
        assert response.parameters["batch_size"].int64_param == 3
    with pytest.raises(grpc.RpcError) as caught:
        client.stub.ModelInfer(wire.request(name, payloads[0]), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_failing_session_run_is_internal_and_the_server_goes_on(
    start_server: Callable[..., TailServer], connect, wire, hidden: np.ndarray
) -> None:
    server = start_server()
    name = wire.tail("fp32")
    batcher = server.batchers[f"{name}/1"]
    run = batcher.run
    calls = []

    def fails_once(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("ORT: out of memory")
        return run(feeds)

    batcher.run = fails_once
    client = connect(server)
    request = wire.request(name, wire.encode("fp32", hidden))
    with pytest.raises(grpc.RpcError) as caught:
        client.stub.ModelInfer(request, timeout=20)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "out of memory" in caught.value.details()
    assert client.stub.ModelInfer(request, timeout=20).outputs[0].name == "logits"


def test_stop_gives_up_on_a_stuck_run_after_the_grace_period(
    start_server: Callable[..., TailServer], connect, wire, hidden: np.ndarray, gate: Gate
) -> None:
    """A session run that never ends must not hang shutdown: after ``grace`` its caller and the
    request queued behind it fail (UNAVAILABLE or CANCELLED), and stop() returns."""
    server = start_server(max_batch_size=1, max_queue_delay_us=0)
    name = wire.tail("fp32")
    gated(server, f"{name}/1", gate)
    client = connect(server)
    request = wire.request(name, wire.encode("fp32", hidden[:1]))
    stuck = client.stub.ModelInfer.future(request, timeout=60)
    assert gate.entered.wait(20)
    queued = client.stub.ModelInfer.future(request, timeout=60)
    wire.wait_until(lambda: server.batchers[f"{name}/1"].depth == 1, what="the second request to queue")
    server.stop(grace=0.2)
    for future in (stuck, queued):
        with pytest.raises(grpc.RpcError) as caught:
            future.result()
        assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
