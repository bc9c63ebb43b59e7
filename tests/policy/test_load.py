"""The server's load as a device sees it (edgeexit.policy.load): the time it expects a request to take,
priced into every offload while fresh, and a random, growing backoff after the server sheds a request."""

from __future__ import annotations

import dataclasses

import pytest

from edgeexit.errors import EdgeExitError
from edgeexit.policy import DeviceCosts, LinkEstimate, LinkEstimator, create_policy, offload_now
from edgeexit.policy.load import ServerLoad
from edgeexit.policy.policies import estimate_key

FAST = LinkEstimate.fixed(100e6, 0.002)  # on this link the toy offloads at boundary 0 when the server is idle


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_expected_time_is_an_ewma_used_while_fresh() -> None:
    clock = Clock()
    load = ServerLoad(clock=clock, stale_after_s=2.0)
    assert load.expected_ms is None  # nothing reported: price offloads as without feedback
    load.observe_expected(40.0)
    assert load.expected_ms == 40.0  # the first report is taken as it is
    load.observe_expected(80.0)
    assert 40.0 < load.expected_ms < 80.0
    clock.now += 2.0  # still fresh
    assert load.expected_ms is not None
    clock.now += 0.5
    assert load.expected_ms is None  # stale: not used
    load.observe_expected(10.0)  # a stale estimate is not averaged with: the new report replaces it
    assert load.expected_ms == 10.0
    for bad in (float("nan"), float("inf"), -1.0):
        load.observe_expected(bad)
    assert load.expected_ms == 10.0


def test_backoff_is_random_within_its_range_doubles_with_a_streak_and_resets_on_delivery() -> None:
    clock = Clock()
    durations = []
    for seed in range(40):
        load = ServerLoad(clock=clock, backoff_base_s=0.2, backoff_max_s=10.0, seed=seed)
        durations.append(load.observe_shed())
    assert all(0.1 <= d < 0.3 for d in durations)
    assert len({round(d, 6) for d in durations}) > 30  # devices shed together do not return together

    load = ServerLoad(clock=clock, backoff_base_s=0.2, backoff_max_s=1.0, seed=1)
    streak = [load.observe_shed() for _ in range(6)]
    assert 0.2 <= streak[1] < 0.6  # 2x the base, jittered
    assert 0.4 <= streak[2] < 1.0 + 1e-9
    assert all(d <= 1.0 for d in streak)  # capped
    assert load.backoff_s == pytest.approx(max(streak), abs=1e-9)
    clock.now += 1.0
    assert load.backoff_s == 0.0
    load.observe_delivered()
    assert 0.1 <= load.observe_shed() < 0.3  # a new streak
    assert load.sheds == 7
    load.observe_shed(expected_ms=55.0)  # a shed that says the server's expected time
    assert load.expected_ms == pytest.approx(55.0)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(EdgeExitError, match="backoff_base_s"):
        ServerLoad(backoff_base_s=2.0, backoff_max_s=1.0)
    with pytest.raises(EdgeExitError, match="half_life_reports"):
        ServerLoad(half_life_reports=0)


def test_the_estimator_carries_the_wait_and_the_backoff_and_can_ignore_both() -> None:
    clock = Clock()
    estimator = LinkEstimator(clock=clock, seed=0)
    estimator.observe_server_expected(30.0)
    estimator.observe_server_expected(None)  # a server that does not say (Triton): nothing changes
    found = estimator.estimate()
    assert found.expected_server_ms == pytest.approx(30.0)
    version = estimator.version
    estimator.observe_shed(45.0)
    assert estimator.version > version  # a runner's cached plan key moves
    assert estimator.backing_off
    assert estimator.estimate().backoff_s > 0
    clock.now += 60.0
    assert not estimator.backing_off

    deaf = LinkEstimator(clock=clock, load_feedback=False)
    deaf.observe_server_expected(30.0)
    deaf.observe_shed(45.0)
    found = deaf.estimate()
    assert (found.expected_server_ms, found.backoff_s, deaf.backing_off) == (None, 0.0, False)
    assert LinkEstimate.from_dict(found.to_dict()) == found


