"""Splitting a run at a boundary: ``run_until`` / ``resume`` (and the batch variants) give exactly
what ``run`` / ``run_batch`` give, and ``tail_results`` turns a tail's logits into Results.

The reference is always the engine's plain ``run``: the split must be invisible in the answers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeexit.errors import EdgeExitError
from edgeexit.runtime import BatchProgress, Engine, OffloadInfo, Pending, Result
from edgeexit.runtime.backends import bind_chain

N = 120


def _same(a: Result, b: Result) -> None:
    assert (a.exit, a.prediction, a.label) == (b.exit, b.prediction, b.label)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    assert a.score == b.score
    assert len(a.segment_ms) == len(b.segment_ms)
    assert (a.hidden is None) == (b.hidden is None)
    if a.hidden is not None:
        np.testing.assert_array_equal(a.hidden, b.hidden)


def _close(a: Result, b: Result) -> None:
    """Batched and one-at-a-time runs may differ in the last float bits."""
    assert (a.exit, a.prediction, a.label) == (b.exit, b.prediction, b.label)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
    assert a.score == pytest.approx(b.score, abs=1e-6)
    assert len(a.segment_ms) == len(b.segment_ms)


def _hidden_at(engine: Engine, x: np.ndarray, boundary: int) -> np.ndarray:
    """Boundary ``boundary``'s tensor computed segment by segment, independently of the engine's walk."""
    current = x[None] if x.ndim == 3 else x
    for segment in engine.segments[: boundary + 1]:
        current = segment.run(current)[segment.spec.hidden]
    return current


@pytest.fixture(scope="module")
def mixed_package(digits_package: Path, digits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy whose per-exit thresholds make every exit answer some samples, so all paths run."""
    import shutil
    from dataclasses import replace

    from edgeexit.package import open_package

    target = tmp_path_factory.mktemp("offload") / "pkg"
    shutil.copytree(digits_package, target)
    package = open_package(target)
    full = Engine(package, cache_dir=None).run_full(digits.x[:N], timing_samples=1)
    top = [(np.exp(lg - lg.max(1, keepdims=True)) / np.exp(lg - lg.max(1, keepdims=True)).sum(1, keepdims=True)).max(1)
           for lg in full.logits]  # fmt: skip
    exits = list(package.manifest.exits)
    for k, quantile in ((0, 0.7), (1, 0.5)):
        exits[k] = replace(exits[k], criterion="max_prob", threshold=float(np.quantile(top[k], quantile)))
    package.save_manifest(package.manifest.with_exits(tuple(exits), package.manifest.calibration))
    return target


@pytest.fixture(scope="module")
def mixed(mixed_package: Path) -> Engine:
    return Engine(mixed_package, cache_dir=None)


def test_the_fixture_reaches_every_exit(mixed: Engine, digits) -> None:
    exits = {mixed.run(x).exit for x in digits.x[:N]}
    assert exits == {0, 1, 2}


@pytest.mark.parametrize("boundary", [0, 1])
def test_run_until_then_resume_equals_run(mixed: Engine, digits, boundary: int) -> None:
    counts = {"exited": 0, "pending": 0}
    for x in digits.x[:N]:
        expected = mixed.run(x)
        state = mixed.run_until(x, boundary)
        if isinstance(state, Result):
            counts["exited"] += 1
            assert state.exit <= boundary
            assert state.offload is None
            _same(state, expected)
            continue
        counts["pending"] += 1
        assert isinstance(state, Pending)
        assert expected.exit > boundary
        assert state.boundary == boundary
        assert state.rows == (0,)
        assert state.samples == 1
        assert len(state.segment_ms) == boundary + 1
        np.testing.assert_array_equal(state.hidden, _hidden_at(mixed, x, boundary))
        _same(mixed.resume(state), expected)
    assert counts["exited"] > 0
    assert counts["pending"] > 0


