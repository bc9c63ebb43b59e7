"""LatencyFeedback: the device's measured latency against the modelled, as one scale; and a policy
under a latency SLO plans with it (numpy-free arithmetic, no clocks)."""

from __future__ import annotations

import math

import pytest

from edgeexit.errors import EdgeExitError
from edgeexit.policy import DeviceCosts, LinkEstimate, Objective, RadioModel, create_policy
from edgeexit.policy.feedback import MAX_SCALE, SCALE_STEP, LatencyFeedback


def test_the_scale_is_the_ratio_of_the_means_not_the_mean_of_the_ratios() -> None:
    """Samples of one plan modelled at 10 ms on average: half take 4 ms (an early exit), half 18 ms.
    The plan runs at 11 ms on average, 1.1x its model; the mean of per-sample ratios would say 1.1
    only by luck of the split, and an early-exit-heavy stretch would read far below it."""
    feedback = LatencyFeedback(half_life_samples=1000, min_samples=4)
    for _ in range(3):
        feedback.observe(4.0, 10.0)
    assert feedback.scale == 1.0  # too few samples to say
    for _ in range(50):
        feedback.observe(18.0, 10.0)
        feedback.observe(4.0, 10.0)
    assert feedback.scale == pytest.approx(1.1, rel=0.05)


def test_the_scale_follows_a_device_that_slows_down_and_is_bounded() -> None:
    feedback = LatencyFeedback(half_life_samples=4)
    for _ in range(40):
        feedback.observe(10.0, 10.0)
    assert feedback.scale == pytest.approx(1.0)
    for _ in range(40):
        feedback.observe(13.0, 10.0)
    assert feedback.scale == pytest.approx(1.3, rel=0.01)
    for _ in range(40):
        feedback.observe(100.0, 10.0)  # a model 10x off is a wrong profile: capped, not followed
    assert feedback.scale == MAX_SCALE
    feedback.observe(float("nan"), 10.0)  # nothing to learn from
    feedback.observe(5.0, 0.0)
    assert feedback.scale == MAX_SCALE
    with pytest.raises(EdgeExitError, match="half_life_samples"):
        LatencyFeedback(half_life_samples=0)


def test_a_scale_moves_a_mean_slo_decision_and_nothing_else() -> None:
    """Offloading at the input is the least energy and, as modelled, within the SLO (9 ms against
    10); a device measured 1.2x slower than its model runs it at ~10.8 ms, over the SLO, so the
    policy finishes locally instead (8 ms modelled, 9.6 measured). Without an SLO the scale cannot
    change a ranking by latency, so such a policy does not key on it."""
    costs = DeviceCosts(segment_ms=(4.0, 4.0), segment_j=(0.04, 0.04), exit_prob=(0.0, 1.0), encoded_bytes=(None,),
                        radio=RadioModel(0.0, 0.1), idle_w=0.1, input_bytes=1000, input_server_ms=1.0)  # fmt: skip
    link = LinkEstimate.fixed(1e9, 0.008)
    energy = create_policy("adaptive", costs, Objective("energy", latency_slo_ms=10.0, scope="mean"))
    assert energy.needs_latency_feedback
    assert energy.decide(-1, link).action == "offload"
    energy.latency_scale = 1.2
    decision = energy.decide(-1, link)
    assert decision.action == "continue"
    assert "x1.200" in decision.reason
    latency = create_policy("adaptive", costs)
    assert not latency.needs_latency_feedback
    before = latency.estimate_key(link)
    latency.latency_scale = 1.2
    assert latency.estimate_key(link) == before


def test_the_step_a_new_scale_must_clear_grows_with_the_samples_spread() -> None:
    """Early exit mixes 2 ms and 12 ms samples: their mean's noise, not a fixed 5%, decides when the
    scale has really moved (each new scale re-plans at the device's speed)."""
    steady, mixed = LatencyFeedback(half_life_samples=32), LatencyFeedback(half_life_samples=32)
    assert steady.step == pytest.approx(SCALE_STEP)  # nothing seen yet
    for k in range(400):
        steady.observe(6.4, 6.4)
        mixed.observe(2.0 if k % 2 else 12.0, 6.4)
    assert steady.step == pytest.approx(SCALE_STEP)  # no spread: 5%
    relative = 5.0 / 7.0 * math.sqrt(mixed._alpha / (2.0 - mixed._alpha))  # std 5 ms over a 7 ms mean
    assert mixed.step == pytest.approx(math.log1p(2.0 * relative), rel=0.05)
    assert mixed.step > 2 * SCALE_STEP
    slow = LatencyFeedback()  # the default half-life: the same mixture's noise within ~8%
    for k in range(2000):
        slow.observe(2.0 if k % 2 else 12.0, 6.4)
    assert SCALE_STEP < slow.step < math.log(1.08)
