"""The early-exit engine on real ONNX Runtime sessions, checked against the torch model it was exported from.

Every expectation is computed independently: from torch (``digits_model``) or from a small numpy
reimplementation of the exit criteria over ``run_full`` outputs, never from the engine itself.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeexit.errors import EdgeExitError, InputError, PackageError
from edgeexit.manifest import CRITERION_NAMES, NEVER_THRESHOLD
from edgeexit.package import open_package
from edgeexit.runtime import Engine, FullDepth, Result

N_RUN = 200  # samples checked one at a time against torch
N_BATCH = 300  # samples checked in batches
BORDER = 1e-4  # a score this close to its threshold may fall either way between torch and ORT float32


# ---------------------------------------------------------------- helpers and fixtures


def _softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _scores(criterion: str, logits: list[np.ndarray], similarity: list[np.ndarray], temperature: float = 1.0):
    """Per-exit scores of one criterion, reimplemented here in numpy (not via edgeexit.criteria)."""
    out = []
    for k, lg in enumerate(logits):
        p = _softmax(lg, temperature)
        if criterion == "max_prob":
            out.append(p.max(axis=-1))
        elif criterion == "margin":
            top = np.sort(p, axis=-1)
            out.append(top[:, -1] - top[:, -2])
        elif criterion == "entropy":
            h = -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=-1)
            out.append(1.0 - h / math.log(p.shape[-1]))
        elif criterion == "patience":
            preds = [x.argmax(axis=-1) for x in logits[: k + 1]]
            run = np.ones(len(lg))
            alive = np.ones(len(lg), bool)
            for earlier in reversed(preds[:-1]):
                alive &= earlier == preds[-1]
                run += alive
            out.append(run)
        elif criterion == "similarity":
            out.append(similarity[k].astype(np.float64))
        else:  # pragma: no cover
            raise AssertionError(criterion)
    return out


def _first_exits(scores: list[np.ndarray], thresholds: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """The first exit whose score reaches its threshold (the last exit always), and a mask of the
    samples whose decision is clear of float noise at every exit that was consulted."""
    n = len(scores[0])
    exits = np.full(n, len(scores) - 1)
    clear = np.ones(n, bool)
    decided = np.zeros(n, bool)
    for k in range(len(scores) - 1):
        pending = ~decided
        clear &= ~(pending & (np.abs(scores[k] - thresholds[k]) < BORDER))
        leaving = pending & (scores[k] >= thresholds[k])
        exits[leaving] = k
        decided |= leaving
    return exits, clear


@pytest.fixture(scope="module")
def engine(digits_package: Path) -> Engine:
    return Engine(digits_package, cache_dir=None)


@pytest.fixture(scope="module")
def torch_outputs(digits_model, digits):
    """Torch's per-exit logits and boundary hidden states for the first N_BATCH digits (eval mode)."""
    import torch

    was_training = digits_model.training
    digits_model.eval()
    try:
        with torch.no_grad():
            outputs, hidden = digits_model(torch.from_numpy(digits.x[:N_BATCH]), return_hidden=True)
    finally:
        digits_model.train(was_training)
    return [o.numpy().copy() for o in outputs], [h.numpy().copy() for h in hidden]


@pytest.fixture(scope="module")
def full(engine: Engine, digits) -> FullDepth:
    return engine.run_full(digits.x[:N_BATCH], timing_samples=8)


def _same(a: Result, b: Result) -> None:
    assert a.exit == b.exit
    assert a.prediction == b.prediction
    assert a.label == b.label
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)


# ---------------------------------------------------------------- 1. run() against torch


