"""PolicyRunner against the real tail server (in-process ``TailServer``): each policy sends where it
should, every answer is correct (offloaded = the device's full-depth answer within the codec's
tolerance; local or fallback = ``Engine.run``), a dead server only costs fallbacks, transfers and
probes feed the link estimator, and every decision is logged with its inputs. Deterministic: the
link estimates are primed far apart and the profile's costs are fixed numbers; no wall-clock
assertions."""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

import pytest

from edgeexit.device import PolicyRunner, TailClient
from edgeexit.errors import EdgeExitError, OffloadError
from edgeexit.policy import Decision, DeviceCosts, LinkEstimator, create_policy
from edgeexit.runtime import Engine, Result

from .test_offload import is_correct

N = 40
CODEC = "fp16"


@pytest.fixture
def dead() -> str:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def costs(engine: Engine) -> DeviceCosts:
    """A slow device (1 s per segment): offloading wins on any real link, loses on a 1 bit/s one."""
    return DeviceCosts.from_manifest(engine.manifest, (1000.0,) * len(engine.segments), codec=CODEC, active_w=5.0,
                                     idle_w=1.0)  # fmt: skip


def fast_link() -> LinkEstimator:
    link = LinkEstimator()
    link.observe_probe(1e-5)
    assert link.observe_transfer(10**9, 0.01)  # ~800 Gbit/s
    return link


def slow_link() -> LinkEstimator:
    link = LinkEstimator()
    link.observe_probe(1.0)
    assert link.observe_transfer(10, 100.0)  # under 1 bit/s
    return link


def _client(*addresses: str, **kwargs: object) -> TailClient:
    settings = {"timeout_s": 2.0, "failures_to_open": 2, "cooldown_s": 600.0, **kwargs}
    return TailClient(list(addresses), **settings)  # type: ignore[arg-type]


def _run(runner: PolicyRunner, digits) -> list[Result]:
    return [runner.run(x) for x in digits.x[:N]]


def _correct(results: list[Result], local) -> None:
    for i, result in enumerate(results):
        assert is_correct(result, i, local, CODEC), (i, result.offload)


def test_local_never_sends(engine: Engine, server: str, digits, local_answers) -> None:
    with _client(server) as client:
        runner = PolicyRunner(engine, client, create_policy("local"), codec=CODEC)
        results = _run(runner, digits)
    _correct(results, local_answers)
    assert all(r.offload is None for r in results)
    decided = [d for r in results for d in r.decisions]
    assert decided, "some samples reach a boundary without exiting"
    assert {d.action for d in decided} == {"continue"}
    for r in results:  # one decision per boundary the sample reached, the input (-1) first
        assert [d.boundary for d in r.decisions] == list(range(-1, min(r.exit, len(engine.segments) - 1)))


def test_split_at_1_sends_at_1(engine: Engine, server: str, digits, local_answers) -> None:
    with _client(server) as client:
        runner = PolicyRunner(engine, client, create_policy("split@1"), codec=CODEC)
        results = _run(runner, digits)
    _correct(results, local_answers)
    sent = [r for r in results if r.offload is not None]
    assert sent
    for r in sent:
        assert r.offload.offloaded  # type: ignore[union-attr]
        assert r.offload.boundary == 1  # type: ignore[union-attr]
        assert r.offload.codec == CODEC  # type: ignore[union-attr]
        assert [(d.boundary, d.action) for d in r.decisions] == [(-1, "continue"), (0, "continue"), (1, "offload")]
    assert all(r.exit <= 1 for r in results if r.offload is None)  # the others exited before the split


def test_adaptive_on_a_fast_link_offloads_at_0(engine: Engine, server: str, digits, local_answers,
                                               costs: DeviceCosts) -> None:  # fmt: skip
    link = fast_link()
    before = link.estimate().samples
    no_input = dataclasses.replace(costs, input_bytes=None)  # as if the package had no input tail
    with _client(server) as client:
        runner = PolicyRunner(engine, client, create_policy("adaptive", no_input), codec=CODEC, estimator=link)
        results = _run(runner, digits)
    _correct(results, local_answers)
    reached = [r for r in results if r.offload is not None]
    assert reached
    for r in results:
        assert r.decisions[0].boundary == -1  # decided at the input: offloading later looks best
        assert r.decisions[0].action == "continue"
    for r in reached:
        assert [(d.boundary, d.action) for d in r.decisions] == [(-1, "continue"), (0, "offload")]
        assert r.decisions[1].chosen == "offload@0"
        assert r.offload is not None
        assert r.offload.offloaded
        assert r.offload.boundary == 0
    assert link.estimate().samples == before + len(reached)  # every transfer fed the estimator


