"""Prometheus series of the device daemon (``metrics_port``), served on 127.0.0.1.

prometheus-client comes with ``[device]`` and ``[server]``, but it is imported only when a config
asks for metrics, so a trimmed install runs without it; a config that asks for metrics without it
installed is refused with the install line.
"""

from __future__ import annotations

from typing import Any

from edgeexit.errors import ConfigError
from edgeexit.runtime.engine import Result

__all__ = ["DaemonMetrics"]


class DaemonMetrics:
    """Prometheus series of the daemon, in a registry of its own."""

    def __init__(self) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ModuleNotFoundError:
            raise ConfigError(
                "metrics_port is set but prometheus-client is not installed; install it "
                "(pip install prometheus-client) or remove metrics_port from device.toml"
            ) from None
        self.registry = CollectorRegistry()
        self.requests = Counter("edgeexit_device_requests", "ModelInfer calls by status code.", ("code",),
                                registry=self.registry)  # fmt: skip
        self.samples = Counter("edgeexit_device_samples", "Samples answered, by exit and route.", ("exit", "route"),
                               registry=self.registry)  # fmt: skip
        self.latency = Histogram("edgeexit_device_request_seconds", "Whole ModelInfer time.", registry=self.registry)
        self.reloads = Counter("edgeexit_device_reloads", "SIGHUP reloads by outcome.", ("outcome",),
                               registry=self.registry)  # fmt: skip
        self.generation = Gauge("edgeexit_device_generation", "Generation of the live config.", registry=self.registry)
        self._http: Any = None
        self._thread: Any = None

    def request(self, code: str, samples: int, seconds: float, results: list[Result]) -> None:
        self.requests.labels(code).inc()
        if code == "OK":
            self.latency.observe(seconds)
        for r in results:
            route = "local" if r.offload is None else "fallback" if r.offload.fallback else "offloaded"
            self.samples.labels(str(r.exit), route).inc()

    def start_http(self, port: int) -> int:
        from prometheus_client import start_http_server

        self._http, self._thread = start_http_server(port, addr="127.0.0.1", registry=self.registry)
        return int(self._http.server_port)

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._thread.join(timeout=5)
            self._http = None