def test_run_matches_torch_sample_by_sample(engine: Engine, digits, torch_outputs) -> None:
    logits, _ = torch_outputs
    probs = [_softmax(lg[:N_RUN]) for lg in logits]
    thresholds = [spec.threshold for spec in engine.manifest.exits]
    assert engine.manifest.exits[-1].final
    expected, clear = _first_exits([p.max(axis=-1) for p in probs], thresholds)
    assert clear.sum() >= N_RUN - 5  # almost nothing sits on a threshold
    for i in range(N_RUN):
        result = engine.run(digits.x[i])
        assert isinstance(result, Result)
        if clear[i]:
            assert result.exit == expected[i], f"sample {i}"
        k = result.exit
        assert result.prediction == int(np.argmax(logits[k][i])), f"sample {i} at exit {k}"
        assert result.label == engine.manifest.labels[result.prediction]
        assert result.probabilities.dtype == np.float32
        assert result.probabilities.shape == (10,)
        assert float(result.probabilities.sum()) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(result.probabilities, probs[k][i], atol=1e-4)
        assert result.score == pytest.approx(float(probs[k][i].max()), abs=1e-4)
        assert len(result.segment_ms) == k + 1  # one timing per segment that ran
        assert all(t >= 0 for t in result.segment_ms)
        assert result.latency_ms >= sum(result.segment_ms) * 0.5
        assert result.hidden is None


def test_run_accepts_a_sample_with_or_without_the_batch_axis(engine: Engine, digits) -> None:
    for i in range(5):
        assert digits.x[i].shape == (1, 8, 8)
        without = engine.run(digits.x[i])  # C, H, W
        with_axis = engine.run(digits.x[i : i + 1])  # (1, 1, 8, 8)
        _same(without, with_axis)


def test_run_does_not_modify_its_input(engine: Engine, digits) -> None:
    x = digits.x[:1].copy()
    engine.run(x)
    np.testing.assert_array_equal(x, digits.x[:1])


def test_keep_hidden_returns_the_boundary_tensor_torch_computes(digits_package: Path, digits, torch_outputs) -> None:
    _, hidden = torch_outputs
    for threshold, boundary in ((0.0, 0), (1.01, None)):
        engine = Engine(digits_package, cache_dir=None, threshold=threshold)
        for i in range(4):
            result = engine.run(digits.x[i], keep_hidden=True)
            if boundary is None:  # reached the final exit: the last segment has no hidden output
                assert result.exit == engine.num_exits - 1
                assert result.hidden is None or result.hidden.shape[1:] == hidden[-1].shape[1:]
                continue
            assert result.exit == boundary
            assert result.hidden is not None
            assert result.hidden.shape == (1, *hidden[boundary].shape[1:])
            np.testing.assert_allclose(result.hidden[0], hidden[boundary][i], atol=1e-4)


def test_keep_hidden_at_a_middle_exit(digits_package: Path, digits, torch_outputs) -> None:
    logits, hidden = torch_outputs
    # a threshold no exit-0 sample reaches but most exit-1 samples do: stop at exit 1
    top0 = _softmax(logits[0]).max(axis=-1)
    top1 = _softmax(logits[1]).max(axis=-1)
    threshold = float(top0.max()) + 1e-3
    picks = np.flatnonzero(top1 >= threshold + BORDER)[:4]
    if len(picks) == 0:
        pytest.skip("this training run left no sample confident at exit 1 above every exit-0 score")
    engine = Engine(digits_package, cache_dir=None, threshold=threshold)
    for i in picks:
        result = engine.run(digits.x[i], keep_hidden=True)
        assert result.exit == 1
        np.testing.assert_allclose(result.hidden[0], hidden[1][i], atol=1e-4)


def test_kept_hidden_is_not_overwritten_by_the_next_run(digits_package: Path, digits) -> None:
    """run() reuses bound buffers between calls; a Result must own its hidden tensor."""
    engine = Engine(digits_package, cache_dir=None, threshold=0.0)
    first = engine.run(digits.x[0], keep_hidden=True)
    snapshot = first.hidden.copy()
    second = engine.run(digits.x[1], keep_hidden=True)
    assert not np.array_equal(snapshot, second.hidden)
    np.testing.assert_array_equal(first.hidden, snapshot)
    assert not np.shares_memory(first.hidden, second.hidden)


def test_results_of_run_are_independent_of_later_runs(engine: Engine, digits) -> None:
    first = engine.run(digits.x[0])
    probabilities = first.probabilities.copy()
    engine.run(digits.x[1])
    np.testing.assert_array_equal(first.probabilities, probabilities)