def test_adaptive_on_a_fast_link_offloads_the_input(engine: Engine, server: str, digits, local_answers,
                                                    costs: DeviceCosts) -> None:  # fmt: skip
    """A slow device, a fast link: sending the input itself (nothing run here) is cheapest."""
    assert costs.input_bytes is not None  # from the manifest's input tail
    assert costs.offload_boundaries == (-1, 0, 1)
    with _client(server) as client:
        runner = PolicyRunner(engine, client, create_policy("adaptive", costs), codec=CODEC, estimator=fast_link())
        results = _run(runner, digits)
    _correct(results, local_answers)
    for r in results:
        assert [(d.boundary, d.action) for d in r.decisions] == [(-1, "offload")]
        assert r.decisions[0].chosen == "offload@input"
        assert r.offload is not None
        assert (r.offload.offloaded, r.offload.boundary) == (True, -1)
        assert r.offload.model == "digits_cnn__from_input__fp16"
        assert (r.exit, r.segment_ms) == (engine.num_exits - 1, ())


def test_split_at_input_sends_everything(engine: Engine, server: str, digits, local_answers) -> None:
    with _client(server) as client:
        runner = PolicyRunner(engine, client, create_policy("split@input"), codec=CODEC)
        results = _run(runner, digits)
    _correct(results, local_answers)
    assert all(r.offload is not None and r.offload.offloaded and r.offload.boundary == -1 for r in results)


def test_adaptive_on_a_slow_link_stays_local(engine: Engine, server: str, digits, local_answers,
                                             costs: DeviceCosts) -> None:  # fmt: skip
    with _client(server) as client:
        runner = PolicyRunner(engine, client, create_policy("adaptive", costs), codec=CODEC, estimator=slow_link())
        results = _run(runner, digits)
    _correct(results, local_answers)
    assert all(r.offload is None for r in results)
    decided = [d for r in results for d in r.decisions]
    assert decided
    assert all(d.action == "continue" and d.chosen == "local" for d in decided)


def test_a_dead_server_costs_only_fallbacks(engine: Engine, dead: str, digits, local_answers,
                                            costs: DeviceCosts) -> None:  # fmt: skip
    link = fast_link()
    before = link.estimate()
    with _client(dead, timeout_s=0.5) as client:
        runner = PolicyRunner(engine, client, create_policy("adaptive", costs), codec=CODEC, estimator=link)
        results = _run(runner, digits)
        assert client.states() == {dead: "open"}  # the breaker opened: later requests skip the dead server
    _correct(results, local_answers)
    fell = [r for r in results if r.offload is not None]
    assert fell
    assert all(r.offload.fallback for r in fell)  # type: ignore[union-attr]
    assert any("circuit open" in (r.offload.reason or "") for r in fell)  # type: ignore[union-attr]
    after = link.estimate()
    assert after.samples == before.samples  # a failure is no bandwidth sample
    assert after.bandwidth_bps == pytest.approx(before.bandwidth_bps)


def test_offload_without_a_client_falls_back(engine: Engine, digits, local_answers) -> None:
    runner = PolicyRunner(engine, None, create_policy("split@0"), codec=CODEC)
    results = _run(runner, digits)
    _correct(results, local_answers)
    assert all(r.offload.fallback for r in results if r.offload is not None)  # type: ignore[union-attr]


