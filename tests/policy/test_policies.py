"""The policies on the toy profile (tests/policy/conftest.py): which option wins, and why."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgeexit.errors import EdgeExitError
from edgeexit.policy import (
    POLICIES,
    BatteryState,
    BestStaticPolicy,
    Decision,
    DeviceCosts,
    LinkEstimate,
    Objective,
    create_policy,
    list_policies,
)

SLOW = LinkEstimate.fixed(0.5e6, 0.01)
FAST = LinkEstimate.fixed(200e6, 0.01)


def test_registry_lists_the_policies() -> None:
    assert list_policies() == ["adaptive", "best-static", "local", "split@K"]
    assert "adaptive" in POLICIES


def test_unknown_policy_lists_the_known_ones(toy: DeviceCosts) -> None:
    with pytest.raises(
        EdgeExitError, match=r"unknown policy 'greedy'; expected one of: adaptive, best-static, local, split@K"
    ):
        create_policy("greedy", toy)
    with pytest.raises(EdgeExitError, match="non-negative integer"):
        create_policy("split@one", toy)
    with pytest.raises(EdgeExitError, match="no tail at boundary 2"):
        create_policy("split@2", toy)
    with pytest.raises(EdgeExitError, match="needs the device's costs"):
        create_policy("adaptive").decide(0, FAST)


@pytest.mark.parametrize("link", [SLOW, FAST, None])
def test_local_never_offloads(toy: DeviceCosts, link: LinkEstimate | None) -> None:
    policy = create_policy("local", toy)
    assert [policy.decide(k, link).action for k in range(3)] == ["continue"] * 3


@pytest.mark.parametrize("k", [0, 1])
def test_split_offloads_exactly_at_k(toy: DeviceCosts, k: int) -> None:
    policy = create_policy(f"split@{k}", toy)
    assert policy.name == f"split@{k}"
    for link in (SLOW, FAST):
        actions = [policy.decide(b, link).action for b in range(3)]
        assert actions == ["offload" if b == k else "continue" for b in range(3)]


def test_best_static_follows_the_bandwidth_estimate(toy: DeviceCosts) -> None:
    policy = create_policy("best-static", toy)
    assert isinstance(policy, BestStaticPolicy)
    chosen = {}
    for mbps in (0.5, 2, 8, 20, 50, 200):
        best, options, _ = policy.plan(LinkEstimate.fixed(mbps * 1e6, 0.01))
        assert best.latency_ms == min(o.latency_ms for o in options)  # the lowest expected cost
        chosen[mbps] = best.name
    assert chosen[0.5] == "local"  # local 29.25 ms; offloading 25 kB at 0.5 Mbit/s takes 400 ms
    assert chosen[200] == "offload@0"  # 11 + 0.5 * (10 + 4 + 5) = 20.5 ms < split@1's 24.75 < local's 29.25
    assert [policy.decide(b, FAST).action for b in range(3)] == ["offload", "continue", "continue"]
    assert [policy.decide(b, SLOW).action for b in range(3)] == ["continue"] * 3


def test_best_static_does_not_offload_late_when_its_split_is_passed(toy: DeviceCosts) -> None:
    decision = create_policy("best-static", toy).decide(1, FAST)  # best is boundary 0
    assert decision.action == "continue"
    assert "already passed" in decision.reason


def test_adaptive_compares_finishing_locally_with_offloading_now(toy: DeviceCosts) -> None:
    policy = create_policy("adaptive", toy)
    slow = policy.decide(0, SLOW)
    names = {o.name: o for o in slow.options}
    assert {"local", "offload@0"} <= names.keys()
    # totals given the sample survived exit 0: sunk 11 ms + remaining 36.5 ms locally
    assert names["local"].latency_ms == pytest.approx(47.5)
    assert names["local"].energy_j == pytest.approx(0.475)
    assert slow.action == "continue"
    assert slow.chosen == "local"
    fast = policy.decide(0, FAST)
    assert fast.action == "offload"
    assert {o.name: o.latency_ms for o in fast.options}["offload@0"] == pytest.approx(11 + 10 + 4 + 5)
    assert fast.reason.startswith("offload now")
    # at boundary 1 only finishing locally and offloading now remain
    assert [o.name for o in policy.decide(1, FAST).options] == ["local", "offload@1"]
    assert policy.decide(2, FAST).action == "continue"  # the final boundary has no tail


def test_adaptive_changes_its_choice_with_rtt(toy: DeviceCosts) -> None:
    policy = create_policy("adaptive", toy)
    assert policy.decide(0, LinkEstimate.fixed(200e6, 0.01)).action == "offload"
    assert policy.decide(0, LinkEstimate.fixed(200e6, 0.1)).action == "continue"  # 120 ms > 47.5 ms locally


def test_energy_objective_under_an_slo_picks_differently(toy: DeviceCosts) -> None:
    latency = create_policy("adaptive", toy, Objective("latency")).decide(0, FAST)
    energy = create_policy("adaptive", toy, Objective("energy", latency_slo_ms=100.0)).decide(0, FAST)
    # offload@0: 30 ms, 0.11 + (1 + 0.1 * 200) * 0.004 + 0.5 + 2 * 0.019 = 0.732 J; local: 47.5 ms, 0.475 J
    assert (latency.action, latency.chosen) == ("offload", "offload@0")
    assert (energy.action, energy.chosen) == ("continue", "local")
    # an SLO only offloading meets: offload@0 (30 ms) and offload@1 (38.5 ms, 0.5935 J) qualify
    tight = create_policy("adaptive", toy, Objective("energy", latency_slo_ms=40.0)).decide(0, FAST)
    assert tight.chosen == "offload@1"
    assert {o.name: o.feasible for o in tight.options} == {"local": False, "offload@0": True, "offload@1": True}


def test_an_unmeetable_constraint_falls_back_and_says_so(toy: DeviceCosts) -> None:
    budget = create_policy("adaptive", toy, Objective("latency", energy_budget_j=0.01)).decide(0, FAST)
    assert budget.chosen == "local"  # least energy
    assert "no option meets the energy budget" in budget.reason
    slo = create_policy("adaptive", toy, Objective("energy", latency_slo_ms=1.0)).decide(0, FAST)
    assert slo.chosen == "offload@0"  # least latency
    assert "no option meets the latency SLO" in slo.reason


def test_a_budget_excludes_the_fastest_option(toy: DeviceCosts) -> None:
    decision = create_policy("adaptive", toy, Objective("latency", energy_budget_j=0.6)).decide(0, FAST)
    assert decision.chosen == "offload@1"  # 38.5 ms at 0.5935 J: offload@0's 0.732 J is over budget


def test_a_low_battery_trades_latency_for_energy(toy: DeviceCosts) -> None:
    policy = create_policy("adaptive", toy)
    assert policy.decide(0, FAST, battery=80.0).chosen == "offload@0"
    low = policy.decide(0, FAST, battery=10.0)
    # within 1.5 x 30 ms = 45 ms: offload@0 (0.732 J) and offload@1 (38.5 ms, 0.5935 J); local's 47.5 ms is not
    assert low.chosen == "offload@1"
    assert low.action == "continue"
    assert "battery 10%" in low.reason
    assert policy.decide(0, FAST, battery=BatteryState(10.0, plugged=True)).chosen == "offload@0"


def test_objective_rejects_a_mismatched_constraint() -> None:
    with pytest.raises(EdgeExitError, match="unknown objective"):
        Objective("cost")  # type: ignore[arg-type]
    with pytest.raises(EdgeExitError, match="latency SLO goes with kind='energy'"):
        Objective("latency", latency_slo_ms=10.0)


def test_decision_round_trips_through_json(toy: DeviceCosts) -> None:
    decisions = [
        create_policy("adaptive", toy, Objective("energy", latency_slo_ms=40.0)).decide(0, FAST, battery=15.0),
        create_policy("split@1").decide(1),
        create_policy("best-static", toy).decide(0, LinkEstimate(1e6, 0.05)),  # a never-measured link: age inf
    ]
    for decision in decisions:
        text = decision.to_json()
        assert Decision.from_json(text) == decision
        assert '"reason"' in text


def test_the_policy_layer_imports_no_torch_onnxruntime_or_grpc() -> None:
    script = (
        "import sys, edgeexit.policy\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'onnxruntime', 'grpc')))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("link", [SLOW, FAST])
def test_the_plan_table_sums_what_sunk_plus_remaining_does(toy: DeviceCosts, link: LinkEstimate) -> None:
    """The precomputed table a decision reads (so it costs microseconds, not a segment's worth)
    gives every plan the expected totals of the reference formulas, from every boundary."""
    import dataclasses

    from edgeexit.policy import remaining, static_split, sunk
    from edgeexit.policy.policies import PlanTable

    costs = dataclasses.replace(toy, input_bytes=3_000, input_server_ms=9.0)
    table, plain = PlanTable(costs), PlanTable(costs, with_sunk=False)
    for k in range(-1, costs.segments - 1):
        options = table.options(k, link)
        assert [o.split for o in options] == [None, *(s for s in costs.offload_boundaries if s >= k)]
        for option in options:
            expected = sunk(costs, k) + remaining(costs, k, option.split, link)
            assert option.latency_ms == pytest.approx(expected.latency_ms, rel=1e-12)
            assert option.energy_j == pytest.approx(expected.energy_j, rel=1e-12)
    for option in plain.options(-1, link):
        expected = static_split(costs, option.split, link)
        assert (option.latency_ms, option.energy_j) == pytest.approx((expected.latency_ms, expected.energy_j))


def test_estimates_within_the_grain_share_a_key_and_a_decision(toy: DeviceCosts) -> None:
    """``estimate_key`` is the grain a policy treats as equal (bandwidth within 5%, RTT and queue
    within 0.25 ms): the memo's key, which PolicyRunner's plans share so that the nudge every
    transfer gives the estimate does not make the device decide again."""
    from edgeexit.policy.policies import estimate_key

    near = LinkEstimate.fixed(200e6 * 1.01, 0.01 + 0.00005)
    assert estimate_key(near) == estimate_key(FAST)
    assert estimate_key(LinkEstimate.fixed(200e6 * 1.2, 0.01)) != estimate_key(FAST)
    assert estimate_key(LinkEstimate.fixed(200e6, 0.011)) != estimate_key(FAST)
    assert estimate_key(FAST, 50.0) != estimate_key(FAST)  # on battery
    policy = create_policy("adaptive", toy)
    assert policy.decide(0, FAST) is policy.decide(0, near)


def test_a_mean_slo_judges_each_option_by_its_whole_plan(toy: DeviceCosts) -> None:
    """An energy-hungry last segment: offloading boundary 1's survivors saves most of their energy,
    but no survivor alone can meet a 40 ms SLO (local 63 ms, offload 69 ms). Per request the policy
    takes the fastest, finishing locally; as a mean the offloading plan averages 30.75 ms over all
    samples (half exit at 0), within it, so the survivors travel."""
    import dataclasses

    from edgeexit.policy import LinkEstimate, Objective, create_policy

    hungry = dataclasses.replace(toy, segment_j=(0.1, 0.2, 3.0), radio=dataclasses.replace(toy.radio, tail_j=0.01))
    link = LinkEstimate.fixed(8e6, 0.01)
    per_request = create_policy("adaptive", hungry, Objective("energy", latency_slo_ms=40.0))
    mean = create_policy("adaptive", hungry, Objective("energy", latency_slo_ms=40.0, scope="mean"))
    assert [per_request.decide(k, link).action for k in (0, 1)] == ["continue", "continue"]
    assert "no option meets the latency SLO of 40.0 ms" in per_request.decide(1, link).reason
    decision = mean.decide(1, link)
    assert [mean.decide(0, link).action, decision.action] == ["continue", "offload"]
    assert "on average (its plan over all samples: offload@1 (30.75 ms" in decision.reason
    assert mean.decide(-1, link).action == per_request.decide(-1, link).action  # at the start the two agree
    with pytest.raises(EdgeExitError, match="constraint scope"):
        Objective("energy", latency_slo_ms=40.0, scope="median")  # type: ignore[arg-type]


def test_a_decision_tells_bandwidths_apart_by_the_upload_time_they_give() -> None:
    """Keys: the largest tensor's upload time within 0.25 ms under 5 ms, the bandwidth within 5% beyond."""
    from edgeexit.policy.policies import upload_key

    assert upload_key(400e6, 3_000) == upload_key(600e6, 3_000)  # 0.06 vs 0.04 ms: timing noise, one key
    assert upload_key(20e6, 3_000) != upload_key(10e6, 3_000)  # 1.2 vs 2.4 ms
    assert upload_key(1.0e6, 3_000) != upload_key(1.2e6, 3_000)  # 24 vs 20 ms: 5% steps
    assert upload_key(1.0e6, 3_000) == upload_key(1.01e6, 3_000)
    # one scale across 5 ms: 4.9 and 5.1 ms are neighbouring steps, as 0.25 ms apart below and 5% above
    assert upload_key(3_000 * 8 / 5.1e-3, 3_000) - upload_key(3_000 * 8 / 4.9e-3, 3_000) in (0, 1)