def test_a_run_gives_a_real_frozen_result(engine: Engine, digits) -> None:
    """The walks build Results without the dataclass __init__ (the hot path): they must still be
    whole, frozen Results with every field."""
    result = engine.run(digits.x[0])
    assert isinstance(result, Result)
    assert set(vars(result)) == {f.name for f in dataclasses.fields(Result)}
    assert result.decisions == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.exit = 0  # type: ignore[misc]
    assert vars(dataclasses.replace(result)).keys() == vars(result).keys()


def test_full_depth_one_at_a_time_matches_torch_and_times_every_segment(
    digits_package: Path, digits, torch_outputs
) -> None:
    """No exit can stop a sample before the last: the walk runs the segments back to back."""
    logits, _ = torch_outputs
    engine = Engine(digits_package, cache_dir=None, threshold=math.inf)
    for i in range(50):
        result = engine.run(digits.x[i])
        assert result.exit == engine.num_exits - 1
        assert result.prediction == int(logits[-1][i].argmax())
        np.testing.assert_allclose(result.probabilities, _softmax(logits[-1][i]), atol=1e-4)
        assert len(result.segment_ms) == len(engine.segments)
        assert all(ms > 0 for ms in result.segment_ms)
        assert result.latency_ms >= sum(result.segment_ms)


def test_full_depth_reads_the_graphs_answer_as_numpy_would_compute_it(
    digits_package: Path, package_copy: Path, digits
) -> None:
    """The full-depth path reads the final exit's Result straight from the graph's outputs
    (logits, score, probabilities); a package whose manifest names no probabilities output (as
    exported before them) computes it in numpy: the same Results."""
    package = open_package(package_copy)
    manifest = package.manifest
    legacy = tuple(dataclasses.replace(s, temperature_input=None, probabilities=None) for s in manifest.exits)
    package.save_manifest(manifest.with_exits(legacy, manifest.calibration))
    graph = Engine(digits_package, cache_dir=None, threshold=math.inf)
    numpy_path = Engine(package_copy, cache_dir=None, threshold=math.inf)
    assert graph._scorer.graph_answer is not None
    assert numpy_path._scorer.graph_answer is None
    for x in digits.x[:20]:
        a, b = graph.run(x), numpy_path.run(x)
        assert (a.prediction, a.label, a.exit, a.offload, a.decisions) == (b.prediction, b.label, b.exit, None, ())
        assert a.score == pytest.approx(b.score, abs=1e-5)
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
        assert len(a.segment_ms) == len(b.segment_ms) == len(graph.segments)


def test_to_json_is_plain_json(engine: Engine, digits) -> None:
    row = engine.run(digits.x[0]).to_json()
    assert json.loads(json.dumps(row)) == row
    assert set(row) >= {"prediction", "label", "exit", "score", "probabilities", "latency_ms", "segment_ms"}


# ---------------------------------------------------------------- 2. batched early exit


def test_run_batch_matches_run_in_input_order(engine: Engine, digits) -> None:
    xs = digits.x[:N_BATCH]
    singles = [engine.run(x) for x in xs]
    batched = engine.run_batch(xs)
    assert len(batched) == N_BATCH
    for single, result in zip(singles, batched, strict=True):
        _same(single, result)
        assert len(result.segment_ms) == result.exit + 1
    chunked = engine.run_batch(xs, batch_size=32)
    assert len(chunked) == N_BATCH
    for single, result in zip(singles, chunked, strict=True):
        _same(single, result)


def test_run_batch_of_one_and_of_an_odd_size(engine: Engine, digits) -> None:
    one = engine.run_batch(digits.x[:1])
    assert len(one) == 1
    _same(one[0], engine.run(digits.x[0]))
    odd = engine.run_batch(digits.x[:7], batch_size=3)  # chunks of 3, 3, 1
    for i, result in enumerate(odd):
        _same(result, engine.run(digits.x[i]))