def test_the_decision_log_has_one_line_per_decision(engine: Engine, server: str, digits, costs: DeviceCosts,
                                                    tmp_path: Path) -> None:  # fmt: skip
    path = tmp_path / "decisions.jsonl"
    path.write_text('{"earlier": "line"}\n')  # appended to, not truncated
    seen: list[tuple[object, Decision]] = []
    with _client(server) as client:
        with PolicyRunner(engine, client, create_policy("adaptive", costs), codec=CODEC, estimator=fast_link(),
                          decision_log=path, battery=80.0) as runner:  # fmt: skip
            results = _run(runner, digits)
        callback = PolicyRunner(engine, client, create_policy("local"), codec=CODEC,
                                decision_log=lambda sample, d: seen.append((sample, d)))  # fmt: skip
        callback.run(digits.x[0], sample_id="first")
    lines = path.read_text().splitlines()
    assert lines[0] == '{"earlier": "line"}'
    logged = [json.loads(line) for line in lines[1:]]
    decided = [(i, d) for i, r in enumerate(results) for d in r.decisions]
    assert len(logged) == len(decided)
    for row, (i, decision) in zip(logged, decided, strict=True):
        assert row["sample"] == i
        assert row["action"] == decision.action == "offload"
        assert row["link"]["bandwidth_bps"] > 0
        assert row["link"]["rtt_s"] >= 0
        assert {o["name"] for o in row["options"]} == {"local", "offload@input", "offload@0", "offload@1"}
        assert row["reason"].startswith("offload now")
        assert row["battery"] == {"percent": 80.0, "plugged": False}
        assert Decision.from_dict({k: v for k, v in row.items() if k != "sample"}) == decision
    assert all(sample == "first" for sample, _ in seen)
    first = results[next(i for i, _ in decided)].to_json()
    assert first["decisions"][0]["action"] == "offload"  # type: ignore[index]
    assert "decisions" not in engine.run(digits.x[0]).to_json()  # a plain run's JSON is as it was


def test_probes_feed_the_estimator_and_the_breaker(engine: Engine, server: str, dead: str, digits) -> None:
    link = LinkEstimator()
    now = [0.0]
    with _client(server) as client:
        runner = PolicyRunner(engine, client, create_policy("local"), estimator=link, probe_interval_s=10.0,
                              clock=lambda: now[0])  # fmt: skip
        rtt = runner.probe()
        assert rtt is not None
        assert rtt > 0
        assert link.estimate().samples == 1
        for x in digits.x[:N]:  # the clock stands still: no probe is due
            runner.run(x)
        assert link.estimate().samples == 1
        now[0] = 11.0
        runner.decide(0)
        assert link.estimate().samples == 2  # one probe before the first decision after the interval
    with _client(dead, timeout_s=0.3) as client:
        runner = PolicyRunner(engine, client, create_policy("local"), estimator=link)
        assert runner.probe() is None
        assert runner.probe() is None
        assert client.states() == {dead: "open"}
        assert runner.probe() is None  # an open breaker: not even tried
    assert link.estimate().samples == 2


def test_bad_settings_are_refused_up_front(engine: Engine) -> None:
    import dataclasses

    bare = dataclasses.replace(engine.manifest, tails=tuple(t for t in engine.manifest.tails if t.boundary != 1))
    stub = type("E", (), {"manifest": bare, "segments": engine.segments})()
    with pytest.raises(OffloadError, match="boundary 1 with codec"):
        PolicyRunner(stub, None, create_policy("split@1"), codec=CODEC)  # type: ignore[arg-type]
    with pytest.raises(EdgeExitError, match="battery"):
        PolicyRunner(engine, None, create_policy("local"), battery="plugged")
    with pytest.raises(EdgeExitError, match="probe_interval_s"):
        PolicyRunner(engine, None, create_policy("local"), probe_interval_s=0)


def test_the_tails_compute_beyond_the_costs_enters_the_estimates_server_delay(engine: Engine, server: str,
                                                                               digits) -> None:  # fmt: skip
    """The estimator takes the server's reported time out of a transfer before reading bandwidth,
    so the tail's compute beyond what the costs model (``server_ms``) must reach the estimate some
    other way, or a slower server than profiled never makes offloading look dearer: it enters
    ``server_queue_ms`` (which every modelled offload adds), beside the server's queue and its
    handling of the request (``server_ms`` beyond queue and compute). Modelled at 0 ms, the server's
    whole reported time shows there; modelled far above it, only the queue and the handling do."""
    n = len(engine.segments)
    found = {}
    for modelled in (0.0, 1e6):
        costs = DeviceCosts.from_manifest(engine.manifest, (1.0,) * n, codec=CODEC, active_w=5.0,
                                          server_ms=(modelled,) * (n - 1))  # fmt: skip
        link = LinkEstimator()
        with _client(server) as client:
            runner = PolicyRunner(engine, client, create_policy("split@0", costs), codec=CODEC, estimator=link)
            infos = [r.offload for r in _run(runner, digits) if r.offload is not None]
        assert infos
        assert all(i.offloaded and i.compute_ms is not None and i.compute_ms > 0 for i in infos)
        assert all(i.server_ms is not None and i.server_ms >= i.queue_ms + i.compute_ms for i in infos)
        found[modelled] = (link.estimate().server_queue_ms, infos)
    delay, infos = found[0.0]  # an EWMA of the samples: between the least and the largest
    assert min(i.server_ms for i in infos) <= delay <= max(i.server_ms for i in infos)
    delay, infos = found[1e6]
    assert delay <= max(i.server_ms - i.compute_ms for i in infos)


