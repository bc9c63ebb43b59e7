"""calibrate_manifest on a real exported package: the engine then does exactly what calibration predicted."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from edgeexit.calibration import NEVER, calibrate_manifest, digest_data, exit_index, exit_scores, simulate
from edgeexit.data import LabelledData
from edgeexit.errors import DataError, EdgeExitError
from edgeexit.manifest import Manifest
from edgeexit.package import open_package
from edgeexit.runtime.engine import Engine, FullDepth


@pytest.fixture(scope="module")
def measured(digits_package: Path, digits: LabelledData) -> tuple[Manifest, FullDepth]:
    engine = Engine(digits_package, cache_dir=None)
    return engine.manifest, engine.run_full(digits.x)


@pytest.mark.parametrize(("criterion", "max_drop"), [("max_prob", 0.02), ("entropy", 0.0), ("patience", 0.02)])
def test_the_engine_reproduces_the_simulated_accuracy_and_exits(
    measured: tuple[Manifest, FullDepth],
    digits: LabelledData,
    package_copy: Path,
    criterion: str,
    max_drop: float,
) -> None:
    manifest, full = measured
    digest = digest_data(digits.x, digits.y)
    new, choice = calibrate_manifest(
        manifest, full, digits.y, criterion=criterion, max_drop=max_drop, data_sha256=digest
    )
    new.validate()
    assert new.package_id == manifest.package_id  # thresholds are not weights
    assert Manifest.from_json(new.to_json()) == new  # JSON-safe: no infinities
    record = new.calibration
    assert record is not None
    assert (record.criterion, record.max_drop, record.samples, record.data_sha256) == (
        criterion,
        max_drop,
        len(digits.y),
        digest,
    )
    assert record.accuracy == choice.outcome.accuracy >= record.final_accuracy - max_drop
    assert [e.exit_rate for e in record.exits] == list(choice.outcome.exit_rate)
    assert all(spec.criterion == criterion for spec in new.exits[:-1])
    assert new.exits[-1].threshold == manifest.exits[-1].threshold
    assert new.exits[-1].final

    open_package(package_copy).save_manifest(new)
    engine = Engine(package_copy, cache_dir=None)
    results = engine.run_batch(digits.x)
    predictions = np.array([r.prediction for r in results])
    exits = np.array([r.exit for r in results])
    assert float(np.mean(predictions == digits.y)) == choice.outcome.accuracy  # exactly, same samples
    scores = exit_scores([s.criterion for s in new.exits], full, [s.temperature for s in new.exits])
    np.testing.assert_array_equal(exits, exit_index(scores, [s.threshold for s in new.exits]))
    one_by_one = [engine.run(x).exit for x in digits.x[:150]]  # the batch-1 bound chain agrees too
    assert one_by_one == exits[:150].tolist()
    # the graphs score max_prob: an exit calibrated to another criterion must not read that score
    kept = [spec.score is not None for spec in new.exits[:-1]]
    assert kept == [criterion == "max_prob"] * (len(new.exits) - 1)
    assert all(spec.probabilities is not None for spec in new.exits)  # the softmax holds for any criterion


def test_max_prob_calibration_saves_compute_on_digits(
    measured: tuple[Manifest, FullDepth], digits: LabelledData
) -> None:
    manifest, full = measured
    new, choice = calibrate_manifest(manifest, full, digits.y, criterion="max_prob", max_drop=0.02, data_sha256="d")
    assert choice.outcome.expected_ms < sum(full.segment_ms)
    assert all(t > 0 for t in (s.temperature for s in new.exits))
    record = new.calibration
    assert record is not None
    assert record.expected_latency_ms == choice.outcome.expected_ms


def test_no_criterion_keeps_each_exits_own(measured: tuple[Manifest, FullDepth], digits: LabelledData) -> None:
    manifest, full = measured
    new, _ = calibrate_manifest(manifest, full, digits.y, criterion=None, max_drop=0.01, data_sha256="d")
    assert [s.criterion for s in new.exits] == [s.criterion for s in manifest.exits]
    assert new.calibration is not None
    assert new.calibration.criterion == manifest.exits[0].criterion


def test_an_exit_nobody_takes_records_its_own_accuracy(
    measured: tuple[Manifest, FullDepth], digits: LabelledData
) -> None:
    manifest, full = measured
    new, choice = calibrate_manifest(manifest, full, digits.y, criterion="patience", max_drop=0.0, data_sha256="d")
    record = new.calibration
    assert record is not None
    for k, logits in enumerate(full.logits):
        if choice.outcome.exit_accuracy[k] is None:
            assert record.exits[k].accuracy == float(np.mean(logits.argmax(axis=1) == digits.y))
            assert record.exits[k].exit_rate == 0.0


def headless(manifest: Manifest, full: FullDepth) -> tuple[Manifest, FullDepth]:
    """The digits package with exit 1's classifier removed: an encoder-style boundary."""
    exits = list(manifest.exits)
    exits[1] = dataclasses.replace(exits[1], head=None, logits=None, score=None, criterion="similarity")
    stripped = manifest.with_exits(tuple(exits), None)
    stripped.validate()
    return stripped, dataclasses.replace(full, logits=(full.logits[0], None, full.logits[2]))