def test_run_batch_compacts_the_survivors(
    digits_package: Path, digits, full: FullDepth, monkeypatch: pytest.MonkeyPatch
) -> None:
    xs = digits.x[:N_BATCH]
    # a threshold at the median exit-0 confidence: about half the batch leaves at exit 0
    top0 = _softmax(full.logits[0]).max(axis=-1)
    threshold = float(np.median(top0))
    engine = Engine(digits_package, cache_dir=None, threshold=threshold)
    singles = [engine.run(x) for x in xs]

    rows: dict[int, list[int]] = {k: [] for k in range(len(engine.segments))}
    for k, segment in enumerate(engine.segments):
        real_run = segment.run

        def counting_run(x: np.ndarray, context=None, _k: int = k, _run=real_run) -> dict[str, np.ndarray]:
            rows[_k].append(len(x))
            return _run(x, context)

        monkeypatch.setattr(segment, "run", counting_run)
    results = engine.run_batch(xs)

    exits = np.array([r.exit for r in results])
    early = int((exits == 0).sum())
    assert 0.3 * N_BATCH <= early <= 0.7 * N_BATCH
    assert rows[0] == [N_BATCH]
    assert rows[1] == [N_BATCH - early]  # only the survivors went on
    assert sum(rows[2]) == int((exits == 2).sum())
    for single, result in zip(singles, results, strict=True):
        _same(single, result)
    # the late samples (carried on after compaction) still get their own answers
    late = np.flatnonzero(exits > 0)
    for i in late:
        k = results[i].exit
        assert results[i].prediction == int(np.argmax(full.logits[k][i]))
        assert len(results[i].segment_ms) == k + 1
    for i in np.flatnonzero(exits == 0):
        assert len(results[i].segment_ms) == 1


def test_threshold_zero_stops_everything_at_the_first_exit(digits_package: Path, digits, torch_outputs) -> None:
    logits, _ = torch_outputs
    engine = Engine(digits_package, cache_dir=None, threshold=0.0)
    results = engine.run_batch(digits.x[:N_BATCH])
    assert {r.exit for r in results} == {0}
    assert [r.prediction for r in results] == [int(p) for p in logits[0].argmax(axis=-1)]


def test_threshold_above_one_runs_everything_to_full_depth(digits_package: Path, digits, torch_outputs) -> None:
    logits, _ = torch_outputs
    engine = Engine(digits_package, cache_dir=None, threshold=1.01)
    results = engine.run_batch(digits.x[:N_BATCH], batch_size=64)
    final = engine.num_exits - 1
    assert {r.exit for r in results} == {final}
    assert [r.prediction for r in results] == [int(p) for p in logits[-1].argmax(axis=-1)]
    for r, lg in zip(results, logits[-1], strict=True):
        np.testing.assert_allclose(r.probabilities, _softmax(lg), atol=1e-4)
        assert len(r.segment_ms) == len(engine.segments)


@pytest.mark.parametrize("criterion", ["max_prob", "patience"])
@pytest.mark.parametrize("never", [math.inf, NEVER_THRESHOLD])
def test_a_never_threshold_answers_as_an_unreachable_one(
    digits_package: Path, digits, criterion: str, never: float
) -> None:
    # inf and the manifest's "never" skip scoring the early exits; the answers must be those of
    # a threshold that is scored but never reached (patience still keeps its history)
    unreachable = Engine(digits_package, cache_dir=None, criterion=criterion, threshold=1e8)
    skipped = Engine(digits_package, cache_dir=None, criterion=criterion, threshold=never)
    xs = digits.x[:60]
    for results in (skipped.run_batch(xs, batch_size=16), [skipped.run(x) for x in xs]):
        for got, want in zip(results, unreachable.run_batch(xs), strict=True):
            assert (got.exit, got.prediction, got.score) == (want.exit, want.prediction, want.score)
            np.testing.assert_array_equal(got.probabilities, want.probabilities)


def test_run_batch_keep_hidden_matches_run(digits_package: Path, digits) -> None:
    engine = Engine(digits_package, cache_dir=None, threshold=0.0)
    batched = engine.run_batch(digits.x[:5], keep_hidden=True)
    for i, result in enumerate(batched):
        single = engine.run(digits.x[i], keep_hidden=True)
        assert result.hidden.shape == single.hidden.shape
        np.testing.assert_allclose(result.hidden, single.hidden, atol=1e-5)


# ---------------------------------------------------------------- 3. criteria overrides


