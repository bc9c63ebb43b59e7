"""Does the calibration still hold on what the device sees? Early answers against shadow full-depth runs.

Thresholds are chosen (and certified) on calibration data; a device meets other data: another
camera, other light, other users. Nothing in the early answers alone says that they have started
to disagree with what full depth would have said. A small share of live requests run again at full
depth in the background (``edgeexit.device.shadow.ShadowSampler``) says exactly that: for each, the
exit that answered and whether its answer matched the final exit's. This module keeps those
counts, per exit and overall, with Wilson score intervals, and says when the disagreement is
above the calibration's budget beyond doubt (its lower confidence bound exceeds ``eps``, the
certified loss of an ``--against final`` calibration, or the max drop of any other: disagreement
bounds the accuracy drop from above, so a disagreement surely above EPS is a drop that may be).

numpy-free and lock-protected: the shadow thread observes while the serving thread reports.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from edgeexit.errors import UsageError

#: Two-sided 95%: the Wilson interval's z.
Z_95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion: (0, 1) with no trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class ExitAgreement:
    """One exit over the shadow samples: how many left there (``rate`` of all), how many of those
    answered as full depth did, and the 95% interval of their disagreement."""

    exit: int
    samples: int
    agreed: int
    rate: float
    disagreement: float
    low: float
    high: float


@dataclass(frozen=True)
class DriftReport:
    """The shadow samples so far. ``disagreement``: the share whose early answer differed from full
    depth's (the exits' mix included), with its 95% interval ``low``-``high``; ``eps``: the budget it
    is held to (None: no budget known); ``breached``: ``low > eps``, the budget surely broken on
    this data."""

    samples: int
    exits: tuple[ExitAgreement, ...]
    disagreement: float
    low: float
    high: float
    eps: float | None
    breached: bool


class DriftMonitor:
    """Counts of early answers against full depth, per exit; ``report()`` summarizes them."""

    def __init__(self, num_exits: int, eps: float | None = None, *, min_samples: int = 30) -> None:
        if num_exits < 1:
            raise UsageError(f"a drift monitor needs at least one exit; got {num_exits}")
        if eps is not None and not 0.0 < eps < 1.0:
            raise UsageError(f"eps must be a fraction in (0, 1) (0.01 = one point); got {eps}")
        self.num_exits = num_exits
        self.eps = eps
        self.min_samples = min_samples
        self._left = [0] * num_exits
        self._agreed = [0] * num_exits
        self._lock = threading.Lock()

    def observe(self, exit_index: int, early: int | None, full: int | None) -> None:
        """One shadow sample: the exit that answered it, its answer and full depth's."""
        if not 0 <= exit_index < self.num_exits:
            raise UsageError(f"exit {exit_index} is not one of the monitor's {self.num_exits} exits")
        with self._lock:
            self._left[exit_index] += 1
            self._agreed[exit_index] += int(early is not None and early == full)

    def reset(self) -> None:
        """Forget the counts: after the thresholds change, the early answers are another rule's."""
        with self._lock:
            self._left = [0] * self.num_exits
            self._agreed = [0] * self.num_exits

    def report(self) -> DriftReport:
        with self._lock:
            left, agreed = list(self._left), list(self._agreed)
        total = sum(left)
        exits = []
        for k, (n, a) in enumerate(zip(left, agreed, strict=True)):
            low, high = wilson_interval(n - a, n)
            exits.append(ExitAgreement(k, n, a, n / total if total else 0.0, (n - a) / n if n else 0.0, low, high))
        wrong = total - sum(agreed)
        low, high = wilson_interval(wrong, total)
        breached = self.eps is not None and total >= self.min_samples and low > self.eps
        return DriftReport(total, tuple(exits), wrong / total if total else 0.0, low, high, self.eps, breached)