def test_run_until_the_input_holds_the_input_and_resumes_to_run(mixed: Engine, digits) -> None:
    """Boundary -1: nothing runs; resume is the whole local run, exits included; a tail answers at the final exit."""
    for x in digits.x[:20]:
        state = mixed.run_until(x, -1)
        assert isinstance(state, Pending)
        assert (state.boundary, state.rows, state.segment_ms) == (-1, (0,), ())
        np.testing.assert_array_equal(state.hidden, x[None])
        assert not np.shares_memory(state.hidden, x)  # a copy: owned
        _same(mixed.resume(state), mixed.run(x))
        stepped = mixed.advance(state, 0)  # on to boundary 0: what run_until(x, 0) gives
        assert type(stepped) is type(mixed.run_until(x, 0))
    progress = mixed.run_batch_until(digits.x[:N], -1)
    assert progress.results == (None,) * N
    assert progress.pending is not None
    assert progress.pending.rows == tuple(range(N))
    for got, want in zip(mixed.resume_batch(progress.pending), mixed.run_batch(digits.x[:N]), strict=True):
        _close(got, want)
    logits = np.zeros((N, 10), np.float32)
    results = mixed.tail_results(progress.pending, logits)
    assert all(r.exit == mixed.num_exits - 1 and r.segment_ms == () for r in results)


def test_pending_owns_its_tensor_and_resumes_again(mixed: Engine, digits) -> None:
    states = [mixed.run_until(x, 0, early_exit=False) for x in digits.x[:3]]
    first = states[0]
    assert isinstance(first, Pending)
    snapshot = first.hidden.copy()
    mixed.run(digits.x[5])  # reuses the bound buffers
    mixed.resume(states[1])
    np.testing.assert_array_equal(first.hidden, snapshot)
    assert not np.shares_memory(first.hidden, states[1].hidden)
    _same(mixed.resume(first), mixed.resume(first))
    np.testing.assert_array_equal(first.hidden, snapshot)


def test_keep_hidden_survives_the_split(mixed: Engine, digits) -> None:
    for x in digits.x[:40]:
        state = mixed.run_until(x, 0, keep_hidden=True)
        finished = state if isinstance(state, Result) else mixed.resume(state)
        _same(finished, mixed.run(x, keep_hidden=True))


def test_without_early_exit_every_sample_reaches_the_boundary(digits_package: Path, mixed: Engine, digits) -> None:
    full_depth = Engine(digits_package, cache_dir=None, threshold=1.01)  # no early exit fires
    for x in digits.x[:30]:
        state = mixed.run_until(x, 1, early_exit=False)
        assert isinstance(state, Pending)
        assert not state.early_exit
        finished = mixed.resume(state)
        assert finished.exit == mixed.num_exits - 1
        _same(finished, full_depth.run(x))


def test_latency_counts_from_the_first_segment(mixed: Engine, digits) -> None:
    state = mixed.run_until(digits.x[0], 0, early_exit=False)
    assert isinstance(state, Pending)
    finished = mixed.resume(state)
    assert finished.latency_ms >= sum(finished.segment_ms) * 0.5
    assert len(finished.segment_ms) == mixed.num_exits


@pytest.mark.parametrize(("criterion", "threshold"), [("patience", 2.0), ("similarity", 0.2), ("margin", 0.6)])
def test_resume_equals_run_for_every_criterion(digits_package: Path, digits, criterion: str, threshold: float) -> None:
    engine = Engine(digits_package, cache_dir=None, criterion=criterion, threshold=threshold)
    for boundary in (0, 1):
        for x in digits.x[:40]:
            state = engine.run_until(x, boundary)
            finished = state if isinstance(state, Result) else engine.resume(state)
            _same(finished, engine.run(x))
        progress = engine.run_batch_until(digits.x[:40], boundary)
        finished = progress.complete(engine.resume_batch(progress.pending) if progress.pending else [])
        for got, expected in zip(finished, engine.run_batch(digits.x[:40]), strict=True):
            _close(got, expected)


def test_resume_without_a_bound_chain(mixed: Engine, digits) -> None:
    """Packages with dynamic non-batch axes run segment by segment: the split works there too."""
    plain = Engine(mixed.package, cache_dir=None)
    plain._chain = None
    for x in digits.x[:30]:
        state = plain.run_until(x, 0)
        finished = state if isinstance(state, Result) else plain.resume(state)
        _close(finished, mixed.run(x))