def _check_exits(engine: Engine, xs: np.ndarray, expected: np.ndarray, clear: np.ndarray) -> list[Result]:
    results = engine.run_batch(xs)
    got = np.array([r.exit for r in results])
    np.testing.assert_array_equal(got[clear], expected[clear])
    singles = np.array([engine.run(x).exit for x in xs[:40]])
    np.testing.assert_array_equal(singles[clear[:40]], expected[:40][clear[:40]])
    return results


@pytest.mark.parametrize("criterion", ["max_prob", "margin", "entropy"])
def test_confidence_criterion_override(digits_package: Path, digits, full: FullDepth, criterion: str) -> None:
    scores = _scores(criterion, list(full.logits), list(full.similarity))
    # the median exit-1 score: a threshold that splits the samples between exits 1 and 2
    threshold = float(np.median(scores[1]))
    engine = Engine(digits_package, cache_dir=None, criterion=criterion, threshold=threshold)
    assert [r.criterion for r in engine.rules[:-1]] == [criterion] * (engine.num_exits - 1)
    assert [r.threshold for r in engine.rules[:-1]] == [threshold] * (engine.num_exits - 1)
    assert engine.rules[-1].final
    expected, clear = _first_exits(scores, [threshold] * len(scores))
    assert len(set(expected.tolist())) >= 2
    results = _check_exits(engine, digits.x[:N_BATCH], expected, clear)
    for i in np.flatnonzero(clear)[:50]:
        k = results[i].exit
        if k < engine.num_exits - 1:
            assert results[i].score == pytest.approx(float(scores[k][i]), abs=1e-4)
            assert results[i].score >= threshold


def test_confidence_criteria_agree_with_the_criteria_module(full: FullDepth) -> None:
    from edgeexit.criteria import Boundary, create_criterion

    for name in ("max_prob", "margin", "entropy", "patience"):
        mine = _scores(name, list(full.logits), list(full.similarity))
        history: list[np.ndarray] = []
        for k, logits in enumerate(full.logits):
            theirs = create_criterion(name).score(Boundary(logits, history=tuple(history)))
            np.testing.assert_allclose(theirs, mine[k], atol=1e-5, err_msg=f"{name} at exit {k}")
            history.append(logits.argmax(axis=-1))


def test_patience_override_needs_two_agreeing_exits(digits_package: Path, digits, full: FullDepth) -> None:
    preds = [lg.argmax(axis=-1) for lg in full.logits]
    engine = Engine(digits_package, cache_dir=None, criterion="patience", threshold=2)
    results = engine.run_batch(digits.x[:N_BATCH])
    expected = np.where(preds[0] == preds[1], 1, 2)  # exit 0 has no earlier exit to agree with
    got = np.array([r.exit for r in results])
    np.testing.assert_array_equal(got, expected)
    scores = _scores("patience", list(full.logits), list(full.similarity))
    reimplemented, _ = _first_exits(scores, [2.0] * len(scores))
    np.testing.assert_array_equal(got, reimplemented)
    singles = np.array([engine.run(x).exit for x in digits.x[:60]])
    np.testing.assert_array_equal(singles, expected[:60])
    for r, i in zip(results, range(N_BATCH), strict=True):
        assert r.prediction == int(preds[r.exit][i])
        if r.exit == 1:
            assert r.score == 2.0


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_similarity_override(digits_package: Path, digits, full: FullDepth, threshold: float) -> None:
    scores = _scores("similarity", list(full.logits), list(full.similarity))
    expected, _ = _first_exits(scores, [threshold] * len(scores))
    engine = Engine(digits_package, cache_dir=None, criterion="similarity", threshold=threshold)
    results = engine.run_batch(digits.x[:N_BATCH])
    np.testing.assert_array_equal([r.exit for r in results], expected)
    singles = [engine.run(x).exit for x in digits.x[:30]]
    np.testing.assert_array_equal(singles, expected[:30])


def test_unknown_criterion_lists_the_known_ones(digits_package: Path) -> None:
    with pytest.raises(EdgeExitError, match="unknown criterion 'confidence'") as caught:
        Engine(digits_package, cache_dir=None, criterion="confidence")
    for name in CRITERION_NAMES:
        assert name in str(caught.value)


