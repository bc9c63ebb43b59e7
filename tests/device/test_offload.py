"""The device side of offload against the real tail server (a subprocess): answers, batching, and the
one promise under faults: every request gets a correct answer, offloaded or finished locally.

"Correct" is checked per request: an offloaded answer equals the device's own full-depth answer
(the tail computes the final exit); a fallback or a local early exit equals ``Engine.run``. Outcomes
are counted; wall-clock times are never asserted.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest

from edgeexit.device import OffloadError, OffloadRunner, TailClient, select_tail
from edgeexit.errors import EdgeExitError
from edgeexit.runtime import Engine, Result

from .conftest import ServeProcess

TOLERANCE = {"fp32": 1e-5, "fp16": 2e-3, "int8": 5e-2}  # on probabilities


def is_correct(result: Result, i: int, local: dict[str, list[Result]], codec: str = "fp32") -> bool:
    offloaded = result.offload is not None and result.offload.offloaded
    reference = local["full" if offloaded else "early"][i]
    tolerance = TOLERANCE[codec] if offloaded else 1e-6
    if result.exit != reference.exit or result.probabilities is None:
        return False
    close = np.allclose(result.probabilities, reference.probabilities, atol=tolerance)
    return close and (result.prediction == reference.prediction or codec == "int8")


def _client(*addresses: str, **kwargs: object) -> TailClient:
    settings = {"timeout_s": 2.0, "failures_to_open": 2, "cooldown_s": 0.2, **kwargs}
    return TailClient(list(addresses), **settings)  # type: ignore[arg-type]


# ---------------------------------------------------------------- choosing the tail (no server)


def test_the_package_has_every_tail(engine: Engine) -> None:
    found = {(t.boundary, t.codec) for t in engine.manifest.tails}
    assert found == {(b, c) for b in (-1, 0, 1) for c in ("fp32", "fp16", "int8")}  # -1: the input tail


def test_select_tail_by_boundary_and_codec(engine: Engine) -> None:
    assert select_tail(engine.manifest, 1, "int8").model == "digits_cnn__from_1__int8"
    assert select_tail(engine.manifest, 0, "fp32").model == "digits_cnn__from_0"
    assert select_tail(engine.manifest, 1).codec == "fp16"  # the default: half the bytes, near-exact
    assert select_tail(engine.manifest, -1, "int8").model == "digits_cnn__from_input__int8"
    assert select_tail(engine.manifest, -1).model == "digits_cnn__from_input__fp16"


def test_a_missing_tail_lists_what_the_package_has(engine: Engine) -> None:
    manifest = dataclasses.replace(engine.manifest, tails=tuple(t for t in engine.manifest.tails if t.codec != "int8"))
    with pytest.raises(OffloadError) as caught:
        select_tail(manifest, 1, "int8")
    message = str(caught.value)
    assert "no tail for boundary 1 with codec int8" in message
    assert "boundary 0 (fp32, fp16), boundary 1 (fp32, fp16)" in message
    assert "--codecs" in message
    with pytest.raises(OffloadError, match="it has no tails"):
        select_tail(dataclasses.replace(manifest, tails=()), 0)


@pytest.mark.parametrize(
    ("boundary", "codec", "fragment"),
    [(2, "fp32", r"boundary 2.*\(0\.\.1, or -1"), (-2, None, r"\(0\.\.1, or -1"), (0, "zstd", "unknown codec 'zstd'")],
)
def test_a_bad_boundary_or_codec_is_refused_up_front(engine: Engine, boundary: int, codec: str | None,
                                                     fragment: str) -> None:  # fmt: skip
    with pytest.raises(OffloadError, match=fragment):
        OffloadRunner(engine, _client("127.0.0.1:1"), split=boundary, codec=codec)


def test_max_batch_comes_from_the_tails_config(engine: Engine) -> None:
    assert OffloadRunner(engine, _client("127.0.0.1:1"), split=1).max_batch == 64
    assert OffloadRunner(engine, _client("127.0.0.1:1"), split=1, max_batch=5).max_batch == 5


def test_an_unreachable_server_falls_back_with_correct_answers(engine: Engine, digits, local_answers) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with _client(f"127.0.0.1:{port}", cooldown_s=60) as client:
        runner = OffloadRunner(engine, client, split=1, codec="fp32")
        results = [runner.run(x) for x in digits.x[:30]]
        batch = runner.run_batch(digits.x[:30])
    assert sum(is_correct(r, i, local_answers) for i, r in enumerate(results)) == 30
    assert sum(is_correct(r, i, local_answers) for i, r in enumerate(batch)) == 30
    fallbacks = [r for r in results if r.offload is not None]
    assert fallbacks
    assert all(r.offload.fallback for r in fallbacks)
    assert "UNAVAILABLE" in fallbacks[0].offload.reason
    assert "circuit open" in fallbacks[-1].offload.reason  # after two failures it stops trying
    assert fallbacks[-1].offload.attempts == 0
    assert fallbacks[-1].offload.bytes_sent == 0


# ---------------------------------------------------------------- a healthy server


@pytest.mark.parametrize("codec", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("split", [-1, 0, 1])
def test_offloaded_answers_match_the_local_full_depth_answers(
    healthy: ServeProcess, engine: Engine, digits, local_answers, codec: str, split: int
) -> None:
    server = healthy
    with _client(server.address) as client:
        runner = OffloadRunner(engine, client, split=split, codec=codec, early_exit=False)
        results = [runner.run(x) for x in digits.x[:40]]
    assert all(r.offload is not None and r.offload.offloaded for r in results)
    assert sum(is_correct(r, i, local_answers, codec) for i, r in enumerate(results)) == 40
    agree = np.mean([r.prediction == local_answers["full"][i].prediction for i, r in enumerate(results)])
    assert agree >= (0.95 if codec == "int8" else 1.0)
    info = results[0].offload
    assert (info.server, info.boundary, info.codec, info.batch, info.attempts) == (server.address, split, codec, 1, 1)
    assert info.model == select_tail(engine.manifest, split, codec).model
    sent = engine.manifest.input.tensor if split == -1 else engine.manifest.segments[split].output(f"hidden_{split}")
    elements = int(np.prod(sent.shape[1:]))
    bytes_per_element = {"fp32": 4, "fp16": 2, "int8": 1}[codec]
    assert elements * bytes_per_element < info.bytes_sent < elements * bytes_per_element + 400
    assert info.queue_ms is not None
    assert info.compute_ms is not None
    assert all(r.exit == engine.num_exits - 1 and len(r.segment_ms) == split + 1 for r in results)


def test_offloading_at_the_input_sends_every_input_as_it_is(
    healthy: ServeProcess, engine: Engine, digits, local_answers
) -> None:
    """split=-1: nothing runs here, so early exit changes nothing; a batch travels in one request."""
    with _client(healthy.address) as client:
        runner = OffloadRunner(engine, client, split=-1, codec="fp32")  # early_exit=True: irrelevant here
        assert runner.tail.model == "digits_cnn__from_input"
        results = runner.run_batch(digits.x[:20])
    assert all(r.offload is not None and r.offload.offloaded and r.offload.batch == 20 for r in results)
    assert all(r.offload.boundary == -1 and r.segment_ms == () for r in results)  # type: ignore[union-attr]
    assert sum(is_correct(r, i, local_answers) for i, r in enumerate(results)) == 20


def test_int8_side_inputs_as_tensors_give_the_same_answers(
    healthy: ServeProcess, engine: Engine, digits, local_answers
) -> None:
    """The Triton way (scale and zero point as [N, 1] input tensors) and edgeexit's (request
    parameters) reach the same tail, and our server takes both."""
    answers = {}
    for side_inputs in ("parameters", "tensors"):
        with _client(healthy.address, side_inputs=side_inputs) as client:
            runner = OffloadRunner(engine, client, split=0, codec="int8", early_exit=False)
            answers[side_inputs] = runner.run_batch(digits.x[:16])
    for mode, results in answers.items():
        assert all(r.offload is not None and r.offload.offloaded for r in results), mode
    np.testing.assert_allclose(
        [r.probabilities for r in answers["tensors"]], [r.probabilities for r in answers["parameters"]], atol=1e-6
    )


def test_side_inputs_must_be_known() -> None:
    with pytest.raises(EdgeExitError, match="side_inputs is 'headers'; expected one of parameters, tensors"):
        TailClient("127.0.0.1:1", side_inputs="headers")


def test_early_exits_before_the_split_stay_on_the_device(healthy: ServeProcess, digits_package: Path, digits) -> None:
    server = healthy
    engine = Engine(digits_package, cache_dir=None, threshold=0.3)  # exit 1 answers many, exit 0 few
    local = [engine.run(x) for x in digits.x[:60]]
    with _client(server.address) as client:
        runner = OffloadRunner(engine, client, split=1, codec="fp32")
        results = [runner.run(x) for x in digits.x[:60]]
    exited = [r for r in results if r.offload is None]
    offloaded = [r for r in results if r.offload is not None]
    assert exited
    assert offloaded
    assert all(r.exit <= 1 for r in exited)
    assert all(r.offload.offloaded for r in offloaded)
    for got, want in zip(results, local, strict=True):
        assert (got.exit, got.prediction) == (want.exit, want.prediction)
        np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-5)


def test_a_batch_sends_its_survivors_in_one_request(healthy: ServeProcess, digits_package: Path, digits) -> None:
    server = healthy
    engine = Engine(digits_package, cache_dir=None, threshold=0.3)
    xs = digits.x[:50]
    local = engine.run_batch(xs)
    with _client(server.address) as client:
        results = OffloadRunner(engine, client, split=1, codec="fp16").run_batch(xs)
        chunked = OffloadRunner(engine, client, split=1, codec="fp16", max_batch=7).run_batch(xs)
    survivors = [r for r in results if r.offload is not None]
    assert 0 < len(survivors) < 50
    assert {r.offload.batch for r in survivors} == {len(survivors)}
    assert all(r.offload.offloaded and r.offload.attempts == 1 for r in survivors)
    total = sum(r.offload.bytes_sent for r in survivors)
    assert max(r.offload.bytes_sent for r in survivors) - min(r.offload.bytes_sent for r in survivors) <= 1
    assert total > len(survivors) * 32 * 4 * 4 * 2  # fp16 hidden_1 is 32x4x4
    sizes = [r.offload.batch for r in chunked if r.offload is not None]
    expected_sizes = [min(7, len(survivors) - s) for s in range(0, len(survivors), 7)]
    assert sorted(set(sizes)) == sorted(set(expected_sizes))
    for got_batch in (results, chunked):
        for got, want in zip(got_batch, local, strict=True):
            assert (got.exit, got.prediction) == (want.exit, want.prediction)
            np.testing.assert_allclose(got.probabilities, want.probabilities, atol=2e-3)


def test_a_server_error_falls_back_with_the_reason(
    healthy: ServeProcess, digits_package: Path, digits, local_answers
) -> None:
    """A tensor from other weights (another package_id) is FAILED_PRECONDITION: finished locally."""
    server = healthy
    engine = Engine(digits_package, cache_dir=None)
    engine.manifest = dataclasses.replace(engine.manifest, package_id="0" * 32)
    with _client(server.address) as client:
        runner = OffloadRunner(engine, client, split=1, codec="fp32")
        results = [runner.run(x) for x in digits.x[:10]]
    assert sum(is_correct(r, i, local_answers) for i, r in enumerate(results)) == 10
    reasons = [r.offload.reason for r in results if r.offload is not None]
    assert reasons
    assert "FAILED_PRECONDITION" in reasons[0]
    assert all(r.offload.fallback for r in results if r.offload is not None)


def test_bearer_token(serve, engine: Engine, digits, local_answers, tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text("s3cret\n")
    server = serve("--token-file", str(tmp_path / "tokens"))
    with _client(server.address, token="s3cret") as client:
        allowed = OffloadRunner(engine, client, split=1, codec="fp32").run(digits.x[0])
    with _client(server.address) as client:
        refused = OffloadRunner(engine, client, split=1, codec="fp32").run(digits.x[0])
    assert allowed.offload.offloaded
    assert refused.offload.fallback
    assert "UNAUTHENTICATED" in refused.offload.reason
    assert is_correct(allowed, 0, local_answers)
    assert is_correct(refused, 0, local_answers)


# ---------------------------------------------------------------- faults


def _until_offloaded(runner: OffloadRunner, digits, results: list[Result], *, start: int) -> int:
    """Run samples start.. until one is offloaded again (the breaker's cool-down has to pass: a short
    pause per request, bounded by a count, never by a clock the test asserts on)."""
    for i in range(start, 200):
        results.append(runner.run(digits.x[i]))
        if results[-1].offload is not None and results[-1].offload.offloaded:
            return i + 1
        threading.Event().wait(0.01)
    pytest.fail("the server was never used again: " + str(results[-1].offload))


def test_killing_the_server_mid_stream_loses_no_request(serve, engine: Engine, digits, local_answers) -> None:
    """SIGKILL from another thread while requests keep going: the loop runs until the kill has
    happened and 40 more requests, so the kill lands somewhere in the stream."""
    server = serve()
    answered: list[tuple[int, Result]] = []
    go = threading.Event()
    killed = threading.Event()

    def killer() -> None:
        go.wait(timeout=60)
        server.kill()
        killed.set()

    thread = threading.Thread(target=killer)
    thread.start()
    after_kill = 0
    with _client(server.address, cooldown_s=30) as client:
        runner = OffloadRunner(engine, client, split=1, codec="fp32")
        for n in range(100_000):
            i = n % 200
            answered.append((i, runner.run(digits.x[i])))
            if n == 40:
                go.set()
            after_kill += killed.is_set()
            if after_kill >= 40:
                break
    thread.join()
    assert killed.is_set()
    assert sum(is_correct(r, i, local_answers) for i, r in answered) == len(answered)
    kinds = ["fallback" if r.offload.fallback else "offloaded" for _, r in answered if r.offload is not None]
    assert kinds.count("offloaded") >= 35
    assert kinds.count("fallback") >= 30
    first_fallback = kinds.index("fallback")
    assert "offloaded" not in kinds[first_fallback:]  # nothing answers after the kill
    reasons = [r.offload.reason or "" for _, r in answered if r.offload is not None and r.offload.fallback]
    assert "circuit open" in reasons[-1]  # the breaker stopped the calls


def test_killing_the_server_under_batched_load_loses_no_request(serve, engine: Engine, digits, local_answers) -> None:
    server = serve()
    outcomes: list[bool] = []
    with _client(server.address, cooldown_s=30) as client:
        runner = OffloadRunner(engine, client, split=0, codec="fp32")
        for round_ in range(6):
            if round_ == 3:
                server.kill()
            start = 20 * round_
            batch = runner.run_batch(digits.x[start : start + 20])
            outcomes += [is_correct(r, start + i, local_answers) for i, r in enumerate(batch)]
            kinds = {r.offload.fallback for r in batch if r.offload is not None}
            assert kinds == ({False} if round_ < 3 else {True})
    assert outcomes.count(True) == len(outcomes) == 120


def test_a_hung_server_costs_a_deadline_then_recovers(serve, engine: Engine, digits, local_answers) -> None:
    """SIGSTOP: TCP connects, nothing answers -> DEADLINE_EXCEEDED, fallback; the breaker opens;
    SIGCONT -> a half-open probe succeeds and requests are offloaded again."""
    server = serve()
    results: list[Result] = []
    with _client(server.address, timeout_s=0.3, cooldown_s=0.2) as client:
        runner = OffloadRunner(engine, client, split=1, codec="fp32")
        results += [runner.run(digits.x[i]) for i in range(10)]
        server.pause()
        results += [runner.run(digits.x[i]) for i in range(10, 16)]
        assert client.states()[server.address] in ("open", "half_open")
        server.resume()
        i = _until_offloaded(runner, digits, results, start=16)
        results += [runner.run(digits.x[j]) for j in range(i, i + 5)]
        assert client.states()[server.address] == "closed"
    assert sum(is_correct(r, i, local_answers) for i, r in enumerate(results)) == len(results)
    reasons = [r.offload.reason or "" for r in results[10:16] if r.offload is not None]
    assert any("DEADLINE_EXCEEDED" in reason for reason in reasons)
    assert all(results[k].offload.fallback for k in range(10, 16) if results[k].offload is not None)
    assert all(r.offload.offloaded for r in results[-5:] if r.offload is not None)


def test_a_restarted_server_is_used_again(serve, engine: Engine, digits, local_answers) -> None:
    server = serve()
    results: list[Result] = []
    with _client(server.address, cooldown_s=0.1) as client:
        runner = OffloadRunner(engine, client, split=1, codec="fp32")
        results += [runner.run(digits.x[i]) for i in range(5)]
        server.kill()
        results += [runner.run(digits.x[i]) for i in range(5, 15)]
        serve(port=server.port)  # the same address, a new process
        _until_offloaded(runner, digits, results, start=15)
    assert sum(is_correct(r, i, local_answers) for i, r in enumerate(results)) == len(results)
    assert all(r.offload.offloaded for r in results[:5] if r.offload is not None)
    assert all(r.offload.fallback for r in results[5:15] if r.offload is not None)


def test_two_servers_balance_and_fail_over(serve, engine: Engine, digits, local_answers) -> None:
    first, second = serve(), serve()
    results: list[Result] = []
    with _client(first.address, second.address, cooldown_s=30) as client:
        runner = OffloadRunner(engine, client, split=1, codec="fp32", early_exit=False)
        results += [runner.run(digits.x[i]) for i in range(10)]
        first.kill()
        results += [runner.run(digits.x[i]) for i in range(10, 30)]
        assert client.states() == {first.address: "open", second.address: "closed"}
    answered = [r.offload.server for r in results[:10]]
    assert answered.count(first.address) == answered.count(second.address) == 5  # round-robin
    after = results[10:]
    assert all(r.offload.offloaded and r.offload.server == second.address for r in after)  # failed over, no fallback
    assert sum(r.offload.attempts for r in after) == len(after) + 2  # the dead one tried until its breaker opened
    full = local_answers["full"]
    for i, r in enumerate(results):
        assert r.prediction == full[i].prediction
        np.testing.assert_allclose(r.probabilities, full[i].probabilities, atol=1e-5)


def test_every_server_dead_still_answers_everything(serve, engine: Engine, digits, local_answers) -> None:
    servers = [serve(), serve()]
    with _client(*(s.address for s in servers), cooldown_s=30) as client:
        runner = OffloadRunner(engine, client, split=1, codec="fp32")
        for s in servers:
            s.kill()
        results = [runner.run(x) for x in digits.x[:30]]
        batch = runner.run_batch(digits.x[:30])
    assert sum(is_correct(r, i, local_answers) for i, r in enumerate(results)) == 30
    assert sum(is_correct(r, i, local_answers) for i, r in enumerate(batch)) == 30
    assert all(r.offload.fallback for r in results + batch if r.offload is not None)