def test_the_backend_says_whether_it_binds_a_chain(mixed: Engine) -> None:
    """The engine asks its backend for a copy-free chain instead of checking segment types: ONNX
    Runtime binds one for fixed shapes, a backend without one answers None."""
    manifest = mixed.manifest
    assert bind_chain("onnxruntime", mixed.segments, manifest.input) is not None
    assert bind_chain("tflite", mixed.segments, manifest.input) is None


# ---------------------------------------------------------------- batches


@pytest.mark.parametrize("boundary", [0, 1])
def test_run_batch_until_then_resume_batch_equals_run_batch(mixed: Engine, digits, boundary: int) -> None:
    xs = digits.x[:N]
    expected = mixed.run_batch(xs)
    progress = mixed.run_batch_until(xs, boundary)
    assert isinstance(progress, BatchProgress)
    pending = progress.pending
    assert pending is not None
    assert list(pending.rows) == sorted(pending.rows)
    assert {i for i, r in enumerate(progress.results) if r is None} == set(pending.rows)
    assert all(expected[i].exit > boundary for i in pending.rows)
    for i, r in enumerate(progress.results):
        if r is not None:
            assert r.exit <= boundary
            _same(r, expected[i])
    for row, hidden in zip(pending.rows, pending.hidden, strict=True):
        np.testing.assert_allclose(hidden, _hidden_at(mixed, xs[row], boundary)[0], atol=1e-6)
    finished = progress.complete(mixed.resume_batch(pending))
    assert len(finished) == N
    for got, want in zip(finished, expected, strict=True):
        _same(got, want)
    for got, x in zip(finished, xs, strict=True):
        _close(got, mixed.run(x))


def test_pending_subsets_resume_like_the_whole(mixed: Engine, digits) -> None:
    progress = mixed.run_batch_until(digits.x[:N], 0, early_exit=False)
    pending = progress.pending
    assert pending is not None
    assert pending.rows == tuple(range(N))
    whole = mixed.resume_batch(pending)
    parts = [r for start in range(0, N, 7) for r in mixed.resume_batch(pending.select(start, start + 7))]
    for a, b in zip(whole, parts, strict=True):
        _close(a, b)
    one = pending.select(3, 4)
    _close(mixed.resume(one), whole[3])


def test_a_batch_where_everything_exits_early_has_nothing_pending(digits_package: Path, digits) -> None:
    engine = Engine(digits_package, cache_dir=None, threshold=0.0)
    progress = engine.run_batch_until(digits.x[:10], 1)
    assert progress.pending is None
    assert all(r is not None and r.exit == 0 for r in progress.results)
    assert progress.complete([]) == list(progress.results)


def test_complete_needs_one_result_per_pending_sample(mixed: Engine, digits) -> None:
    progress = mixed.run_batch_until(digits.x[:5], 0, early_exit=False)
    with pytest.raises(EdgeExitError, match="got 0 results for 5 pending samples"):
        progress.complete([])


# ---------------------------------------------------------------- a tail's logits


def test_tail_results_apply_the_final_exits_rule(digits_package: Path, mixed: Engine, digits) -> None:
    full_depth = Engine(digits_package, cache_dir=None, threshold=1.01)
    final_logits = mixed.run_full(digits.x[:20], timing_samples=1).logits[-1]
    progress = mixed.run_batch_until(digits.x[:20], 1, early_exit=False)
    info = OffloadInfo(boundary=1, codec="fp16", model="m", server="s:1", bytes_sent=10, transfer_ms=1.0)
    results = mixed.tail_results(progress.pending, final_logits, offload=info)
    assert len(results) == 20
    for got, x in zip(results, digits.x[:20], strict=True):
        want = full_depth.run(x)
        assert got.exit == mixed.num_exits - 1
        assert (got.prediction, got.label) == (want.prediction, want.label)
        np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-6)
        assert got.score == pytest.approx(want.score, abs=1e-5)
        assert len(got.segment_ms) == 2  # the segments that ran here
        assert got.offload is info
        assert got.hidden is None


