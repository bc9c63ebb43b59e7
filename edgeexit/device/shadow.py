"""Shadow full-depth runs of live requests, in the background, feeding a ``DriftMonitor``.

``recertify`` chooses new thresholds from the shadow samples by the calibration's own guarantee
(Learn-then-Test against full depth's answers: no labels needed), only ever tighter unless told;
``apply_thresholds`` puts them into a serving Engine.

The answer a caller gets never waits for this: ``offer`` hands a share of the requests (their
input and the early answer) to a bounded queue and returns at once; a worker thread with its own
full-depth Engine (an Engine is one per thread) runs them and records, per exit, whether the early
answer matched full depth's (``edgeexit.calibration.drift``). When the queue is full the request is
dropped from the shadow (counted in ``dropped``), never delayed: a device that is busy serving
has no time to spare for checking.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeexit.calibration.calibrate import exit_costs
from edgeexit.calibration.drift import DriftMonitor, DriftReport
from edgeexit.calibration.risk_control import certify_thresholds, exit_predictions
from edgeexit.calibration.scores import exit_scores
from edgeexit.errors import UsageError
from edgeexit.manifest import RiskGuarantee
from edgeexit.runtime.engine import Engine, Result
from edgeexit.runtime.results import FullDepth
from edgeexit.runtime.settings import EngineSettings

log = logging.getLogger("edgeexit.device")


@dataclass(frozen=True)
class Recertified:
    """Thresholds re-certified from shadow samples (``ShadowSampler.recertify``), with the guarantee
    they rest on, how many samples, and the thresholds they replace."""

    thresholds: tuple[float, ...]
    guarantee: RiskGuarantee
    samples: int
    previous: tuple[float, ...]

    @property
    def tightened(self) -> bool:
        return any(new > old for new, old in zip(self.thresholds, self.previous, strict=True))


def apply_thresholds(engine: Engine, thresholds: Sequence[float]) -> None:
    """Put ``thresholds`` (one per exit; the final exit's is kept) into ``engine``'s exit rules. Call
    it on the engine's own thread (an Engine is one per thread)."""
    rules = engine.rules
    if len(thresholds) != len(rules):
        raise UsageError(f"got {len(thresholds)} thresholds; the engine has {len(rules)} exits")
    engine.rules = tuple(
        rule if rule.final else dataclasses.replace(rule, threshold=float(t))
        for rule, t in zip(rules, thresholds, strict=True)
    )


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
                 settings: EngineSettings | None = None, keep: int = 2000,
                 listener: Callable[[DriftReport, bool], None] | None = None) -> None:  # fmt: skip
        if not 0.0 < share <= 1.0:
            raise UsageError(f"the shadow share is {share}; expected a fraction in (0, 1], e.g. 0.02")
        # the serving engine's backend, precision and threads, at full depth
        full_depth = dataclasses.replace(settings or EngineSettings(), threshold=float("inf"), criterion=None)
        self._criterion = settings.criterion if settings is not None else None
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
        #: the last ``keep`` shadow samples' outputs at every exit, for ``recertify``
        self._kept: collections.deque[tuple[tuple[np.ndarray | None, ...], tuple[np.ndarray, ...]]] = collections.deque(
            maxlen=keep
        )
        self._lock = threading.Lock()
        self._costs: np.ndarray | None = None
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

    def restart(self) -> None:
        """Start watching afresh (new thresholds): the monitor's counts and the alarm's state; the
        kept samples stay (their outputs at every exit do not depend on the thresholds)."""
        self.monitor.reset()
        self._breached = False

    @property
    def kept(self) -> int:
        """Shadow samples held for ``recertify`` (the last ``keep``)."""
        with self._lock:
            return len(self._kept)

    def recertify(self, current: Sequence[float], delta: float, eps: float | None = None, *,
                  loosen: bool = False, seed: int = 0) -> Recertified:  # fmt: skip
        """Thresholds certified by Learn-then-Test (``risk_control``, loss: disagreement with full
        depth, so no labels) on the kept shadow samples: on data like them, the disagreement exceeds
        ``eps`` (default: the monitor's) with probability at most ``delta``. Only ever tighter than
        ``current`` (the serving thresholds, one per exit) unless ``loosen``: the device's data may be
        a passing shift, and loosening is for an operator who decided it is not. Nothing certified at
        this many samples: full depth."""
        eps = self.monitor.eps if eps is None else eps
        if eps is None:
            raise UsageError("re-certifying needs a budget: pass eps, or give the monitor one")
        with self._lock:
            kept = list(self._kept)
        if not kept:
            raise UsageError("no shadow samples yet: nothing to re-certify from")
        exits = self.engine.exits
        if len(current) != len(exits):
            raise UsageError(f"got {len(current)} current thresholds; the package has {len(exits)} exits")
        logits = tuple(
            None if kept[0][0][k] is None else np.concatenate([row[0][k] for row in kept]) for k in range(len(exits))
        )
        similarity = tuple(np.concatenate([row[1][k] for row in kept]) for k in range(len(exits)))
        full = FullDepth(logits=logits, similarity=similarity, segment_ms=(0.0,) * len(self.engine.segments))
        override = self._criterion  # the serving engine's --criterion, when it overrides the manifest's
        names = [spec.criterion if (override is None or spec.final) else override for spec in exits]
        scores = exit_scores(names, full, [spec.temperature for spec in exits], [spec.gate for spec in exits])
        predictions = exit_predictions(full.logits, len(kept))
        agrees = predictions == predictions[-1]
        costs = self._costs if self._costs is not None else np.ones(len(exits))
        choice, guarantee = certify_thresholds(scores, agrees, costs, eps, delta, predictions=predictions,
                                               against="final", seed=seed)  # fmt: skip
        found = list(choice.thresholds)
        if not loosen:
            found = [max(new, old) for new, old in zip(found, current, strict=True)]
        found[-1] = float(current[-1])  # the final exit always answers
        return Recertified(tuple(found), guarantee, len(kept), tuple(float(t) for t in current))

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
                # every exit's outputs (kept for re-certification); the first shadow also times the segments
                full = self.engine.run_full(x[None], timing_samples=0 if self._costs is not None else 1)
                if self._costs is None:
                    view = dataclasses.replace(self.engine.manifest, exits=self.engine.exits)  # a variant's own
                    self._costs = exit_costs(view, full.segment_ms)
                with self._lock:
                    self._kept.append((full.logits, full.similarity))
                final = full.logits[-1]
                self.monitor.observe(early.exit, early.prediction, None if final is None else int(final[0].argmax()))
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
