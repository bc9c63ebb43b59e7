"""How far the device's measured latency runs from what the policies' cost model expected: one scale.

Why feedback and not a better model: a latency SLO is a promise about what the device measures,
and the cost model misses by several percent in ways no profile carries: the runtime's own work per
sample, the exits the data in front of the device actually takes (200 samples of Fashion-MNIST
reached the final exit 25.5% of the time against the calibration's 22.1%), a profile taken on a
quieter device. Measured on the 96 px EfficientNet at a Pi 4's speed: the model read every plan 7-9%
low, so a mean-SLO policy planning up to its SLO broke it on 3 of 9 links (docs/benchmarks.md,
issue 14). A policy that sees ``measured / modelled`` over the samples it ran plans with the latency
the device actually delivers.

The scale is a ratio of two EWMAs over the same samples (each sample's wall time, and the modelled
mean latency of the plan it ran under), not an EWMA of per-sample ratios: a sample that exits at the
first exit takes a fraction of its plan's mean, and only the sums say how the plan does on average.
The first samples weigh equally (no bias toward the first one) until the half-life takes over.

A new scale is a new plan, so the scale is only taken once it moved by more than its own noise
(``step``). Early exit makes each sample's latency a mixture (at a Pi 4's speed on the 96 px
EfficientNet: 2 ms for a first-exit sample, 12 ms at full depth, a coefficient of variation of
~0.6): with a half-life of 32 samples the ratio wandered by ~6% from sample to sample, crossed a
fixed 5% step every 10-30 samples, and each crossing re-planned at the device's speed (0.06-0.1 ms
of decisions per sample for a plan that never changed). So the half-life is 128 samples (~3% of
noise at that mixture) and the step the larger of 5% and two standard errors of the measured mean.
"""

from __future__ import annotations

import math

from edgeexit.errors import UsageError

#: The scale stays within these bounds: a model more than 2x off is a wrong profile, not noise.
MIN_SCALE, MAX_SCALE = 0.5, 2.0
#: A policy takes a new scale once it moved by 5% (log units): each new scale is a new plan, and
#: the EWMA wanders by a few percent from sample to sample.
SCALE_STEP = math.log(1.05)


class LatencyFeedback:
    """``scale`` = EWMA(measured ms) / EWMA(modelled ms), 1.0 until ``min_samples`` were seen."""

    def __init__(self, *, half_life_samples: float = 128.0, min_samples: int = 8) -> None:
        if half_life_samples <= 0 or min_samples < 1:
            raise UsageError("LatencyFeedback needs half_life_samples > 0 and min_samples >= 1")
        self._alpha = 1.0 - 0.5 ** (1.0 / half_life_samples)
        self._min = min_samples
        self._measured = 0.0
        self._squares = 0.0  # EWMA of measured^2: the samples' spread, for the scale's noise
        self._modelled = 0.0
        self.samples = 0

    def observe(self, measured_ms: float, modelled_ms: float) -> None:
        """One sample: its wall time, and the modelled mean latency of the plan it ran under."""
        if not (math.isfinite(measured_ms) and math.isfinite(modelled_ms)) or measured_ms < 0 or modelled_ms <= 0:
            return  # nothing to learn from (no model for this plan, or a clock that went backwards)
        self.samples += 1
        weight = max(self._alpha, 1.0 / self.samples)
        self._measured += weight * (measured_ms - self._measured)
        self._squares += weight * (measured_ms * measured_ms - self._squares)
        self._modelled += weight * (modelled_ms - self._modelled)

    @property
    def step(self) -> float:
        """How far (in log units) the scale must move from the one in use before a policy takes it:
        ``SCALE_STEP`` or two standard errors of the measured mean, whichever is larger. The
        weighted mean's variance is the samples' variance times ``alpha / (2 - alpha)`` at the
        steady state, ``1 / n`` while the first samples still weigh equally."""
        if self.samples < self._min or self._measured <= 0:
            return SCALE_STEP
        variance = max(0.0, self._squares - self._measured * self._measured)
        share = max(self._alpha / (2.0 - self._alpha), 1.0 / self.samples)
        relative = math.sqrt(variance * share) / self._measured
        return max(SCALE_STEP, math.log1p(2.0 * relative))

    @property
    def scale(self) -> float:
        if self.samples < self._min or self._modelled <= 0:
            return 1.0
        return min(MAX_SCALE, max(MIN_SCALE, self._measured / self._modelled))
