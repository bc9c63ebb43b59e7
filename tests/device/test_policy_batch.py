"""PolicyRunner.run_batch handles a batch as a batch, against the real tail server (in-process
``TailServer`` on 127.0.0.1): one decision per boundary for the samples still going, the survivors
sent in one request, and the answers and decisions its samples get one by one through ``run``.
Also: a device emulated at a slower speed answers exactly as before, through the emulation.
Deterministic: link estimates primed far apart, fixed costs; no wall-clock assertions."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from edgeexit.device import PolicyRunner, TailClient
from edgeexit.device.speed import SlowedChain, SlowedSegment, calibrate_to_host, emulate_device_speed, slow_policy
from edgeexit.errors import EdgeExitError, UnknownNameError
from edgeexit.policy import DeviceCosts, LinkEstimator, create_policy
from edgeexit.profile.device_speed import DeviceSpeed, get_device_speed, list_speeds
from edgeexit.runtime import Engine, Result

from .test_offload import TOLERANCE

N = 40
CODEC = "fp16"


@pytest.fixture(scope="module")
def costs(engine: Engine) -> DeviceCosts:
    """A slow device (1 s per segment): offloading wins on any real link, loses on a 1 bit/s one."""
    return DeviceCosts.from_manifest(engine.manifest, (1000.0,) * len(engine.segments), codec=CODEC, active_w=5.0,
                                     idle_w=1.0)  # fmt: skip


def link(fast: bool) -> LinkEstimator:
    found = LinkEstimator()
    found.observe_probe(1e-5 if fast else 1.0)
    assert found.observe_transfer(10**9, 0.01) if fast else found.observe_transfer(10, 100.0)
    return found


def _same(one: Result, batched: Result) -> None:
    assert (batched.exit, batched.prediction) == (one.exit, one.prediction)
    assert (batched.offload is None) == (one.offload is None)
    tolerance = 1e-6
    if one.offload is not None:
        assert batched.offload is not None
        assert (batched.offload.offloaded, batched.offload.boundary) == (one.offload.offloaded, one.offload.boundary)
        tolerance = TOLERANCE[CODEC]
    assert batched.probabilities is not None
    assert one.probabilities is not None
    assert np.allclose(batched.probabilities, one.probabilities, atol=tolerance)
    assert [(d.boundary, d.action, d.chosen) for d in batched.decisions] == [
        (d.boundary, d.action, d.chosen) for d in one.decisions
    ]


@pytest.mark.parametrize(
    ("policy", "fast"),
    [("local", True), ("split@1", True), ("split@input", True), ("adaptive", True), ("adaptive", False)],
)
def test_a_batch_answers_as_its_samples_do_one_by_one(engine: Engine, server: str, digits, costs: DeviceCosts,
                                                      policy: str, fast: bool) -> None:  # fmt: skip
    xs = digits.x[:N]
    with TailClient([server], timeout_s=5.0) as client:
        single = PolicyRunner(engine, client, create_policy(policy, costs), codec=CODEC, estimator=link(fast))
        one_by_one = [single.run(x) for x in xs]
        estimator = link(fast)
        before = estimator.estimate().samples
        batch = PolicyRunner(engine, client, create_policy(policy, costs), codec=CODEC, estimator=estimator)
        batched = batch.run_batch(xs)
    assert len(batched) == N
    for one, result in zip(one_by_one, batched, strict=True):
        _same(one, result)
    sent = [r for r in batched if r.offload is not None]
    if policy == "local" or not fast:
        assert not sent
        return
    assert sent
    assert {r.offload.batch for r in sent} == {len(sent)}  # type: ignore[union-attr]  # the survivors: one request
    assert estimator.estimate().samples == before + 1  # one transfer observed, not one per sample


def test_one_decision_per_boundary_for_the_whole_batch(engine: Engine, server: str, digits, tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    with (
        TailClient([server], timeout_s=5.0) as client,
        PolicyRunner(engine, client, create_policy("split@1"), codec=CODEC, decision_log=path) as runner,
    ):
        results = runner.run_batch(digits.x[:N])
    logged = [json.loads(line) for line in path.read_text().splitlines()]
    assert [row["boundary"] for row in logged] == [-1, 0, 1]  # once per boundary, not once per sample
    reached = [set(row["sample"]) for row in logged]
    assert reached[0] == set(range(N))
    assert reached[0] >= reached[1] >= reached[2]  # the exits in between retire samples
    assert {i for i, r in enumerate(results) if r.offload is not None} == reached[2]
    assert all(row["decide_ms"] >= 0 for row in logged)


def test_a_slowed_device_answers_as_before_through_the_emulation(digits_package: Path, engine: Engine,
                                                                 digits) -> None:  # fmt: skip
    slow = emulate_device_speed(Engine(digits_package, cache_dir=None), 1.5)
    assert all(isinstance(s, SlowedSegment) for s in slow.segments)
    chain = slow._chain
    for x in digits.x[:10]:
        mine, reference = slow.run(x), engine.run(x)
        assert (mine.exit, mine.prediction) == (reference.exit, reference.prediction)
        assert np.array_equal(mine.probabilities, reference.probabilities)  # type: ignore[arg-type]
    through = chain.calls if isinstance(chain, SlowedChain) else sum(s.calls for s in slow.segments)
    assert through > 0  # the walk went through the emulation, whichever path the engine took
    batch = slow.run_batch(digits.x[:10])
    assert [r.exit for r in batch] == [engine.run(x).exit for x in digits.x[:10]]
    assert sum(s.calls for s in slow.segments) > 0  # the batched walk too
    with pytest.raises(EdgeExitError, match="already runs at device speed"):
        emulate_device_speed(slow, 2.0)
    runner = slow_policy(PolicyRunner(slow, None, create_policy("local"), codec=CODEC), 1.5)
    assert hasattr(runner.policy.decide, "__wrapped__")
    assert runner.run(digits.x[0]).prediction == engine.run(digits.x[0]).prediction


def test_the_benchs_two_engines_run_at_one_calibrated_speed(digits_package: Path, digits) -> None:
    """The bench's early-exit and full-depth engines stand for one device: the early one runs at
    the speed the full one was calibrated to, which is what the policies' costs are built from."""
    from edgeexit.device.bench import BenchSetup

    setup = BenchSetup.load(digits_package, digits.x[:8], codec=CODEC, speed=3.0)
    base = setup.full.calibrated_segment_ms  # type: ignore[attr-defined]
    assert setup.early.calibrated_segment_ms == base  # type: ignore[attr-defined]
    assert list(setup.segment_ms) == pytest.approx([3.0 * ms for ms in base])
    assert [s._target_s for s in setup.early.segments] == pytest.approx([3.0 * ms / 1e3 for ms in base])
    with pytest.raises(EdgeExitError, match="base_ms has 1 entries"):
        emulate_device_speed(Engine(digits_package, cache_dir=None), 2.0, base_ms=[1.0])


