"""Prometheus metrics scraped over HTTP on 127.0.0.1: requests and errors by code, batch sizes,
queue and compute time."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeexit.server import TailServer


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_endpoint(start_server: Callable[..., TailServer], connect, wire, hidden: np.ndarray) -> None:
    server = start_server(metrics_port=0)
    assert server.metrics_port
    client = connect(server)
    name = wire.tail("fp16")
    for rows in (1, 3):
        client.stub.ModelInfer(wire.request(name, wire.encode("fp16", hidden[:rows])), timeout=20)
    with pytest.raises(grpc.RpcError):
        client.stub.ModelInfer(wire.request(name, wire.encode("fp32", hidden)), timeout=20)  # wrong datatype
    samples = scrape(server.metrics_port)
    model = (("model", name), ("version", "1"))
    assert samples[("edgeexit_requests_total", (("code", "OK"), *model))] == 2
    assert samples[("edgeexit_requests_total", (("code", "INVALID_ARGUMENT"), *model))] == 1
    assert samples[("edgeexit_errors_total", (("code", "INVALID_ARGUMENT"),))] == 1
    assert samples[("edgeexit_batch_size_count", model)] == 2
    assert samples[("edgeexit_batch_size_sum", model)] == 4
    assert samples[("edgeexit_queue_seconds_count", model)] == 2
    assert samples[("edgeexit_compute_seconds_count", model)] == 2
    assert samples[("edgeexit_compute_seconds_sum", model)] > 0
    assert samples[("edgeexit_queue_depth", model)] == 0


def test_two_servers_in_one_process_keep_separate_metrics(
    start_server: Callable[..., TailServer], connect, wire, hidden: np.ndarray
) -> None:
    first, second = start_server(), start_server()
    name = wire.tail("fp32")
    connect(first).stub.ModelInfer(wire.request(name, wire.encode("fp32", hidden)), timeout=20)
    labels = {"model": name, "version": "1", "code": "OK"}
    assert first.metrics.registry.get_sample_value("edgeexit_requests_total", labels) == 1
    assert second.metrics.registry.get_sample_value("edgeexit_requests_total", labels) is None
