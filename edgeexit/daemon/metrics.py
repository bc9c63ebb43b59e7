"""Prometheus series of the device daemon (``metrics_port``), served on 127.0.0.1.

prometheus-client comes with ``[device]`` and ``[server]``, but it is imported only when a config
asks for metrics, so a trimmed install runs without it; a config that asks for metrics without it
installed is refused with the install line.
"""

from __future__ import annotations

from typing import Any

from edgeexit.calibration.drift import DriftReport
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
        self.shadow_samples = Gauge("edgeexit_device_shadow_samples", "Requests run again at full depth ([shadow]).",
                                    registry=self.registry)  # fmt: skip
        self.shadow_disagreement = Gauge(
            "edgeexit_device_shadow_disagreement",
            "Share of shadow samples whose early answer differed from full depth's: the estimate and its 95% bounds.",
            ("bound",), registry=self.registry,
        )  # fmt: skip
        self.shadow_exit_disagreement = Gauge(
            "edgeexit_device_shadow_exit_disagreement", "Disagreement with full depth among the shadow samples that "
            "left at this exit.", ("exit",), registry=self.registry,
        )  # fmt: skip
        self.shadow_exit_rate = Gauge("edgeexit_device_shadow_exit_rate", "Share of shadow samples leaving at this "
                                      "exit.", ("exit",), registry=self.registry)  # fmt: skip
        self.shadow_breached = Gauge("edgeexit_device_shadow_breached", "1 while the disagreement is surely above "
                                     "the calibration's budget.", registry=self.registry)  # fmt: skip
        self._http: Any = None
        self._thread: Any = None

    def request(self, code: str, samples: int, seconds: float, results: list[Result]) -> None:
        self.requests.labels(code).inc()
        if code == "OK":
            self.latency.observe(seconds)
        for r in results:
            route = "local" if r.offload is None else "fallback" if r.offload.fallback else "offloaded"
            self.samples.labels(str(r.exit), route).inc()

    def drift(self, report: DriftReport) -> None:
        """The shadow samples' report (``[shadow]``), from the shadow thread."""
        self.shadow_samples.set(report.samples)
        for bound, value in (("estimate", report.disagreement), ("low", report.low), ("high", report.high)):
            self.shadow_disagreement.labels(bound).set(value)
        for found in report.exits:
            self.shadow_exit_disagreement.labels(str(found.exit)).set(found.disagreement)
            self.shadow_exit_rate.labels(str(found.exit)).set(found.rate)
        self.shadow_breached.set(1.0 if report.breached else 0.0)

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
