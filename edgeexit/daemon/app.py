"""``DeviceDaemon``: the process behind ``edgeexit device --config device.toml``.

It runs ``grpc.aio`` on an asyncio loop in the main thread and serves the local API
(``edgeexit.daemon.service``) on a unix socket or a TCP address. Inference runs on the live
``Runtime``'s worker thread (one: an Engine is not thread-safe).

Signals:

- SIGHUP: read the config file again and load its package (hashes verified) into a new
  Runtime, off the event loop; then swap it in at once. Requests already submitted finish on
  the old Runtime, which is closed afterwards; new ones go to the new one; none is dropped. A
  config or package that does not load is logged (``reload_failed``, with the reason naming
  the key) and the old Runtime keeps serving. ``listen`` and ``metrics_port`` are bound once:
  a change to them is logged and needs a restart.
- SIGTERM / SIGINT: drain. Readiness turns false, new calls are refused with UNAVAILABLE,
  calls in flight finish (at most ``grace_s``), the process exits 0.

Logs are JSON lines on stderr (``log_format = "text"``: plain lines); one event per line with
``event`` naming it (``edgeexit.daemon.logs``). Before serving, the daemon prints
``edgeexit device: listening on ADDRESS`` on stderr (the bound address: the real port when 0
was asked for; ``unix:PATH`` for a socket).

Metrics (``metrics_port``): Prometheus ``/metrics`` on 127.0.0.1 (``edgeexit.daemon.metrics``;
prometheus-client, which ``[device]`` and ``[server]`` bring: a config that asks for metrics
without it is refused with the install line).

Drift (``[shadow]``): a share of the answered requests runs again at full depth in the
background (``edgeexit.device.shadow``); the ``edgeexit_device_shadow_*`` series carry the early
answers' disagreement with it, and a ``calibration_drift`` event says when it is surely above the
calibration's budget (once per breach). With ``recertify = true`` the breach re-certifies the
thresholds from the kept shadow samples (Learn-then-Test against full depth, only tighter) and
the inference thread serves with them from then on (``thresholds_recertified`` event). They live
in memory: the package's manifest is not rewritten, and a reload serves its thresholds again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
import time
from pathlib import Path

import grpc

from edgeexit.calibration.drift import DriftReport
from edgeexit.calibration.thresholds import finite_threshold
from edgeexit.daemon.config import DaemonConfig, load_config
from edgeexit.daemon.generation import GenerationRuntime
from edgeexit.daemon.logs import event
from edgeexit.daemon.metrics import DaemonMetrics
from edgeexit.daemon.runner import Runtime, load_runtime
from edgeexit.daemon.service import DeviceService
from edgeexit.device.shadow import Recertified
from edgeexit.errors import EdgeExitError, ServerError
from edgeexit.runtime.engine import Result

__all__ = ["MAX_MESSAGE_BYTES", "READY_PREFIX", "DeviceDaemon"]

READY_PREFIX = "edgeexit device: listening on "
MAX_MESSAGE_BYTES = 64 << 20


class DeviceDaemon:
    def __init__(self, config_path: str | Path) -> None:
        self.config_path = Path(config_path)
        self.config: DaemonConfig = load_config(self.config_path)
        self.metrics = DaemonMetrics() if self.config.metrics_port is not None else None
        self.runtime: Runtime | GenerationRuntime | None = None
        self.answered = 0
        self.refused = 0
        self._server: grpc.aio.Server | None = None
        self._service: DeviceService | None = None
        self._stop: asyncio.Event | None = None
        self._reloading: asyncio.Task[None] | None = None
        self.address: str | None = None
        self._metrics_port: int | None = None

    def _current(self) -> Runtime | GenerationRuntime:
        assert self.runtime is not None
        return self.runtime

    def _on_request(self, code: str, samples: int, seconds: float, results: list[Result]) -> None:
        if code == "OK":
            self.answered += 1
        else:
            self.refused += 1
            event("request_failed", logging.DEBUG, code=code, samples=samples)
        if self.metrics is not None:
            self.metrics.request(code, samples, seconds, results)

    def _on_drift(self, report: DriftReport, alarm: bool) -> None:
        """From the shadow thread: the metrics, and one ``calibration_drift`` event per breach."""
        if self.metrics is not None:
            self.metrics.drift(report)
        if alarm:
            event("calibration_drift", logging.WARNING, samples=report.samples,
                  disagreement=round(report.disagreement, 4), low=round(report.low, 4), high=round(report.high, 4),
                  eps=report.eps, exits=[{"exit": e.exit, "rate": round(e.rate, 4),
                                          "disagreement": round(e.disagreement, 4)} for e in report.exits])  # fmt: skip

    def _on_recertified(self, found: Recertified) -> None:
        """From the shadow thread, once the new thresholds serve: what changed and what they rest on."""

        def shown(thresholds: tuple[float, ...]) -> list[float]:  # JSON has no infinity: "never" is 1e9
            return [round(finite_threshold(t), 4) for t in thresholds[:-1]]

        event("thresholds_recertified", logging.WARNING, samples=found.samples, previous=shown(found.previous),
              thresholds=shown(found.thresholds), certified=found.guarantee.certified, eps=found.guarantee.eps,
              delta=found.guarantee.delta, bound=round(found.guarantee.bound, 4))  # fmt: skip

    def run(self) -> int:
        return asyncio.run(self._main())

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        stop = self._stop = asyncio.Event()
        stop_signal: list[str] = []

        def on_stop(signum: int) -> None:
            stop_signal.append(signal.Signals(signum).name)
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_stop, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)

        self.runtime = await asyncio.to_thread(load_runtime, self.config, self._on_drift, self._on_recertified)
        event("loaded", **self.runtime.describe())
        try:
            await self._start()
            if self.metrics is not None:
                self.metrics.generation.set(self.runtime.generation)
            print(f"{READY_PREFIX}{self.address}", file=sys.stderr, flush=True)
            event("listening", address=self.address, metrics_port=self._metrics_port)
            await stop.wait()
            event("draining", signal=stop_signal[0] if stop_signal else None, grace_s=self.config.grace_s)
            await self._drain(stop_signal[0] if stop_signal else "stopping")
        finally:
            if self._reloading is not None:
                await asyncio.gather(self._reloading, return_exceptions=True)
            runtime, self.runtime = self.runtime, None
            if runtime is not None:
                await asyncio.to_thread(runtime.close)
            if self.metrics is not None:
                self.metrics.stop_http()
            socket = self.config.unix_path
            if socket is not None and self.address is not None:
                socket.unlink(missing_ok=True)
        event("stopped", answered=self.answered, refused=self.refused)
        return 0

    async def _start(self) -> None:
        options = [
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES + (4 << 20)),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES + (4 << 20)),
        ]
        server = grpc.aio.server(options=options)
        self._service = DeviceService(self._current, max_message_bytes=MAX_MESSAGE_BYTES, on_request=self._on_request)
        self._service.register(server)
        listen = self.config.listen
        socket = self.config.unix_path
        if socket is not None:
            socket.parent.mkdir(parents=True, exist_ok=True)
            if socket.exists() and socket.is_socket():
                socket.unlink()  # a stale socket from a previous run that did not clean up
            listen = f"unix:{socket}"
        try:
            port = server.add_insecure_port(listen)
        except RuntimeError:
            port = 0
        if not port:
            raise ServerError(
                f"listen {self.config.listen!r}: cannot bind it (in use, not this machine's, or no permission); "
                "pick another listen address in device.toml"
            )
        await server.start()
        self._server = server
        if socket is not None:
            os.chmod(socket, 0o660)  # the service user and its group (the apps) only
            self.address = f"unix:{socket}"
        else:
            self.address = f"{listen.rpartition(':')[0]}:{port}"
        if self.metrics is not None:
            self._metrics_port = self.metrics.start_http(self.config.metrics_port or 0)
        self._service.ready = True

    async def _drain(self, reason: str) -> None:
        """Refuse new calls with UNAVAILABLE and ``reason`` (edgeexit.kserve.drain: grpc's own shutdown
        answers a call arriving while it runs with a bare CANCELLED), let the running ones finish and
        wait for a quiet moment, then close the server."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.grace_s
        if self._service is not None:
            self._service.ready = False
            self._service.drain.begin(reason)
            if not await self._service.drain.settle(self.config.grace_s):
                event("drain_timeout", logging.WARNING, in_flight=self._service.drain.in_flight)
        if self._server is not None:
            await self._server.stop(max(deadline - loop.time(), 0.0))

    # -- SIGHUP --------------------------------------------------------------------------------------------------

    def _on_hup(self) -> None:
        if self._stop is not None and self._stop.is_set():
            return
        if self._reloading is not None and not self._reloading.done():
            event("reload_queued")
            self._reloading.add_done_callback(lambda _: self._on_hup())
            return
        self._reloading = asyncio.get_running_loop().create_task(self._reload())

    async def _reload(self) -> None:
        started = time.perf_counter()
        event("reloading", config=str(self.config_path))
        try:
            config = await asyncio.to_thread(load_config, self.config_path)
            generation = self._current().generation + 1  # taken only once the runtime loaded
            fresh = await asyncio.to_thread(
                functools.partial(load_runtime, generation=generation), config, self._on_drift, self._on_recertified
            )
        except Exception as err:  # a bad config or package: say why, keep serving the old one
            reason = str(err) if isinstance(err, EdgeExitError) else f"{type(err).__name__}: {err}"
            event("reload_failed", logging.ERROR, reason=reason, generation=self._current().generation)
            if self.metrics is not None:
                self.metrics.reloads.labels("failed").inc()
            return
        for key in ("listen", "metrics_port"):
            if getattr(config, key) != getattr(self.config, key):
                event("restart_needed", logging.WARNING, key=key, running=getattr(self.config, key),
                      configured=getattr(config, key))  # fmt: skip
        old, self.runtime = self.runtime, fresh  # the swap: calls from now on use the new Runtime
        self.config = _keep_bound(config, self.config)
        if self.metrics is not None:
            self.metrics.reloads.labels("ok").inc()
            self.metrics.generation.set(fresh.generation)
        event("reloaded", took_ms=round((time.perf_counter() - started) * 1e3, 1), **fresh.describe())
        if old is not None:
            await asyncio.to_thread(old.close)  # its submitted requests finish first
            event("retired", generation=old.generation)


def _keep_bound(config: DaemonConfig, running: DaemonConfig) -> DaemonConfig:
    import dataclasses

    return dataclasses.replace(config, listen=running.listen, metrics_port=running.metrics_port)
