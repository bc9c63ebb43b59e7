"""The server's load on the wire: every reply and probe says the time a request would take there (its
wait for a batch and the batch), and a request its deadline would miss is answered RESOURCE_EXHAUSTED
at once instead of computed late.

Determinism without wall-clock assertions: the model's run is wrapped to take at least SLOW_S, so the
server's recent time per batch is at least that, and a deadline shorter than it is a certain miss.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import grpc
import numpy as np
import pytest

from edgeexit.codecs import create_codec
from edgeexit.errors import OffloadShed, RequestError
from edgeexit.server import TailServer
from edgeexit.transport.client import TailClient
from edgeexit.transport.generated import grpc_service_pb2 as pb
from edgeexit.transport.wire import EXPECTED_SERVER_KEY, trailing_expected_server_ms

SLOW_S = 0.3


def slowed(server: TailServer, key: str) -> list[int]:
    """Make ``key``'s session runs take at least SLOW_S; returns a list that counts them."""
    batcher = server.batchers[key]
    run = batcher.run
    runs: list[int] = []

    def slow(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(SLOW_S)
        runs.append(len(next(iter(feeds.values()))))
        return run(feeds)

    batcher.run = slow
    return runs


def test_replies_and_probes_say_the_expected_time(
    start_server: Callable[..., TailServer], connect, wire, hidden: np.ndarray
) -> None:
    server = start_server(max_batch_size=1, max_queue_delay_us=0)
    name = wire.tail("fp32")
    client = connect(server)
    response = client.stub.ModelInfer(wire.request(name, wire.encode("fp32", hidden[:1])), timeout=30)
    assert response.parameters["expected_server_ms"].double_param >= 0.0
    _, call = client.stub.ServerLive.with_call(pb.ServerLiveRequest(), timeout=30)
    assert trailing_expected_server_ms(call.trailing_metadata()) is not None
    labels = {"model": name, "version": "1"}
    assert server.metrics.registry.get_sample_value("edgeexit_expected_server_seconds", labels) is not None


def test_the_expected_time_is_the_queue_and_its_own_batch_at_the_recent_batch_time(
    start_server: Callable[..., TailServer], connect, wire, hidden: np.ndarray
) -> None:
    server = start_server(max_batch_size=1, max_queue_delay_us=0)
    name = wire.tail("fp32")
    batcher = server.batchers[f"{name}/1"]
    runs = slowed(server, f"{name}/1")
    client = connect(server)
    request = wire.request(name, wire.encode("fp32", hidden[:1]))
    client.stub.ModelInfer(request, timeout=30)
    per_batch = batcher.batch_s
    assert per_batch >= SLOW_S
    assert batcher.expected_wait_s == 0.0  # idle: nothing ahead
    assert batcher.expected_server_s == per_batch  # its own batch alone
    entered, release = threading.Event(), threading.Event()
    run = batcher.run

    def held(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        entered.set()
        release.wait(timeout=60)
        return run(feeds)

    batcher.run = held
    try:
        futures = [client.stub.ModelInfer.future(request, timeout=30) for _ in range(6)]
        assert entered.wait(20)  # one request runs (and is held); five queue behind it
        wire.wait_until(lambda: batcher.depth == 5, what="five requests queued behind the running batch")
        assert batcher.expected_wait_s == pytest.approx(5.5 * per_batch)  # 5 full batches and half of the running one
        _, call = client.stub.ServerLive.with_call(pb.ServerLiveRequest(), timeout=30)
        assert batcher.expected_server_s == pytest.approx(6.5 * per_batch)  # and its own batch
        assert trailing_expected_server_ms(call.trailing_metadata()) == pytest.approx(6.5 * per_batch * 1e3, abs=1e-3)
    finally:
        release.set()
    for future in futures:
        assert future.result().outputs[0].name == "logits"
    assert sum(runs) == 7


def test_a_request_its_deadline_would_miss_is_shed_at_once_with_the_wait(
    start_server: Callable[..., TailServer], connect, wire, hidden: np.ndarray
) -> None:
    server = start_server(max_batch_size=1, max_queue_delay_us=0)
    name = wire.tail("fp32")
    runs = slowed(server, f"{name}/1")
    client = connect(server)
    request = wire.request(name, wire.encode("fp32", hidden[:1]))
    client.stub.ModelInfer(request, timeout=30)  # the server learns a batch takes >= SLOW_S
    with pytest.raises(grpc.RpcError) as caught:
        client.stub.ModelInfer(request, timeout=SLOW_S / 3)
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # the server's answer, not the client's deadline
    assert "after its deadline" in error.details()
    assert "expected time here" in error.details()
    assert (
        trailing_expected_server_ms(error.trailing_metadata()) >= SLOW_S * 1e3
    )  # idle, but one batch is already too long
    assert runs == [1]  # never computed
    registry = server.metrics.registry
    labels = {"model": name, "version": "1"}
    assert registry.get_sample_value("edgeexit_shed_total", {**labels, "reason": "deadline"}) == 1
    assert registry.get_sample_value("edgeexit_requests_total", {**labels, "code": "RESOURCE_EXHAUSTED"}) == 1
    assert client.stub.ModelInfer(request, timeout=30).outputs[0].name == "logits"  # time enough: served


def test_without_shedding_the_request_queues_until_its_deadline(
    start_server: Callable[..., TailServer], connect, wire, hidden: np.ndarray
) -> None:
    server = start_server(max_batch_size=1, max_queue_delay_us=0, shed=False)
    name = wire.tail("fp32")
    slowed(server, f"{name}/1")
    client = connect(server)
    request = wire.request(name, wire.encode("fp32", hidden[:1]))
    client.stub.ModelInfer(request, timeout=30)
    with pytest.raises(grpc.RpcError) as caught:
        client.stub.ModelInfer(request, timeout=SLOW_S / 3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    labels = {"model": name, "version": "1", "reason": "deadline"}
    assert server.metrics.registry.get_sample_value("edgeexit_shed_total", labels) in (None, 0)


def test_the_device_client_reads_a_shed_and_keeps_its_breaker_closed(
    start_server: Callable[..., TailServer], wire, hidden: np.ndarray
) -> None:
    server = start_server(max_batch_size=1, max_queue_delay_us=0)
    name = wire.tail("fp32")
    slowed(server, f"{name}/1")
    payload = create_codec("fp32").encode(hidden[:1])
    with TailClient(f"127.0.0.1:{server.port}", timeout_s=30) as patient:
        reply = patient.infer(name, payload, package_id=wire.package_id, classes=wire.classes)
        assert reply.expected_server_ms is not None
        probe = patient.live(timeout_s=30)
        assert probe is not None
        assert probe.expected_server_ms is not None
        assert probe.address == f"127.0.0.1:{server.port}"
    with TailClient(f"127.0.0.1:{server.port}", timeout_s=SLOW_S / 3, failures_to_open=2) as hurried:
        for _ in range(4):
            with pytest.raises(OffloadShed) as caught:
                hurried.infer(name, payload, package_id=wire.package_id, classes=wire.classes)
            assert caught.value.expected_server_ms >= SLOW_S * 1e3
            assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert hurried.states() == {f"127.0.0.1:{server.port}": "closed"}  # busy is not down
    assert EXPECTED_SERVER_KEY.startswith("edgeexit-")


def test_a_request_whose_deadline_passed_in_the_queue_is_shed_when_its_batch_forms() -> None:
    """Admitted on arrival (its expected time was within its deadline), then held behind batches that
    ran long: when its own batch forms it could no longer finish in time, so it is shed there, while
    a request with time enough in the same queue runs. The batcher's own take, on its own loop."""
    from edgeexit.server.batching import Batcher, _Pending

    async def scenario() -> tuple[list[int], BaseException | None, list[str]]:
        shed: list[str] = []
        batcher = Batcher("m", lambda feeds: feeds, max_batch_size=4, max_queue_delay_us=0, max_queue=8,
                          on_shed=lambda name, version, reason: shed.append(reason))  # fmt: skip
        batcher._batch_s = 1.0  # the recent batches took a second
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        late = _Pending({"x": np.zeros((1, 1))}, 1, loop.create_future(), deadline=now + 0.5)
        timely = _Pending({"x": np.ones((1, 1))}, 1, loop.create_future(), deadline=now + 60.0)
        batcher._queue.extend([late, timely])
        batch = batcher._take()
        error = late.future.exception() if late.future.done() else None
        return [int(p.feeds["x"][0, 0]) for p in batch], error, shed

    batch, error, shed = asyncio.run(scenario())
    assert batch == [1]  # the timely one runs
    assert isinstance(error, RequestError)
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "when the batch formed" in error.message
    assert shed == ["deadline"]
