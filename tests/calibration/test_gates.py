"""The ``learned`` criterion: a gate per exit trained to predict agreement with the final exit.

Its numpy score and the exported graph's must agree op for op; the fit must learn what a fixed
confidence rule cannot (that one class is unsafe at any confidence); calibration must train the
gates only on the samples that never choose or test a threshold; and the engine must feed the
trained weights to the graph, so the in-graph score and numpy's make the same decisions.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeexit.calibration import calibrate_manifest, fit_gate, manifest_scores
from edgeexit.calibration.gates import gate_share
from edgeexit.calibration.risk_control import ordering_split
from edgeexit.criteria import Boundary, create_criterion, softmax
from edgeexit.criteria.learned import (
    GATE_HIDDEN,
    GATE_MAX_CLASSES,
    gate_arrays,
    gate_feature_count,
    gate_features,
    gate_score,
)
from edgeexit.data import LabelledData
from edgeexit.fileio import atomic_write_text
from edgeexit.manifest import MANIFEST_FILE, ExitGate, Manifest
from edgeexit.runtime import Engine
from edgeexit.runtime.results import FullDepth


def _random_gate(features: int, seed: int = 0) -> ExitGate:
    rng = np.random.default_rng(seed)
    return ExitGate(
        w1=tuple(map(tuple, rng.normal(0, 1, (features, GATE_HIDDEN)).astype(np.float32).tolist())),
        b1=tuple(rng.normal(0, 1, GATE_HIDDEN).astype(np.float32).tolist()),
        w2=tuple(rng.normal(0, 1, GATE_HIDDEN).astype(np.float32).tolist()),
        b2=0.25,
        samples=1,
    )


@pytest.mark.parametrize("classes", [1, 2, 10, GATE_MAX_CLASSES + 8])
def test_the_numpy_gate_and_the_graphs_gate_agree(classes: int) -> None:
    torch = pytest.importorskip("torch")
    from edgeexit.compile.graphs import GATE_BUFFERS, GateScore

    rng = np.random.default_rng(classes)
    probabilities = softmax(rng.normal(0, 3, (64, classes)).astype(np.float32))
    gate = _random_gate(gate_feature_count(classes))
    module = GateScore(classes)
    for name, array in zip(GATE_BUFFERS, gate_arrays(gate), strict=True):
        getattr(module, name).copy_(torch.from_numpy(array))
    with torch.no_grad():
        expected = module(torch.from_numpy(probabilities)).numpy()
    found = gate_score(gate_features(probabilities), gate_arrays(gate))
    assert found.dtype == np.float32
    np.testing.assert_allclose(found, expected, atol=2e-6)


def test_an_untrained_gate_scores_one_half_and_never_exits() -> None:
    logits = np.array([[9.0, 0.0, 0.0], [0.0, 0.1, 0.0]], np.float32)
    score = create_criterion("learned").score(Boundary(logits))
    assert score.tolist() == [0.5, 0.5]


def test_a_gate_for_other_classes_says_to_recalibrate() -> None:
    gate = _random_gate(gate_feature_count(10))
    with pytest.raises(ValueError, match="recalibrate the package"):
        create_criterion("learned").score(Boundary(np.zeros((2, 3), np.float32), gate=gate))


def test_the_gate_learns_what_a_confidence_rule_cannot() -> None:
    """An exit that is confidently wrong on one class: max_prob cannot tell those samples apart,
    the gate (which sees the class probabilities) learns to distrust that class."""
    rng = np.random.default_rng(0)
    samples, classes = 4000, 5
    answer = rng.integers(0, classes, samples)
    logits = rng.normal(0, 1, (samples, classes)).astype(np.float32)
    logits[np.arange(samples), answer] += rng.uniform(0, 6, samples).astype(np.float32)
    confidence = softmax(logits).max(axis=-1)
    agree = rng.random(samples) < confidence  # confident answers agree more often...
    agree[answer == 3] = rng.random(int((answer == 3).sum())) < 0.2  # ...except class 3's
    train, test = np.arange(samples) < 3000, np.arange(samples) >= 3000
    gate = fit_gate(logits[train], 1.0, agree[train])
    assert gate.samples == 3000
    assert len(gate.w1) == gate_feature_count(classes)
    learned = gate_score(gate_features(softmax(logits[test])), gate_arrays(gate))
    assert ((learned > 0) & (learned < 1)).all()
    assert _auc(learned, agree[test]) > _auc(confidence[test], agree[test]) + 0.1


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted half."""
    pos, neg = score[positive], score[~positive]
    greater = (pos[:, None] > neg[None, :]).mean()
    return float(greater + 0.5 * (pos[:, None] == neg[None, :]).mean())