@pytest.mark.parametrize(("temperature", "fed"), [(0.5, True), (2.0, True), (2.0, False)])
def test_manifest_temperature_is_applied(
    package_copy: Path, digits, full: FullDepth, temperature: float, fed: bool
) -> None:
    """Fed to the graph as its temperature input (the graph's score is used), or, for a package
    whose manifest predates the input (``fed`` False), applied in numpy: the same decisions."""
    tempered = _scores("max_prob", list(full.logits), list(full.similarity), temperature)
    plain = _scores("max_prob", list(full.logits), list(full.similarity))
    # A threshold halfway between the two scores of the sample the temperature moves most, so
    # that sample's first decision flips whatever the trained weights are.
    moved = int(np.argmax(np.abs(tempered[0] - plain[0])))
    threshold = float(tempered[0][moved] + plain[0][moved]) / 2
    package = open_package(package_copy)
    manifest = package.manifest
    exits = tuple(
        spec if spec.final else dataclasses.replace(spec, temperature=temperature, threshold=threshold)
        for spec in manifest.exits
    )
    if not fed:
        exits = tuple(dataclasses.replace(spec, temperature_input=None, probabilities=None) for spec in exits)
    package.save_manifest(manifest.with_exits(exits, manifest.calibration))

    engine = Engine(package_copy, cache_dir=None)
    assert [r.temperature for r in engine.rules[:-1]] == [temperature] * (engine.num_exits - 1)
    graph_scored = [r.graph_score is not None for r in engine.rules[:-1]]
    assert graph_scored == [fed] * (engine.num_exits - 1)  # unfed, the in-graph score holds at T=1 only

    thresholds = [threshold] * (engine.num_exits - 1) + [0.0]
    expected, clear = _first_exits(tempered, thresholds)
    at_t1, _ = _first_exits(plain, thresholds)
    assert (expected != at_t1).any(), "the temperature must change some decisions for this test to mean anything"
    results = _check_exits(engine, digits.x[:N_BATCH], expected, clear)
    for i in np.flatnonzero(clear)[:50]:
        k = results[i].exit
        t = temperature if k < engine.num_exits - 1 else 1.0
        np.testing.assert_allclose(results[i].probabilities, _softmax(full.logits[k][i], t), atol=1e-5)


def test_new_rules_feed_their_temperature_to_the_bound_graphs(digits_package: Path, digits, full: FullDepth) -> None:
    """The temperature a rule names is what the graph is fed, one sample through the bound chain
    or a batch, also after the rules are replaced (the chain shares the fed array)."""
    engine = Engine(digits_package, cache_dir=None, threshold=math.inf)  # every sample runs to the final exit
    final = engine.num_exits - 1
    for temperature in (1.0, 0.3, 4.0):
        engine.rules = tuple(dataclasses.replace(rule, temperature=temperature) for rule in engine.rules)
        assert engine.rules[final].graph_score is not None  # scored by the graph, not numpy
        expected = _softmax(full.logits[final][:5], temperature)
        single = np.stack([engine.run(x).probabilities for x in digits.x[:5]])
        batched = np.stack([r.probabilities for r in engine.run_batch(digits.x[:5])])
        np.testing.assert_allclose(single, expected, atol=1e-5)
        np.testing.assert_allclose(batched, expected, atol=1e-5)


# ---------------------------------------------------------------- 4. run_full


def test_run_full_outputs(engine: Engine, full: FullDepth, torch_outputs) -> None:
    logits, _ = torch_outputs
    assert full.samples == N_BATCH
    assert len(full.logits) == len(full.similarity) == engine.num_exits
    for k in range(engine.num_exits):
        assert full.logits[k].shape == (N_BATCH, 10)
        np.testing.assert_allclose(full.logits[k], logits[k], atol=1e-4)
        assert full.similarity[k].shape == (N_BATCH,)
        assert np.all(np.abs(full.similarity[k]) <= 1.0 + 1e-6)
    assert len(full.segment_ms) == len(engine.segments)
    assert all(t > 0 for t in full.segment_ms)