def test_the_servers_expected_time_is_weighed_against_the_measured_queue(toy: DeviceCosts) -> None:
    idle = offload_now(toy, 0, FAST)  # toy.server_ms[0] = 5 ms of profiled compute, no queue
    loaded = offload_now(toy, 0, dataclasses.replace(FAST, expected_server_ms=45.0))
    assert loaded.latency_ms == pytest.approx(idle.latency_ms + 40.0)  # 45 ms in the server instead of 5
    queued = dataclasses.replace(FAST, server_queue_ms=25.0)
    assert offload_now(toy, 0, queued).latency_ms == pytest.approx(idle.latency_ms + 25.0)
    told = dataclasses.replace(queued, expected_server_ms=2.0)  # the server says it is idle now
    assert offload_now(toy, 0, told).latency_ms == pytest.approx(idle.latency_ms)  # never below the compute
    both = dataclasses.replace(told, server_queue_recent=True)  # replies as recent as the report: the larger
    assert offload_now(toy, 0, both).latency_ms == pytest.approx(idle.latency_ms + 25.0)


@pytest.mark.parametrize("name", ["adaptive", "best-static"])
def test_a_loaded_server_or_a_backoff_keeps_the_load_aware_policies_local(toy: DeviceCosts, name: str) -> None:
    policy = create_policy(name, toy)
    assert policy.decide(0, FAST).action == "offload"
    assert policy.decide(0, dataclasses.replace(FAST, expected_server_ms=200.0)).action == "continue"
    backing_off = policy.decide(0, dataclasses.replace(FAST, backoff_s=0.5))
    assert backing_off.action == "continue"
    assert "the server shed" in backing_off.reason
    assert [option.name for option in backing_off.options] == ["local"]
    assert policy.decide(0, FAST).action == "offload"  # the memo told the three apart


def test_the_static_split_ignores_the_load_it_is_the_baseline(toy: DeviceCosts) -> None:
    policy = create_policy("split@0", toy)
    assert policy.decide(0, dataclasses.replace(FAST, expected_server_ms=500.0, backoff_s=1.0)).action == "offload"


def test_the_delay_key_is_fine_near_zero_and_relative_beyond_5_ms() -> None:
    def key(expected_ms: float) -> object:
        return estimate_key(dataclasses.replace(FAST, expected_server_ms=expected_ms))[4]

    assert key(1.0) != key(1.5)  # 0.25 ms steps
    assert key(200.0) == key(202.0)  # within 5%: the same plan
    assert key(200.0) != key(260.0)
    assert key(3.0) == ("expected", 12, False)
    assert estimate_key(dataclasses.replace(FAST, server_queue_ms=3.0))[3] == 12  # the replies' queue, same grain
    assert estimate_key(dataclasses.replace(FAST, backoff_s=0.1))[-1] == ("backoff",)


def test_a_probe_that_says_the_server_is_idle_again_brings_a_local_device_back(toy: DeviceCosts) -> None:
    clock = Clock()
    estimator = LinkEstimator(clock=clock, prior_bandwidth_bps=100e6, prior_rtt_s=0.002)
    estimator.observe_transfer(0, 0.0, queue_ms=300.0)  # the last reply: a busy server's queue
    policy = create_policy("adaptive", toy)
    assert policy.decide(0, estimator.estimate()).action == "continue"
    clock.now += 5.0  # local since: no replies, but a probe says the server is idle (5 ms: the compute alone)
    estimator.observe_probe(0.002, expected_server_ms=5.0)
    assert estimator.estimate().expected_server_ms == 5.0
    assert policy.decide(0, estimator.estimate()).action == "offload"
    clock.now += 3.0  # no report for longer than it stays fresh: the replies' queue again
    assert estimator.estimate().expected_server_ms is None
    assert policy.decide(0, estimator.estimate()).action == "continue"
    deaf = LinkEstimator(clock=clock, prior_bandwidth_bps=100e6, prior_rtt_s=0.002, load_feedback=False)
    deaf.observe_transfer(0, 0.0, queue_ms=300.0)
    deaf.observe_probe(0.002, expected_server_ms=5.0)  # without load feedback the report is not read
    assert deaf.estimate().expected_server_ms is None
    assert policy.decide(0, deaf.estimate()).action == "continue"
