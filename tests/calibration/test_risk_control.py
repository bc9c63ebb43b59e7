"""Learn-then-Test thresholds: the tail bound, the fixed sequence, and the guarantee over many splits."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edgeexit.calibration import choose_thresholds, exit_index
from edgeexit.calibration.risk_control import (
    binomial_cdf,
    certify_thresholds,
    hoeffding_bentkus_p_value,
    losses,
    upper_bound,
)
from edgeexit.calibration.scores import exit_scores
from edgeexit.runtime import Engine

#: The guarantee's level in the split test, and the splits drawn.
EPS, DELTA, SPLITS = 0.02, 0.1, 200


@pytest.mark.parametrize(("k", "n", "p"), [(0, 50, 0.01), (3, 100, 0.05), (40, 1000, 0.03), (7, 20, 0.5)])
def test_the_binomial_tail_matches_scipy(k: int, n: int, p: float) -> None:
    from scipy.stats import binom

    assert binomial_cdf(k, n, p) == pytest.approx(binom.cdf(k, n, p), rel=1e-9)


def test_the_hoeffding_bentkus_p_value_and_its_bound() -> None:
    # no loss on 3,000 samples refutes "risk > 1%" overwhelmingly; a loss at eps refutes nothing
    assert hoeffding_bentkus_p_value(0.0, 3000, 0.01) < 1e-10
    assert hoeffding_bentkus_p_value(0.01, 3000, 0.01) > 0.5
    assert hoeffding_bentkus_p_value(0.0, 10, 0.01) > 0.5  # too few samples to refute anything
    bound = upper_bound(0.005, 3000, 0.1)
    assert 0.005 < bound < 0.01
    assert hoeffding_bentkus_p_value(0.005, 3000, bound) <= 0.1
    assert hoeffding_bentkus_p_value(0.005, 3000, bound * 0.99) > 0.1  # the least eps certified
    assert upper_bound(0.005, 30000, 0.1) < bound  # more samples, a tighter bound


def test_the_losses_bound_the_drop() -> None:
    correct = np.array([[True, False, False, True], [True, True, False, False]])
    predictions = np.array([[1, 2, 3, 4], [1, 5, 3, 9]])
    assert losses(correct, predictions, "final").tolist() == [[False, True, False, True], [False] * 4]
    assert losses(correct, None, "labels").tolist() == [[False, True, False, False], [False] * 4]
    with pytest.raises(ValueError, match="needs each exit's predictions"):
        losses(correct, None, "final")
    with pytest.raises(ValueError, match="expected one of final, labels"):
        losses(correct, predictions, "oracle")


def _synthetic(samples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.random((3, samples))
    correct = rng.random((3, samples)) < np.clip(np.array([0.6, 0.8, 0.9])[:, None] + 0.4 * (scores - 0.5), 0, 1)
    scores[-1] = np.inf
    return scores, correct, np.array([1.0, 1.0, 1.0])


def test_too_few_samples_certify_nothing_and_keep_full_depth() -> None:
    scores, correct, ms = _synthetic(60)
    choice, guarantee = certify_thresholds(scores, correct, ms, 0.01, 0.1, against="labels")
    assert not guarantee.certified
    assert choice.thresholds[:-1] == (math.inf, math.inf)  # the early exits never fire
    assert choice.outcome.exit_rate[-1] == 1.0
    assert guarantee.tested == 42  # 70% of 60 tested, 30% ordered the candidates


def test_enough_samples_certify_cheaper_thresholds_within_the_bound() -> None:
    scores, correct, ms = _synthetic(20000)
    choice, guarantee = certify_thresholds(scores, correct, ms, 0.02, 0.1, against="labels", seed=3)
    assert guarantee.certified
    assert choice.outcome.expected_ms < 3.0
    assert guarantee.loss <= guarantee.bound <= 0.02
    assert (guarantee.eps, guarantee.delta, guarantee.against, guarantee.seed) == (0.02, 0.1, "labels", 3)
    assert guarantee.candidates >= 1


@pytest.mark.parametrize(("eps", "delta"), [(0.0, 0.1), (1.0, 0.1), (0.01, 0.0), (0.01, 1.5)])
def test_levels_outside_zero_one_are_refused(eps: float, delta: float) -> None:
    scores, correct, ms = _synthetic(100)
    with pytest.raises(ValueError, match="must be"):
        certify_thresholds(scores, correct, ms, eps, delta, against="labels")


@pytest.fixture(scope="module")
def digits_pass(digits_package: Path, digits) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits CNN's exits on the 1,797 real digits, computed once: scores, correctness,
    predictions and per-exit costs."""
    engine = Engine(digits_package, cache_dir=None)
    full = engine.run_full(digits.x)
    names = [spec.criterion for spec in engine.manifest.exits]
    scores = exit_scores(names, full, [1.0] * len(names))
    predictions = np.stack([z.argmax(axis=-1) for z in full.logits])
    correct = predictions == digits.y[None, :]
    return scores, correct, predictions, np.array([1.0] * len(names))


def test_the_guarantee_holds_over_200_random_splits_of_real_data(digits_pass) -> None:
    """P(test drop > EPS) <= DELTA over the draw of the calibration data: at most DELTA of the
    splits may break EPS, up to the binomial noise of 200 draws (3 standard deviations)."""
    scores, correct, predictions, ms = digits_pass
    samples = scores.shape[1]
    rng = np.random.default_rng(0)
    broken = {"ltt": 0, "margin": 0}
    for split in range(SPLITS):
        order = rng.permutation(samples)
        calibration, test = order[: samples // 2], order[samples // 2 :]
        seen = scores[:, calibration], correct[:, calibration]
        certified, _ = certify_thresholds(*seen, ms, EPS, DELTA, predictions=predictions[:, calibration],
                                          against="labels", seed=split)  # fmt: skip
        margin = choose_thresholds(*seen, ms, EPS, margin=1.0)
        for name, choice in (("ltt", certified), ("margin", margin)):
            index = exit_index(scores[:, test], choice.thresholds)
            drop = correct[-1, test].mean() - correct[index, test].mean()
            broken[name] += bool(drop > EPS)
    allowed = DELTA + 3 * math.sqrt(DELTA * (1 - DELTA) / SPLITS)
    assert broken["ltt"] / SPLITS <= allowed, broken
