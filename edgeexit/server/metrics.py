"""Prometheus metrics of a tail server, in a registry of its own.

Its own ``CollectorRegistry`` (not prometheus-client's global one) so two servers in one process
(tests, or an embedding application) never share or double-register series. Served over HTTP by
``start_http`` on ``--metrics-port``; under ``--workers N`` each worker's values go to files in
its supervisor's directory (prometheus-client's multiprocess mode, chosen by the environment the
supervisor sets) and the supervisor serves their sum (``edgeexit.server.workers``).

Series (label ``model`` is the loaded model's name, ``version`` its version; a request that
matched no loaded model is counted under ``model=""`` so clients cannot grow the label set):

- ``edgeexit_requests_total{model,version,code}``: ModelInfer calls by gRPC status code;
- ``edgeexit_errors_total{code}``: every call that did not end OK, by code;
- ``edgeexit_batch_size{model,version}``: samples per session run (a histogram);
- ``edgeexit_queue_seconds{model,version}``: how long each request waited for its batch;
- ``edgeexit_compute_seconds{model,version}``: how long each batch's session run took;
- ``edgeexit_queue_depth{model,version}``: requests waiting now;
- ``edgeexit_shed_total{model,version,reason}``: requests answered RESOURCE_EXHAUSTED at once,
  ``reason`` ``deadline`` (the expected time would pass the request's deadline) or ``queue_full``;
- ``edgeexit_expected_server_seconds{model,version}``: the time a request arriving now would take
  here, its wait for a batch and the batch (``Batcher.expected_server_s``), as of the last request.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from edgeexit.server.batching import BatchStats

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TIME_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("model", "version")
        self.requests = Counter(
            "edgeexit_requests", "ModelInfer calls by status code.", (*labels, "code"), registry=self.registry
        )
        self.errors = Counter(
            "edgeexit_errors", "Calls that did not end OK, by status code.", ("code",), registry=self.registry
        )
        self.batch_size = Histogram(
            "edgeexit_batch_size", "Samples per session run.", labels, buckets=_BATCH_BUCKETS, registry=self.registry
        )
        self.queue_seconds = Histogram(
            "edgeexit_queue_seconds",
            "Time a request waited for its batch.",
            labels,
            buckets=_TIME_BUCKETS,
            registry=self.registry,
        )
        self.compute_seconds = Histogram(
            "edgeexit_compute_seconds",
            "Time one batch's session run took.",
            labels,
            buckets=_TIME_BUCKETS,
            registry=self.registry,
        )
        # multiprocess_mode: how ``--workers N``'s processes add up (edgeexit.server.workers); unused in one process
        self.queue_depth = Gauge(
            "edgeexit_queue_depth",
            "Requests waiting for a batch.",
            labels,
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.shed = Counter(
            "edgeexit_shed",
            "Requests answered RESOURCE_EXHAUSTED at once: a full queue, or a wait past their deadline.",
            (*labels, "reason"),
            registry=self.registry,
        )
        self.expected_server = Gauge(
            "edgeexit_expected_server_seconds",
            "The time a request arriving now would take here: its wait for a batch, and the batch.",
            labels,
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def request(self, model: str, version: str, code: str) -> None:
        self.requests.labels(model, version, code).inc()
        if code != "OK":
            self.errors.labels(code).inc()

    def batch(self, stats: BatchStats) -> None:
        self.batch_size.labels(stats.model, stats.version).observe(stats.samples)
        self.compute_seconds.labels(stats.model, stats.version).observe(stats.compute_s)
        for waited in stats.queue_s:
            self.queue_seconds.labels(stats.model, stats.version).observe(waited)

    def depth(self, model: str, version: str, depth: int) -> None:
        self.queue_depth.labels(model, version).set(depth)

    def shed_one(self, model: str, version: str, reason: str) -> None:
        self.shed.labels(model, version, reason).inc()

    def expected(self, model: str, version: str, expected_s: float) -> None:
        self.expected_server.labels(model, version).set(expected_s)

    def start_http(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` (0: an ephemeral port) in a daemon thread; return the port."""
        self._http, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_port)

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
