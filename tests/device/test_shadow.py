"""Shadow full-depth runs: the device notices when its calibration stops holding, and re-certifies
its thresholds from what it saw (issue 15 point 5; real engines on the digits package)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from edgeexit.calibration import calibrate_manifest, digest_data
from edgeexit.calibration.drift import DriftMonitor, wilson_interval
from edgeexit.data import LabelledData
from edgeexit.device.shadow import ShadowSampler, apply_thresholds
from edgeexit.errors import EdgeExitError
from edgeexit.package import open_package
from edgeexit.runtime import Engine

BUDGET = 0.02


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory, digits_package: Path, digits: LabelledData) -> Path:
    """The digits package with thresholds certified for at most 2% disagreement with its final exit
    (Learn-then-Test, delta 0.1): the budget the monitor holds it to is the one it was certified for
    (with the margin method, which bounds the accuracy drop instead, the clean disagreement sat at
    1.7% against the 2% alarm, a few tenths from a false alarm on another CPU's training)."""
    import shutil

    target = tmp_path_factory.mktemp("shadow") / "pkg"
    shutil.copytree(digits_package, target)
    package = open_package(target)
    full = Engine(package, cache_dir=None).run_full(digits.x)
    manifest, _ = calibrate_manifest(package.manifest, full, digits.y, criterion=None, max_drop=BUDGET, delta=0.1,
                                     against="final", data_sha256=digest_data(digits.x, digits.y))  # fmt: skip
    package.save_manifest(manifest)
    return target


def _shadow_all(package: Path, xs: np.ndarray) -> ShadowSampler:
    engine = Engine(package, cache_dir=None)
    with ShadowSampler(package, 1.0, eps=BUDGET, queue_size=len(xs)) as shadow:
        for x in xs:
            shadow.offer(x, engine.run(x))
        shadow.drain()
    return shadow


def test_the_alarm_stays_quiet_on_the_data_it_was_calibrated_on(calibrated: Path, digits: LabelledData) -> None:
    shadow = _shadow_all(calibrated, digits.x)
    report = shadow.report()
    assert report.samples == len(digits)
    assert not report.breached
    assert shadow.alarms == 0
    assert report.low <= BUDGET
    assert sum(e.samples for e in report.exits) == report.samples


def test_the_alarm_fires_once_on_shifted_data(calibrated: Path, digits: LabelledData,
                                              caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    noisy = digits.x + np.random.default_rng(0).normal(0.0, 0.5, digits.x.shape).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="edgeexit.device"):
        shadow = _shadow_all(calibrated, noisy)
    report = shadow.report()
    assert report.breached
    assert report.low > BUDGET  # surely above the budget, not by a hair
    assert shadow.alarms == 1
    warnings = [r for r in caplog.records if "calibration drift" in r.getMessage()]
    assert len(warnings) == 1


def test_offering_never_waits_for_the_shadow(calibrated: Path, digits: LabelledData) -> None:
    engine = Engine(calibrated, cache_dir=None)
    result = engine.run(digits.x[0])
    with ShadowSampler(calibrated, 1.0, queue_size=1) as shadow:
        taken = [shadow.offer(digits.x[0], result) for _ in range(200)]  # far faster than it can run them
    assert shadow.dropped == taken.count(False)
    assert shadow.dropped > 0
    with pytest.raises(EdgeExitError, match="expected a fraction in"):
        ShadowSampler(calibrated, 0.0)


def test_the_monitor_counts_per_exit_with_wilson_intervals() -> None:
    monitor = DriftMonitor(3, eps=0.1, min_samples=10)
    for k in range(100):
        monitor.observe(k % 3, 1, 1 if k % 10 else 2)  # one in ten disagrees
    report = monitor.report()
    assert report.samples == 100
    assert report.disagreement == pytest.approx(0.1)
    assert (report.low, report.high) == pytest.approx(wilson_interval(10, 100))
    assert report.low < 0.1 < report.high
    assert not report.breached  # 10% against a 10% budget: not surely above it
    assert [e.samples for e in report.exits] == [34, 33, 33]
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(EdgeExitError, match="not one of the monitor's 3 exits"):
        monitor.observe(3, 1, 1)


def test_recertified_thresholds_hold_on_the_shifted_data(calibrated: Path, digits: LabelledData) -> None:
    """The alarm fires on noisy digits; thresholds re-certified from the shadow samples of one half
    (Learn-then-Test against full depth, delta 0.1) keep the disagreement within the budget on the
    other half, and are never looser than the ones they replace."""
    noisy = digits.x + np.random.default_rng(1).normal(0.0, 0.5, digits.x.shape).astype(np.float32)
    seen, unseen = noisy[: len(noisy) // 2], noisy[len(noisy) // 2 :]
    engine = Engine(calibrated, cache_dir=None)
    with ShadowSampler(calibrated, 1.0, eps=BUDGET, queue_size=len(seen)) as shadow:
        for x in seen:
            shadow.offer(x, engine.run(x))
        shadow.drain()
        assert shadow.report().breached
        assert shadow.kept == len(seen)
        current = [rule.threshold for rule in engine.rules]
        found = shadow.recertify(current, delta=0.1)
    assert found.samples == len(seen)
    assert found.guarantee.eps == BUDGET
    assert found.guarantee.against == "final"
    assert all(new >= old for new, old in zip(found.thresholds, current, strict=True))  # only tighter
    assert found.tightened
    apply_thresholds(engine, found.thresholds)
    assert [rule.threshold for rule in engine.rules] == list(found.thresholds)
    deep = Engine(calibrated, cache_dir=None, threshold=float("inf"))
    early = [engine.run(x).prediction for x in unseen]
    full = [deep.run(x).prediction for x in unseen]
    disagreement = float(np.mean(np.array(early) != np.array(full)))
    assert disagreement <= BUDGET, disagreement