def test_run_full_chunks_give_the_same_logits(engine: Engine, digits, full: FullDepth) -> None:
    chunked = engine.run_full(digits.x[:N_BATCH], batch_size=37, timing_samples=2)
    for a, b in zip(chunked.logits, full.logits, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for a, b in zip(chunked.similarity, full.similarity, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


# ---------------------------------------------------------------- 5. bad input


@pytest.mark.parametrize(
    ("x", "pattern"),
    [
        (np.zeros((1, 1, 8, 8), np.float64), "float32"),
        (np.zeros((1, 1, 8, 8), np.uint8), "float32"),
        (np.zeros((1, 3, 8, 8), np.float32), "channel"),
        (np.zeros((3, 8, 8), np.float32), "channel"),
        (np.zeros((1, 1, 9, 8), np.float32), r"expected 8"),
        (np.zeros((1, 1, 8, 16), np.float32), r"expected 8"),
        (np.zeros((8, 8), np.float32), r"expected Nx1x8x8"),
        (np.zeros((1, 1, 1, 8, 8), np.float32), r"expected Nx1x8x8"),
        (np.zeros((2, 1, 8, 8), np.float32), "one sample"),
        ([[0.0] * 8] * 8, "numpy array"),
    ],
)
def test_run_rejects_bad_input(engine: Engine, x: object, pattern: str) -> None:
    with pytest.raises(InputError, match=pattern):
        engine.run(x)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("x", "pattern"),
    [
        (np.zeros((0, 1, 8, 8), np.float32), "empty"),
        (np.zeros((4, 1, 8, 8), np.float64), "float32"),
        (np.zeros((4, 3, 8, 8), np.float32), "channel"),
        (np.zeros((1, 8, 8), np.float32), r"expected Nx1x8x8"),
        (np.zeros((4, 1, 8, 7), np.float32), r"expected 8"),
        ([np.zeros((1, 8, 8), np.float32)], "numpy array"),
    ],
)
def test_run_batch_and_run_full_reject_bad_input(engine: Engine, x: object, pattern: str) -> None:
    with pytest.raises(InputError, match=pattern):
        engine.run_batch(x)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=pattern):
        engine.run_full(x)  # type: ignore[arg-type]


def test_input_errors_are_edgeexit_errors(engine: Engine) -> None:
    with pytest.raises(EdgeExitError):
        engine.run(np.zeros((1, 1, 8, 8), np.float64))


def test_non_contiguous_input_is_accepted(engine: Engine, digits) -> None:
    xs = np.asfortranarray(digits.x[:10])
    assert not xs.flags.c_contiguous
    for a, b in zip(engine.run_batch(xs), engine.run_batch(np.ascontiguousarray(xs)), strict=True):
        _same(a, b)
    _same(engine.run(xs[3]), engine.run(digits.x[3]))


def test_an_altered_package_is_refused_at_construction(package_copy: Path) -> None:
    graph = package_copy / "segments" / "1.onnx"
    graph.write_bytes(graph.read_bytes() + b"\x00")
    with pytest.raises(PackageError, match=r"1\.onnx.*altered"):
        Engine(package_copy, cache_dir=None)


def test_a_missing_package_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="does not exist"):
        Engine(tmp_path / "nowhere", cache_dir=None)


# ---------------------------------------------------------------- 9. no torch on the device


def test_engine_runs_without_importing_torch_or_onnx(digits_package: Path, tmp_path: Path) -> None:
    script = f"""
import json, sys
import numpy as np
from edgeexit.runtime import Engine
engine = Engine({str(digits_package)!r}, cache_dir=None)
result = engine.run(np.zeros((1, 8, 8), np.float32))
batch = engine.run_batch(np.zeros((3, 1, 8, 8), np.float32))
print(json.dumps({{
    "exit": result.exit,
    "batch": len(batch),
    "torch": "torch" in sys.modules,
    "onnx": "onnx" in sys.modules,
    "loaded": sorted(m for m in sys.modules if m == "onnx" or m.startswith(("torch", "onnx."))),
}}))
"""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["batch"] == 3
    assert 0 <= report["exit"] < 3
    assert report["torch"] is False, report["loaded"]
    assert report["onnx"] is False, report["loaded"]
    assert report["loaded"] == []