def test_an_exit_without_a_classifier_never_exits_unless_the_criterion_is_similarity(
    measured: tuple[Manifest, FullDepth], digits: LabelledData
) -> None:
    manifest, full = headless(*measured)
    new, choice = calibrate_manifest(manifest, full, digits.y, criterion="max_prob", max_drop=0.5, data_sha256="d")
    new.validate()
    assert new.exits[1].criterion == "similarity"
    assert new.exits[1].threshold == NEVER
    assert new.exits[1].temperature == 1.0
    assert choice.outcome.exit_rate[1] == 0.0
    assert new.exits[0].criterion == "max_prob"

    new, choice = calibrate_manifest(manifest, full, digits.y, criterion="similarity", max_drop=0.0, data_sha256="d")
    new.validate()
    # exiting there gives no prediction, which counts as wrong, so a zero budget keeps everyone going
    assert choice.outcome.exit_rate[1] == 0.0
    assert choice.outcome.accuracy >= choice.final_accuracy


def test_simulated_outcome_matches_the_recorded_thresholds(
    measured: tuple[Manifest, FullDepth], digits: LabelledData
) -> None:
    manifest, full = measured
    new, choice = calibrate_manifest(manifest, full, digits.y, criterion="margin", max_drop=0.03, data_sha256="d")
    scores = exit_scores("margin", full, [s.temperature for s in new.exits])
    correct = np.stack([lg.argmax(axis=1) == digits.y for lg in full.logits])
    replay = simulate(scores, correct, full.segment_ms, [s.threshold for s in new.exits])
    assert replay == choice.outcome


@pytest.mark.parametrize(
    ("labels", "found"),
    [
        (lambda y: y.reshape(-1, 1), r"shape \(1797, 1\)"),
        (lambda y: y.astype(np.float32), "dtype float32"),
        (lambda y: y[:-3], "1794 labels for 1797 samples"),
        (lambda y: np.where(y == 3, 10, y), r"out of range, e\.g\. 10"),
        (lambda y: np.where(y == 3, -1, y), r"out of range, e\.g\. -1"),
        (lambda y: y > 4, "dtype bool"),
    ],
)
def test_bad_labels_are_a_data_error(
    measured: tuple[Manifest, FullDepth], digits: LabelledData, labels, found: str
) -> None:
    manifest, full = measured
    with pytest.raises(DataError, match=found) as info:
        calibrate_manifest(manifest, full, labels(digits.y), criterion="max_prob", max_drop=0.01, data_sha256="d")
    assert "expected 1797 integer class indices in [0, 10)" in str(info.value)


def test_wrong_criterion_or_record_is_refused(measured: tuple[Manifest, FullDepth], digits: LabelledData) -> None:
    manifest, full = measured
    with pytest.raises(EdgeExitError, match="unknown criterion 'confidence'"):
        calibrate_manifest(manifest, full, digits.y, criterion="confidence", max_drop=0.01, data_sha256="d")
    short = dataclasses.replace(full, logits=full.logits[:2], similarity=full.similarity[:2])
    with pytest.raises(EdgeExitError, match="2 exits; the manifest has 3"):
        calibrate_manifest(manifest, short, digits.y, criterion="max_prob", max_drop=0.01, data_sha256="d")


def test_data_digest_names_the_data() -> None:
    x = np.zeros((4, 1, 2, 2), np.float32)
    y = np.arange(4)
    assert digest_data(x, y) == digest_data(x.copy(), y.copy())
    assert digest_data(x, y) != digest_data(x, y[::-1].copy())
    assert len(digest_data(x, y)) == 64
