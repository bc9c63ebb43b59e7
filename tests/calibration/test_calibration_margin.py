"""The safety margin: part of the accuracy budget kept in reserve for data calibration never saw."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeexit.calibration import choose_thresholds, simulate


def _synthetic(samples: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three exits; confidence predicts correctness; deeper exits are more accurate and cost more."""
    rng = np.random.default_rng(seed)
    scores = rng.random((3, samples))
    accuracy = np.array([0.55, 0.75, 0.9])[:, None]
    correct = rng.random((3, samples)) < np.clip(accuracy + 0.4 * (scores - 0.5), 0, 1)
    scores[-1] = np.inf
    return scores, correct, np.array([1.0, 2.0, 4.0])


def _discordant(correct: np.ndarray, scores: np.ndarray, thresholds: tuple[float, ...]) -> int:
    exits = np.zeros(scores.shape[1], dtype=int) + scores.shape[0] - 1
    for k in reversed(range(scores.shape[0] - 1)):
        exits = np.where(scores[k] >= thresholds[k], k, exits)
    chosen = correct[exits, np.arange(scores.shape[1])]
    return int((chosen != correct[-1]).sum())


def test_a_margin_keeps_budget_in_reserve_and_costs_latency() -> None:
    scores, correct, ms = _synthetic()
    loose = choose_thresholds(scores, correct, ms, max_drop=0.02, margin=0.0)
    strict = choose_thresholds(scores, correct, ms, max_drop=0.02, margin=2.0)
    assert strict.outcome.accuracy >= loose.outcome.accuracy
    assert strict.outcome.expected_ms >= loose.outcome.expected_ms
    samples = scores.shape[1]
    need = math.ceil(correct[-1].sum() - 0.02 * samples - 1e-9)
    hits = round(strict.outcome.accuracy * samples)
    assert hits - 2.0 * math.sqrt(_discordant(correct, scores, strict.thresholds)) >= need - 1e-6
    assert simulate(scores, correct, ms, strict.thresholds).accuracy == strict.outcome.accuracy


def test_margin_zero_spends_the_whole_budget_on_the_calibration_data() -> None:
    scores, correct, ms = _synthetic(seed=1)
    choice = choose_thresholds(scores, correct, ms, max_drop=0.02, margin=0.0)
    assert choice.outcome.accuracy >= choice.target_accuracy
    assert choice.final_accuracy - choice.outcome.accuracy > 0.015  # close to the 2-point edge


@pytest.mark.parametrize("margin", [-1.0, float("nan"), float("inf")])
def test_a_margin_must_be_a_finite_non_negative_number(margin: float) -> None:
    scores, correct, ms = _synthetic(samples=100)
    with pytest.raises(ValueError, match="margin"):
        choose_thresholds(scores, correct, ms, max_drop=0.01, margin=margin)
