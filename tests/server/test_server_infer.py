"""ModelInfer on tails: parity with a local ONNX Runtime run for every codec, the response's
parameters, package_id and codec checks, and dynamic batching that really groups requests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from edgeexit.server import TailServer


@pytest.mark.parametrize(
    ("codec", "side_inputs"),
    [("fp32", "parameters"), ("fp16", "parameters"), ("int8", "parameters"), ("int8", "tensors")],
)
def test_infer_returns_the_local_runs_logits(
    codec: str, side_inputs: str, client, wire, tiny_repo: Path, hidden: np.ndarray
) -> None:
    payload = wire.encode(codec, hidden)
    name = wire.tail(codec)
    response = client.stub.ModelInfer(
        wire.request(name, payload, side_inputs=side_inputs, package_id=wire.package_id), timeout=20
    )
    expected = wire.reference(tiny_repo / name / "1" / "model.onnx", payload)
    assert response.model_name == name
    assert response.model_version == "1"
    np.testing.assert_array_equal(wire.logits(response), expected)
    assert list(response.outputs[0].shape) == [len(hidden), wire.classes]


def test_response_reports_queue_and_compute_time(client, wire, hidden: np.ndarray) -> None:
    request = wire.request(wire.tail("fp32"), wire.encode("fp32", hidden[:1]))
    request.id = "req-17"
    response = client.stub.ModelInfer(request, timeout=20)
    assert response.id == "req-17"
    for key in ("queue_ms", "compute_ms", "server_ms"):
        assert response.parameters[key].WhichOneof("parameter_choice") == "double_param"
        assert response.parameters[key].double_param >= 0.0
    times = {key: response.parameters[key].double_param for key in ("queue_ms", "compute_ms", "server_ms")}
    assert times["server_ms"] >= times["queue_ms"] + times["compute_ms"]  # the whole stay holds both
    assert response.parameters["batch_size"].int64_param == 1


def test_a_version_may_be_named(client, wire, hidden: np.ndarray) -> None:
    request = wire.request(wire.tail("fp32"), wire.encode("fp32", hidden))
    request.model_version = "1"
    assert client.stub.ModelInfer(request, timeout=20).model_version == "1"


def test_requested_outputs_are_honoured(client, wire, hidden: np.ndarray) -> None:
    request = wire.request(wire.tail("fp32"), wire.encode("fp32", hidden))
    request.outputs.add(name="logits")
    response = client.stub.ModelInfer(request, timeout=20)
    assert [o.name for o in response.outputs] == ["logits"]


def test_a_package_id_mismatch_is_failed_precondition(client, wire, hidden: np.ndarray) -> None:
    request = wire.request(wire.tail("fp16"), wire.encode("fp16", hidden), package_id="another-package")
    with pytest.raises(grpc.RpcError) as caught:
        client.stub.ModelInfer(request, timeout=20)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'another-package'" in caught.value.details()
    assert repr(wire.package_id) in caught.value.details()
    # the server goes on, and the right package_id (or none, as tritonclient sends) is served
    for package_id in ({"package_id": wire.package_id}, {}):
        good = wire.request(wire.tail("fp16"), wire.encode("fp16", hidden), **package_id)
        assert client.stub.ModelInfer(good, timeout=20).outputs[0].name == "logits"


def test_dynamic_batching_groups_concurrent_requests_into_one_run(
    start_server: Callable[..., TailServer], connect, wire, tiny_repo: Path, hidden: np.ndarray
) -> None:
    """Four 1-sample requests, max_batch_size 4 and a delay far longer than the test: the batch
    only runs because it filled up, so one session run served all four."""
    server = start_server(max_batch_size=4, max_queue_delay_us=60_000_000)
    client = connect(server)
    name = wire.tail("fp32")
    payloads = [wire.encode("fp32", hidden[i : i + 1]) for i in range(4)]
    futures = [client.stub.ModelInfer.future(wire.request(name, p), timeout=30) for p in payloads]
    responses = [f.result() for f in futures]
    model_path = tiny_repo / name / "1" / "model.onnx"
    for payload, response in zip(payloads, responses, strict=True):
        np.testing.assert_allclose(wire.logits(response), wire.reference(model_path, payload), rtol=1e-6, atol=1e-6)
        assert response.parameters["batch_size"].int64_param == 4
    registry = server.metrics.registry
    labels = {"model": name, "version": "1"}
    assert registry.get_sample_value("edgeexit_batch_size_count", labels) == 1
    assert registry.get_sample_value("edgeexit_batch_size_sum", labels) == 4
    assert registry.get_sample_value("edgeexit_queue_seconds_count", labels) == 4


def test_requests_that_do_not_fit_together_run_in_separate_batches(
    start_server: Callable[..., TailServer], connect, wire, tiny_repo: Path, hidden: np.ndarray
) -> None:
    """Batches hold whole requests: a 3-sample and a 2-sample request with max_batch_size 4 are two runs,
    each with its own correct rows."""
    server = start_server(max_batch_size=4, max_queue_delay_us=0)
    client = connect(server)
    name = wire.tail("int8")
    payloads = [wire.encode("int8", hidden[:3]), wire.encode("int8", hidden[3:5])]
    futures = [client.stub.ModelInfer.future(wire.request(name, p), timeout=30) for p in payloads]
    model_path = tiny_repo / name / "1" / "model.onnx"
    for payload, future in zip(payloads, futures, strict=True):
        np.testing.assert_array_equal(wire.logits(future.result()), wire.reference(model_path, payload))
    assert server.metrics.registry.get_sample_value("edgeexit_batch_size_sum", {"model": name, "version": "1"}) == 5


def test_concurrent_clients_each_get_their_own_rows(
    server: TailServer, connect, wire, tiny_repo: Path, hidden: np.ndarray
) -> None:
    """Many threads, mixed batch sizes and codecs: batching never mixes up whose rows are whose."""
    client = connect(server)
    rng = np.random.default_rng(7)
    failures: list[str] = []

    def worker(seed: int) -> None:
        local = np.random.default_rng(seed)
        for _ in range(10):
            codec = ("fp32", "fp16", "int8")[int(local.integers(3))]
            x = local.standard_normal((int(local.integers(1, 4)), *wire.dims)).astype(np.float32)
            payload = wire.encode(codec, x)
            name = wire.tail(codec)
            got = wire.logits(client.stub.ModelInfer(wire.request(name, payload), timeout=30))
            expected = wire.reference(tiny_repo / name / "1" / "model.onnx", payload)
            if not np.allclose(got, expected, rtol=1e-5, atol=1e-5):
                failures.append(f"{name} rows differ")

    threads = [threading.Thread(target=worker, args=(int(rng.integers(1 << 30)),)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