def test_a_link_that_changes_is_decided_on_again(engine: Engine, digits, costs: DeviceCosts) -> None:
    """The runner reuses its keyed estimate while no probe or transfer moved the estimator, and
    decides anew from the first sample after one did: slow link, local; the link turns fast (as a
    transfer would tell it), offload, without waiting for the reuse window to run out."""
    link = slow_link()
    runner = PolicyRunner(engine, None, create_policy("adaptive", costs), codec=CODEC, estimator=link)
    assert all(d.action == "continue" for r in _run(runner, digits) for d in r.decisions)
    for _ in range(80):  # the EWMAs forget the first link geometrically: from under 1 bit/s, ~80 samples
        link.observe_probe(1e-5)
        link.observe_transfer(10**9, 0.01)
    after = runner.run(digits.x[0])
    assert any(d.action == "offload" for d in after.decisions)
    assert after.prediction is not None  # no client: the offload fell back, nothing lost


def test_an_estimate_that_jitters_within_a_grain_keeps_its_plan(engine: Engine, digits, costs: DeviceCosts) -> None:
    """Transfers nudge the estimate by a few percent each; an estimate hovering at a grain's edge
    crossed it on most of them and re-planned each time. The plan in use is kept while the
    estimate stays within one grain of the one it was made on, and replaced once it leaves."""
    link = slow_link()
    policy = create_policy("adaptive", costs)
    calls = []
    decide = policy.decide
    policy.decide = lambda *args: calls.append(args) or decide(*args)  # type: ignore[method-assign]
    runner = PolicyRunner(engine, None, policy, codec=CODEC, estimator=link)
    runner.run(digits.x[0])
    planned = len(calls)
    assert planned > 0
    for x in digits.x[1:20]:
        link.observe_probe(1.0 + 1e-4)  # the RTT moves by far less than its 0.25 ms grain
        runner.run(x)
    assert len(calls) == planned  # no new plan: the estimate stayed near the planned one
    for _ in range(5):
        link.observe_probe(1.5)  # half a second more: many grains away
    runner.run(digits.x[20])
    assert len(calls) > planned


def test_a_server_that_sheds_makes_the_load_aware_runner_back_off(
    engine: Engine, digits, local_answers, costs: DeviceCosts, digits_package: Path
) -> None:
    """The tail server takes 0.3 s per batch and the device's deadline is 0.1 s: the first offload
    times out (the server did not know its batch time yet), the next is shed at once (OffloadShed),
    and the runner then backs off: its next samples are decided local, saying why. Without load
    feedback the runner keeps sending into the shedding server. No answer is lost either way."""
    import time

    from edgeexit.server import ServerOptions, TailServer

    with TailServer([digits_package], ServerOptions(listen="127.0.0.1:0")) as running:
        for batcher in running.batchers.values():
            run = batcher.run

            def slow(feeds, run=run):  # at least 0.3 s per batch: a server far over its capacity
                time.sleep(0.3)
                return run(feeds)

            batcher.run = slow
        address = f"127.0.0.1:{running.port}"
        found = {}
        for feedback in (True, False):
            link = LinkEstimator(load_feedback=feedback, seed=0, prior_bandwidth_bps=1e9, prior_rtt_s=1e-4)
            with _client(address, timeout_s=0.1, failures_to_open=50) as client:
                runner = PolicyRunner(engine, client, create_policy("adaptive", costs), codec=CODEC, estimator=link)
                found[feedback] = [runner.run(x) for x in digits.x[:24]]
            _correct(found[feedback], local_answers)
    sent = [r for r in found[True] if r.offload is not None]
    shed = [i for i, r in enumerate(found[True]) if r.offload is not None and r.offload.shed]
    assert shed, [r.offload for r in sent]
    first = shed[0]
    assert found[True][first].offload.fallback
    assert found[True][first].offload.expected_server_ms is not None
    after = found[True][first + 1]
    assert after.offload is None  # backing off: not even tried
    assert "the server shed" in after.decisions[0].reason
    deaf = [r for r in found[False] if r.offload is not None]
    assert len(deaf) > len(sent)  # without feedback it kept trying
    assert sum(r.offload.shed for r in deaf) >= len(deaf) // 2  # and was shed (after the first, unknown, batches)