@pytest.fixture(scope="module")
def digits_full(digits_package: Path, digits: LabelledData) -> tuple[Manifest, FullDepth, np.ndarray]:
    engine = Engine(digits_package, cache_dir=None)
    return engine.manifest, engine.run_full(digits.x), digits.y


def test_calibration_trains_the_gates_on_their_own_share_only(
    digits_full: tuple[Manifest, FullDepth, np.ndarray],
) -> None:
    manifest, full, y = digits_full
    calibrated, choice = calibrate_manifest(manifest, full, y, criterion="learned", max_drop=0.02, data_sha256="",
                                            seed=3)  # fmt: skip
    train = gate_share(full.samples, 3)
    ordering, test = ordering_split(full.samples, 3)
    assert train.size == ordering.size // 2
    assert set(train) <= set(ordering)
    exits = calibrated.exits
    assert [spec.criterion for spec in exits] == ["learned", "learned", "max_prob"]
    assert all(spec.gate is not None and spec.gate.samples == train.size for spec in exits[:-1])
    assert exits[-1].gate is None
    # the thresholds were chosen on the other samples: the recorded outcome counts those
    assert choice.outcome.samples == full.samples - train.size
    # what the test share holds moves no gate (nor the temperatures): scramble its logits, the gates stay
    rest = test
    scrambled = FullDepth(
        logits=tuple(_scramble(z, rest) for z in full.logits), similarity=full.similarity, segment_ms=full.segment_ms
    )
    again, _ = calibrate_manifest(manifest, scrambled, y, criterion="learned", max_drop=0.02, data_sha256="", seed=3)
    assert [spec.gate for spec in again.exits] == [spec.gate for spec in exits]
    # and the manifest round-trips its gates through JSON
    assert Manifest.from_json(calibrated.to_json()).exits == exits