def test_tail_results_use_the_final_exits_temperature(digits_package: Path, package_copy: Path, digits) -> None:
    from dataclasses import replace

    from edgeexit.package import open_package

    package = open_package(package_copy)
    exits = (*package.manifest.exits[:-1], replace(package.manifest.exits[-1], temperature=2.0))
    package.save_manifest(package.manifest.with_exits(exits, package.manifest.calibration))
    engine = Engine(package_copy, cache_dir=None, threshold=1.01)
    state = engine.run_until(digits.x[0], 0)
    logits = engine.run_full(digits.x[:1], timing_samples=1).logits[-1]
    got = engine.tail_results(state, logits)[0]
    want = engine.run(digits.x[0])
    assert (got.exit, got.prediction) == (want.exit, want.prediction)
    np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-6)
    assert got.score == pytest.approx(want.score, abs=1e-5)  # max_prob at temperature 2, not the graph's


def test_tail_logits_of_the_wrong_shape_are_refused(mixed: Engine, digits) -> None:
    state = mixed.run_until(digits.x[0], 0, early_exit=False)
    with pytest.raises(EdgeExitError, match=r"shape \(1, 7\); expected \(1, 10\)"):
        mixed.tail_results(state, np.zeros((1, 7), np.float32))
    with pytest.raises(EdgeExitError, match=r"shape \(2, 10\)"):
        mixed.tail_results(state, np.zeros((2, 10), np.float32))


# ---------------------------------------------------------------- records and errors


def test_offload_fields_in_json(mixed: Engine, digits) -> None:
    plain = mixed.run(digits.x[0])
    assert "offload" not in plain.to_json()  # local runs print what they always printed
    state = mixed.run_until(digits.x[0], 0, early_exit=False)
    info = OffloadInfo(boundary=0, codec="int8", model="m", fallback=True, reason="UNAVAILABLE", attempts=1,
                       bytes_sent=300, transfer_ms=0.123456)  # fmt: skip
    from dataclasses import replace

    row = json.loads(json.dumps(replace(mixed.resume(state), offload=info).to_json()))
    assert row["offload"] == {
        "offloaded": False,
        "fallback": True,
        "reason": "UNAVAILABLE",
        "server": None,
        "boundary": 0,
        "codec": "int8",
        "model": "m",
        "bytes_sent": 300,
        "transfer_ms": 0.1235,
        "queue_ms": None,
        "compute_ms": None,
        "server_ms": None,
        "batch": 1,
        "attempts": 1,
        "shed": False,
        "expected_server_ms": None,
    }


@pytest.mark.parametrize("boundary", [-2, 2, 7, True, 1.0, "1"])
def test_a_boundary_without_a_later_segment_is_refused(mixed: Engine, digits, boundary: object) -> None:
    with pytest.raises(EdgeExitError, match=r"expected a boundary with a later segment \(0\.\.1, or -1"):
        mixed.run_until(digits.x[0], boundary)  # type: ignore[arg-type]
    with pytest.raises(EdgeExitError, match=r"0\.\.1"):
        mixed.run_batch_until(digits.x[:2], boundary)  # type: ignore[arg-type]


def test_resume_refuses_a_batch_and_a_foreign_tensor(mixed: Engine, digits) -> None:
    progress = mixed.run_batch_until(digits.x[:4], 0, early_exit=False)
    with pytest.raises(EdgeExitError, match="use resume_batch"):
        mixed.resume(progress.pending)
    state = mixed.run_until(digits.x[0], 0, early_exit=False)
    from dataclasses import replace

    foreign = replace(state, hidden=np.zeros((1, 3, 2, 2), np.float32))
    with pytest.raises(EdgeExitError, match=r"shape \(1, 3, 2, 2\).*another package"):
        mixed.resume(foreign)


def test_the_runtime_never_imports_grpc(digits_package: Path) -> None:
    script = (
        "import sys; from edgeexit.runtime import Engine; import numpy as np\n"
        f"e = Engine({str(digits_package)!r}, cache_dir=None)\n"
        "s = e.run_until(np.zeros((1, 8, 8), np.float32), 0, early_exit=False); e.resume(s)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'torch', 'onnx')))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