def test_device_speed_presets_and_factors() -> None:
    assert {"host", "rpi4"} <= set(list_speeds())
    rpi4 = get_device_speed("rpi4")
    assert rpi4.target_ms is not None
    assert rpi4.reference_ms is not None
    assert rpi4.factor == pytest.approx(rpi4.target_ms / rpi4.reference_ms)
    assert "XNNPACK" in rpi4.source
    assert get_device_speed(None).factor == 1.0
    assert get_device_speed("4.5").factor == 4.5
    assert get_device_speed(2).label == "x2 (x2)"
    with pytest.raises(UnknownNameError, match="rpi4"):
        get_device_speed("rpi9")
    with pytest.raises(EdgeExitError, match="faster than this machine"):
        get_device_speed("0.5")


def test_an_all_local_plan_runs_in_one_go_with_the_stepped_decisions(engine: Engine, digits,
                                                                      costs: DeviceCosts) -> None:  # fmt: skip
    """When every boundary says "continue, finish locally", a sample runs as one Engine.run and
    carries the decisions stepping would have given it (a probe interval forces stepping)."""
    one_go = PolicyRunner(engine, None, create_policy("adaptive", costs), codec=CODEC, estimator=link(False))
    stepped = PolicyRunner(engine, None, create_policy("adaptive", costs), codec=CODEC, estimator=link(False),
                           probe_interval_s=1e9)  # fmt: skip
    for x in digits.x[:N]:
        mine, reference = one_go.run(x), stepped.run(x)
        assert (mine.exit, mine.prediction) == (reference.exit, reference.prediction)
        assert np.array_equal(mine.probabilities, reference.probabilities)  # type: ignore[arg-type]
        assert [(d.boundary, d.action, d.chosen) for d in mine.decisions] == [
            (d.boundary, d.action, d.chosen) for d in reference.decisions
        ]
        assert all(d.chosen == "local" for d in mine.decisions)
    assert len(one_go._plans) == 1  # the plan was worked out once for this link estimate