def _scramble(logits: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    if logits is None:
        return None
    out = logits.copy()
    out[rows] = np.random.default_rng(0).permutation(out[rows])
    return out


def test_learned_gates_take_a_certified_threshold_and_a_compute_budget(
    digits_full: tuple[Manifest, FullDepth, np.ndarray],
) -> None:
    manifest, full, y = digits_full
    certified, _ = calibrate_manifest(manifest, full, y, criterion="learned", max_drop=0.05, delta=0.1,
                                      data_sha256="")  # fmt: skip
    record = certified.calibration
    assert record is not None
    assert record.method == "ltt"
    assert record.guarantee is not None
    assert record.guarantee.tested == full.samples - round(0.3 * full.samples)
    if record.guarantee.certified:
        assert record.guarantee.bound <= 0.05
    full = dataclasses.replace(full, segment_ms=(1.0,) * len(full.segment_ms))  # no timing in the verdict
    full_ms = sum(full.segment_ms)
    budget, choice = calibrate_manifest(manifest, full, y, criterion="learned", max_drop=0.0, data_sha256="",
                                        budget_ms=0.6 * full_ms)  # fmt: skip
    assert choice.outcome.expected_ms <= 0.6 * full_ms
    assert budget.calibration is not None
    assert budget.calibration.method == "budget"
    scores = manifest_scores(budget.exits, full)
    assert scores.shape == (3, full.samples)
    assert np.isfinite(scores[:-1]).all()


@pytest.fixture(scope="module")
def learned_package(tmp_path_factory: pytest.TempPathFactory, digits_model, digits: LabelledData) -> Path:
    """The digits model exported with the gate inside every early exit's graph."""
    from edgeexit.compile.export import export

    out = tmp_path_factory.mktemp("learned") / "digits"
    export(digits_model, (1, 1, 8, 8), out, labels=digits.labels, sample=digits.x[:8], criterion="learned", codecs=())
    return out


def test_an_exported_learned_package_runs_full_depth_until_calibrated(
    learned_package: Path, digits: LabelledData
) -> None:
    manifest = Engine(learned_package, cache_dir=None).manifest
    early = manifest.exits[:-1]
    assert [spec.criterion for spec in manifest.exits] == ["learned", "learned", "max_prob"]
    assert all(spec.gate is None and len(spec.gate_inputs) == 4 for spec in early)
    engine = Engine(learned_package, cache_dir=None)
    assert all(rule.graph_score for rule in engine.rules[:-1])  # the graph's own (untrained) gate
    results = [engine.run(digits.x[i : i + 1]) for i in range(20)]
    assert {r.exit for r in results} == {2}


def test_the_engine_feeds_the_trained_gate_to_the_graph(
    learned_package: Path, digits: LabelledData, tmp_path: Path
) -> None:
    package = tmp_path / "pkg"
    shutil.copytree(learned_package, package)
    engine = Engine(package, cache_dir=None)
    calibrated, _ = calibrate_manifest(engine.manifest, engine.run_full(digits.x), digits.y, criterion="learned",
                                       max_drop=0.02, data_sha256="")  # fmt: skip
    atomic_write_text(package / MANIFEST_FILE, calibrated.to_json())
    in_graph = Engine(package, cache_dir=None)
    assert all(rule.graph_score and rule.gate is not None for rule in in_graph.rules[:-1])
    in_numpy = Engine(package, cache_dir=None)
    in_numpy.rules = tuple(dataclasses.replace(rule, graph_score=None) for rule in in_numpy.rules)
    x = digits.x[:300]
    graph_results = [in_graph.run(x[i : i + 1]) for i in range(len(x))]
    numpy_results = [in_numpy.run(x[i : i + 1]) for i in range(len(x))]
    assert [r.exit for r in graph_results] == [r.exit for r in numpy_results]
    assert len({r.exit for r in graph_results}) > 1  # the trained gates do exit
    scores = np.array([[a.score, b.score] for a, b in zip(graph_results, numpy_results, strict=True)])
    np.testing.assert_allclose(scores[:, 0], scores[:, 1], atol=1e-5)
    batch = in_graph.run_batch(x[:64])
    assert [r.exit for r in batch] == [r.exit for r in graph_results[:64]]


def test_a_manifest_with_a_misshapen_gate_is_refused(digits_full: tuple[Manifest, FullDepth, np.ndarray]) -> None:
    from edgeexit.errors import PackageError

    manifest, full, y = digits_full
    calibrated, _ = calibrate_manifest(manifest, full, y, criterion="learned", max_drop=0.02, data_sha256="")
    gate = calibrated.exits[0].gate
    assert gate is not None
    broken = dataclasses.replace(gate, b1=gate.b1[:-1])
    exits = (dataclasses.replace(calibrated.exits[0], gate=broken), *calibrated.exits[1:])
    with pytest.raises(PackageError, match="exit 0's gate has inconsistent shapes"):
        Manifest.from_json(calibrated.with_exits(exits, calibrated.calibration).to_json())


def test_a_gate_the_graph_does_not_fit_is_scored_in_numpy(
    learned_package: Path, digits: LabelledData, tmp_path: Path
) -> None:
    """A graph exported with another gate width (another edgeexit) keeps working: numpy scores the gate."""
    package = tmp_path / "pkg"
    shutil.copytree(learned_package, package)
    manifest = Engine(package, cache_dir=None).manifest
    narrow = ExitGate(w1=((1.0, 0.0),) * gate_feature_count(10), b1=(0.0, 0.0), w2=(4.0, 0.0), b2=-3.0, samples=1)
    exits = tuple(
        spec if spec.final else dataclasses.replace(spec, gate=narrow, threshold=0.7) for spec in manifest.exits
    )
    atomic_write_text(package / MANIFEST_FILE, manifest.with_exits(exits, None).to_json())
    engine = Engine(package, cache_dir=None)
    assert all(rule.graph_score is None and rule.gate == narrow for rule in engine.rules[:-1])
    results = [engine.run(digits.x[i : i + 1]) for i in range(50)]
    expected = gate_score(gate_features(softmax(engine.run_full(digits.x[:50]).logits[0])), gate_arrays(narrow))
    assert [r.exit == 0 for r in results] == (expected >= np.float32(0.7)).tolist()
