"""``Engine.advance``: carrying one pending sample on to a later boundary, nothing recomputed, so a
policy can decide boundary by boundary. Stepping with "continue" everywhere is exactly ``run``;
advancing to k2 is exactly ``run_until(x, k2)``."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgeexit.errors import EdgeExitError
from edgeexit.runtime import Engine, Pending, Result

N = 120


def _same(a: Result, b: Result) -> None:
    assert (a.exit, a.prediction, a.label) == (b.exit, b.prediction, b.label)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    assert a.score == b.score
    assert len(a.segment_ms) == len(b.segment_ms)
    assert (a.hidden is None) == (b.hidden is None)
    if a.hidden is not None:
        np.testing.assert_array_equal(a.hidden, b.hidden)


@pytest.fixture(scope="module")
def mixed(digits_package: Path, digits, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """Per-exit thresholds that make every exit answer some samples."""
    from edgeexit.package import open_package

    target = tmp_path_factory.mktemp("advance") / "pkg"
    shutil.copytree(digits_package, target)
    package = open_package(target)
    full = Engine(package, cache_dir=None).run_full(digits.x[:N], timing_samples=1)

    def top(lg: np.ndarray) -> np.ndarray:
        e = np.exp(lg - lg.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True)).max(1)

    exits = list(package.manifest.exits)
    for k, quantile in ((0, 0.7), (1, 0.5)):
        exits[k] = replace(exits[k], criterion="max_prob", threshold=float(np.quantile(top(full.logits[k]), quantile)))
    package.save_manifest(package.manifest.with_exits(tuple(exits), package.manifest.calibration))
    return Engine(target, cache_dir=None)


def _step(engine: Engine, x: np.ndarray, **kwargs: bool) -> tuple[Result, list[int]]:
    """run_until(x, 0) → advance → ... → resume, continuing at every boundary."""
    last = len(engine.segments) - 2
    state = engine.run_until(x, 0, **kwargs)
    visited = []
    while isinstance(state, Pending):
        visited.append(state.boundary)
        if state.boundary == last:
            return engine.resume(state), visited
        state = engine.advance(state, state.boundary + 1)
    return state, visited


@pytest.mark.parametrize("keep_hidden", [False, True])
def test_stepping_boundary_by_boundary_equals_run(mixed: Engine, digits, keep_hidden: bool) -> None:
    reached = set()
    for x in digits.x[:N]:
        stepped, visited = _step(mixed, x, keep_hidden=keep_hidden)
        expected = mixed.run(x, keep_hidden=keep_hidden)
        _same(stepped, expected)
        assert visited == list(range(min(expected.exit, len(mixed.segments) - 1)))
        reached.add(expected.exit)
    assert reached == {0, 1, 2}  # every path ran


def test_stepping_without_early_exit_reaches_full_depth(mixed: Engine, digits) -> None:
    full = Engine(mixed.package, cache_dir=None, threshold=1.01)
    for x in digits.x[:20]:
        stepped, visited = _step(mixed, x, early_exit=False)
        assert visited == [0, 1]
        assert stepped.exit == 2
        np.testing.assert_allclose(stepped.probabilities, full.run(x).probabilities, atol=1e-6)


def test_advance_equals_run_until_the_later_boundary(mixed: Engine, digits) -> None:
    pending = 0
    for x in digits.x[:N]:
        state = mixed.run_until(x, 0)
        if isinstance(state, Result):
            continue
        advanced = mixed.advance(state, 1)
        direct = mixed.run_until(x, 1)
        assert type(advanced) is type(direct)
        if isinstance(direct, Result):
            _same(advanced, direct)  # type: ignore[arg-type]
            continue
        pending += 1
        assert isinstance(advanced, Pending)
        assert advanced.boundary == direct.boundary == 1
        np.testing.assert_array_equal(advanced.hidden, direct.hidden)
        assert len(advanced.segment_ms) == len(direct.segment_ms) == 2
        assert advanced.started == state.started  # latency counts from the original start
        # offloading after advancing: the tail's logits give the same Results
        logits = np.random.default_rng(0).normal(size=(1, mixed.manifest.num_classes)).astype(np.float32)
        _same(mixed.tail_results(advanced, logits)[0], mixed.tail_results(direct, logits)[0])
        _same(mixed.resume(advanced), mixed.resume(direct))
    assert pending > 0


def test_advance_keeps_the_pending_settings_unless_told(mixed: Engine, digits) -> None:
    state = mixed.run_until(digits.x[0], 0, early_exit=False)
    assert isinstance(state, Pending)
    advanced = mixed.advance(state, 1)
    assert isinstance(advanced, Pending)
    assert advanced.early_exit is False


def test_advance_refuses_what_it_cannot_do(mixed: Engine, digits) -> None:
    state = mixed.run_until(digits.x[0], 1, early_exit=False)
    assert isinstance(state, Pending)
    with pytest.raises(EdgeExitError, match="expected a later one"):
        mixed.advance(state, 1)
    with pytest.raises(EdgeExitError, match="cannot be split at"):
        mixed.advance(state, 2)
    batch = mixed.run_batch_until(digits.x[:4], 0, early_exit=False).pending
    assert batch is not None
    with pytest.raises(EdgeExitError, match="one sample"):
        mixed.advance(batch, 1)


def test_a_batch_stepped_boundary_by_boundary_equals_run_batch(mixed: Engine, digits) -> None:
    """run_batch_until(xs, 0) → advance_batch → ... → resume_batch answers every sample as run_batch
    does, each by its input row, whichever boundary it left at."""
    xs = digits.x[:N]
    expected = mixed.run_batch(xs)
    progress = mixed.run_batch_until(xs, 0)
    found = {i: r for i, r in enumerate(progress.results) if r is not None}
    pending = progress.pending
    last = len(mixed.segments) - 2
    while pending is not None and pending.boundary < last:
        done, pending = mixed.advance_batch(pending, pending.boundary + 1)
        assert not set(done) & set(found)  # each sample answered once
        found.update(done)
    if pending is not None:
        found.update(zip(pending.rows, mixed.resume_batch(pending), strict=True))
    assert sorted(found) == list(range(N))
    assert {r.exit for r in expected} == set(range(len(mixed.segments)))  # every exit answers some samples
    for i, result in found.items():
        _same(result, expected[i])
    with pytest.raises(EdgeExitError, match="cannot advance from boundary 1 to boundary 0"):
        mixed.advance_batch(mixed.run_batch_until(xs, 1).pending, 0)