@pytest.mark.parametrize("policy", ["split@1", "adaptive"])
def test_an_offloading_plan_runs_to_its_boundary_in_one_go_with_the_stepped_decisions(
    engine: Engine, server: str, digits, costs: DeviceCosts, policy: str
) -> None:
    """When the plan for the current estimate offloads at boundary k, a sample runs to k in one
    ``run_until`` (no stepping), is offloaded there, and carries the decisions and the answer
    stepping would give it; the samples that exit before k carry the decisions they reached."""
    no_input = dataclasses.replace(costs, input_bytes=None)  # adaptive then offloads at boundary 0
    found = {}
    for name, interval in (("one go", None), ("stepped", 1e9)):
        with TailClient([server], timeout_s=2.0) as client:
            runner = PolicyRunner(engine, client, create_policy(policy, no_input), codec=CODEC, estimator=link(True),
                                  probe_interval_s=interval)  # fmt: skip
            found[name] = [runner.run(x) for x in digits.x[:N]]
            if interval is None:
                assert runner._plans, "the plan was worked out up front"
    assert any(r.offload is not None for r in found["one go"])
    for mine, reference in zip(found["one go"], found["stepped"], strict=True):
        _same(reference, mine)


def test_a_preset_is_re_based_on_the_host_that_times_its_reference() -> None:
    # the factor is a ratio to the machine the reference was timed on: a host twice as fast needs twice the factor
    rpi4 = get_device_speed("rpi4")
    assert rpi4.reference == ("efficientnet_lite0", (3, 224, 224))
    here = rpi4.on_host(4.24)
    assert here.factor == pytest.approx(rpi4.target_ms / (4.24 * rpi4.reference_work))
    assert rpi4.on_host(rpi4.reference_ms / rpi4.reference_work).factor == pytest.approx(rpi4.factor)
    assert here.on_this_host
    assert not rpi4.on_this_host
    assert here.label == f"rpi4 (x{here.factor:.3g}, this host)"
    assert "re-based on this host: its reference measured here in 4.24 ms" in here.source
    with pytest.raises(EdgeExitError, match="names no reference network"):
        get_device_speed("3").on_host(1.0)


def test_calibrate_to_host_times_the_reference_package_and_refuses_another(digits_package: Path) -> None:
    engine = Engine(digits_package, cache_dir=None)
    shape = tuple(engine.manifest.input.shape[1:])
    mine = DeviceSpeed.from_measurements("board", 10.0, 1.0, "a test board",
                                         reference=(engine.manifest.model_name, shape))  # fmt: skip
    found = calibrate_to_host(mine, digits_package, rounds=2, runs=5)
    assert found.on_this_host
    assert 0.0 < found.reference_ms < 10.0  # the digits CNN runs in well under 10 ms anywhere
    assert found.factor == pytest.approx(10.0 / found.reference_ms)
    with pytest.raises(EdgeExitError, match="edgeexit export efficientnet_lite0 --input-shape 1,3,224,224"):
        calibrate_to_host("rpi4", digits_package)  # another network: its timing is no reference
