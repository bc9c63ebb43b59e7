"""The link estimator against synthetic links, with a clock the test moves."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgeexit.errors import EdgeExitError
from edgeexit.policy import LinkEstimate, LinkEstimator
from edgeexit.policy.link import MAX_BANDWIDTH_BPS, TRAFFIC_HALF_LIFE_REQUESTS


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def send(
    estimator: LinkEstimator,
    clock: Clock,
    rate_bps: float,
    *,
    rtt: float = 0.02,
    server_ms: float = 3.0,
    nbytes: int = 50_000,
    jitter: float = 1.0,
) -> None:
    clock.now += 1.0
    estimator.observe_transfer(nbytes, rtt + nbytes * 8 / rate_bps * jitter + server_ms / 1000, server_ms=server_ms)


def test_nothing_measured_reports_the_prior() -> None:
    estimate = LinkEstimator(prior_bandwidth_bps=2e6, prior_rtt_s=0.1, clock=Clock()).estimate()
    assert (estimate.bandwidth_bps, estimate.rtt_s, estimate.samples, estimate.fresh) == (2e6, 0.1, 0, False)
    assert math.isinf(estimate.age_s)


def test_converges_to_a_constant_rate_within_20_percent() -> None:
    clock = Clock()
    estimator = LinkEstimator(clock=clock)
    estimator.observe_probe(0.02)
    rng = np.random.default_rng(0)
    for _ in range(20):
        send(estimator, clock, 20e6, jitter=float(rng.uniform(0.85, 1.15)))
    estimate = estimator.estimate()
    assert estimate.bandwidth_bps == pytest.approx(20e6, rel=0.2)
    assert estimate.rtt_s == pytest.approx(0.02)
    assert estimate.fresh
    assert estimate.samples == 21
    assert estimate.age_s == 0.0


def test_server_time_is_subtracted_before_estimating() -> None:
    clock = Clock()
    estimator = LinkEstimator(clock=clock)
    estimator.observe_probe(0.02)
    send(estimator, clock, 10e6, server_ms=200.0)  # a slow server is not a slow link
    assert estimator.estimate().bandwidth_bps == pytest.approx(10e6)
    assert not estimator.observe_transfer(0, 0.03, server_ms=5.0)  # nothing sent: no bandwidth sample


def test_upload_time_is_averaged_not_the_rate() -> None:
    """Noisy remainders on a fast link: the mean upload time is what a policy pays, and the mean of
    the rates they imply would overstate the link many times over (a 0.01 ms remainder reads as
    50x a 0.5 ms one). Remainders below zero are noise too, and are kept."""
    clock = Clock()
    estimator = LinkEstimator(half_life_samples=20, clock=clock)
    estimator.observe_probe(0.005)
    remainders_ms = [0.5, 0.01, -0.2, 0.3, 0.4] * 40
    for remainder in remainders_ms:
        clock.now += 0.1
        assert estimator.observe_transfer(1000, 0.005 + remainder / 1e3)
    mean_s = sum(remainders_ms) / len(remainders_ms) / 1e3  # 0.202 ms for 8,000 bits
    # ~40 Mbit/s; the mean of the rates would say ~200
    assert estimator.estimate().bandwidth_bps == pytest.approx(8000 / mean_s, rel=0.15)


def test_a_transfer_faster_than_the_rtt_reads_as_the_fastest_link() -> None:
    clock = Clock()
    estimator = LinkEstimator(clock=clock)
    estimator.observe_probe(0.02)
    assert estimator.observe_transfer(1000, 0.01)  # 10 ms under the RTT: timing noise, not a negative rate
    assert estimator.estimate().bandwidth_bps == MAX_BANDWIDTH_BPS


def test_follows_a_step_change() -> None:
    clock = Clock()
    estimator = LinkEstimator(half_life_samples=3, clock=clock)
    estimator.observe_probe(0.02)
    for _ in range(20):
        send(estimator, clock, 50e6)
    for _ in range(3):
        send(estimator, clock, 5e6)
    assert estimator.estimate().bandwidth_bps <= 27.5e6 * 1.001  # moved at least halfway after one half-life
    for _ in range(17):
        send(estimator, clock, 5e6)
    assert estimator.estimate().bandwidth_bps == pytest.approx(5e6, rel=0.2)


def test_forgets_stale_estimates_toward_the_prior() -> None:
    clock = Clock()
    estimator = LinkEstimator(stale_after_s=30, decay_half_life_s=30, prior_bandwidth_bps=5e6, clock=clock)
    estimator.observe_probe(0.02)
    send(estimator, clock, 100e6)
    clock.now += 29
    assert estimator.estimate().bandwidth_bps == pytest.approx(100e6)  # still fresh
    clock.now += 31  # 60 s after the transfer: 30 s past stale_after_s
    # one decay half-life: half the prior's upload time per bit, half the estimate's
    assert estimator.estimate().bandwidth_bps == pytest.approx(1 / (0.5 / 100e6 + 0.5 / 5e6), rel=0.01)
    clock.now += 300
    stale = estimator.estimate()
    assert stale.bandwidth_bps == pytest.approx(5e6, rel=0.05)
    assert stale.rtt_s == pytest.approx(0.05, rel=0.05)  # the RTT went back to its prior too
    assert not stale.fresh
    assert stale.age_s == pytest.approx(360)
    estimator.observe_probe(0.03)
    send(estimator, clock, 1e6, rtt=0.03)  # after a stale period the new sample takes over
    assert estimator.estimate().bandwidth_bps == pytest.approx(1e6, rel=0.05)


def test_bad_observations_are_refused() -> None:
    estimator = LinkEstimator(clock=Clock())
    with pytest.raises(EdgeExitError):
        estimator.observe_probe(-1.0)
    with pytest.raises(EdgeExitError):
        estimator.observe_transfer(-1, 1.0)


def test_estimate_round_trips_through_json() -> None:
    for estimate in (LinkEstimate(1e6, 0.05), LinkEstimate.fixed(2e6, 0.01, server_queue_ms=3.0)):
        assert LinkEstimate.from_dict(json.loads(estimate.to_json())) == estimate


def test_the_request_interval_is_a_geometric_ewma_per_sample() -> None:
    """Unknown until two requests; a batch's gap is spread over its samples; one long pause moves
    the estimate by a bounded factor and a few requests of the resumed traffic bring it back."""
    clock = Clock()
    estimator = LinkEstimator(clock=clock)
    estimator.observe_request()
    assert math.isinf(estimator.estimate().request_interval_s)
    for _ in range(8):
        clock.now += 0.02
        estimator.observe_request(4)  # the first gap follows a 1-sample request: 20 ms, then 5 ms per sample
    clock.now += 0.02
    estimator.observe_request()
    assert estimator.estimate().request_interval_s == pytest.approx(0.02 / 4, rel=0.35)
    for _ in range(40):
        clock.now += 0.02
        estimator.observe_request()
    assert estimator.estimate().request_interval_s == pytest.approx(0.02, rel=0.05)
    clock.now += 3600.0
    estimator.observe_request()
    paused = estimator.estimate().request_interval_s
    weight = 1 - 0.5 ** (1 / TRAFFIC_HALF_LIFE_REQUESTS)  # 20 ms^(1-w) x 1 h^w: no longer back to back, not an hour
    assert paused == pytest.approx(0.02 ** (1 - weight) * 3600.0**weight, rel=0.05)
    assert 0.04 < paused < 1.0
    for _ in range(3 * int(TRAFFIC_HALF_LIFE_REQUESTS)):
        clock.now += 0.02
        estimator.observe_request()
    assert estimator.estimate().request_interval_s < 0.03
    with pytest.raises(EdgeExitError, match="at least one sample"):
        estimator.observe_request(0)
    assert LinkEstimate.from_dict(estimator.estimate().to_dict()) == estimator.estimate()
    assert LinkEstimate.from_dict(LinkEstimator(clock=clock).estimate().to_dict()).request_interval_s == math.inf
