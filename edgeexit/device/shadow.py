"""Shadow full-depth runs of live requests, in the background, feeding a ``DriftMonitor``.

The answer a caller gets never waits for this: ``offer`` hands a share of the requests (their
input and the early answer) to a bounded queue and returns at once; a worker thread with its own
full-depth Engine (an Engine is one per thread) runs them and records, per exit, whether the early
answer matched full depth's (``edgeexit.calibration.drift``). When the queue is full the request is
dropped from the shadow (counted in ``dropped``), never delayed: a device that is busy serving
has no time to spare for checking.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeexit.calibration.drift import DriftMonitor, DriftReport
from edgeexit.errors import UsageError
from edgeexit.runtime.engine import Engine, Result
from edgeexit.runtime.settings import EngineSettings

log = logging.getLogger("edgeexit.device")


class ShadowSampler:
    """Runs ``share`` of the offered requests again at full depth on its own thread.

    ``package``: the package the serving Engine runs (its own full-depth Engine is built from it,
    with the serving engine's ``settings``: the same backend and precision);
    ``monitor``: where the comparisons go (default: one over the package's exits with ``eps``);
    ``seed``: of the draw that picks the shadowed share; ``listener``: called on the shadow thread
    after every shadow run with the report and whether it is a new alarm (then it reports the alarm:
    the sampler logs one itself only without a listener). Use as a context manager, or ``close()``."""

    def __init__(self, package: str | Path, share: float, *, monitor: DriftMonitor | None = None,
                 eps: float | None = None, queue_size: int = 64, seed: int = 0,
                 settings: EngineSettings | None = None,
                 listener: Callable[[DriftReport, bool], None] | None = None) -> None:  # fmt: skip
        if not 0.0 < share <= 1.0:
            raise UsageError(f"the shadow share is {share}; expected a fraction in (0, 1], e.g. 0.02")
        # the serving engine's backend, precision and threads, at full depth
        full_depth = dataclasses.replace(settings or EngineSettings(), threshold=float("inf"), criterion=None)
        self.engine = Engine.from_settings(package, full_depth)
        self.monitor = monitor or DriftMonitor(self.engine.num_exits, eps)
        self.share = share
        self.dropped = 0
        #: how many times the budget was found broken (each logged once, see ``_check``)
        self.alarms = 0
        self._rng = np.random.default_rng(seed)
        self._queue: queue.Queue[tuple[np.ndarray, Result] | None] = queue.Queue(maxsize=queue_size)
        self._worker = threading.Thread(target=self._work, name="edgeexit-shadow", daemon=True)
        self._breached = False
        self._listener = listener
        self._worker.start()

    def offer(self, x: np.ndarray, result: Result) -> bool:
        """Maybe shadow this request (its input and the answer it got); True when it was queued."""
        if self._rng.random() >= self.share:
            return False
        try:
            self._queue.put_nowait((np.array(x, copy=True), result))
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def report(self) -> DriftReport:
        return self.monitor.report()

    def drain(self) -> None:
        """Wait until every queued request was shadowed (tests, and a report at shutdown)."""
        self._queue.join()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                x, early = item
                full = self.engine.run(x)
                self.monitor.observe(early.exit, early.prediction, full.prediction)
                self._check()
            except Exception:  # a shadow run must never take the device down with it
                log.exception("shadow full-depth run failed; the request was answered and is not counted")
            finally:
                self._queue.task_done()

    def _check(self) -> None:
        """Log once when the budget is surely broken; re-arm only once it surely holds again (the
        interval's top under the budget), so an estimate hovering at the edge does not flood the log."""
        report = self.monitor.report()
        alarm = report.breached and not self._breached
        if alarm:
            self.alarms += 1
            self._breached = True
        elif self._breached and report.eps is not None and report.high <= report.eps:
            self._breached = False
        if self._listener is not None:
            self._listener(report, alarm)
        elif alarm:
            log.warning(
                "calibration drift: early answers disagree with full depth on %.1f%% of %d shadow samples "
                "(95%% interval %.1f-%.1f%%), above the %.1f%% the thresholds were calibrated for",
                100 * report.disagreement, report.samples, 100 * report.low, 100 * report.high,
                100 * (report.eps or 0.0),
            )  # fmt: skip

    def close(self) -> None:
        """Stop the worker after what is queued."""
        if self._worker.is_alive():
            self._queue.put(None)
            self._worker.join()

    def __enter__(self) -> ShadowSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
