"""The compute-budget mode: the most accurate thresholds whose expected latency fits a budget."""

from __future__ import annotations

import numpy as np
import pytest

from edgeexit.calibration import choose_for_budget, choose_thresholds


def _synthetic(samples: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.random((3, samples))
    correct = rng.random((3, samples)) < np.clip(np.array([0.6, 0.8, 0.9])[:, None] + 0.4 * (scores - 0.5), 0, 1)
    scores[-1] = np.inf
    return scores, correct, np.array([1.0, 1.0, 2.0])


@pytest.mark.parametrize("budget", [1.3, 2.0, 3.0])
def test_the_most_accurate_thresholds_within_the_budget(budget: float) -> None:
    scores, correct, ms = _synthetic()
    chosen = choose_for_budget(scores, correct, ms, budget)
    assert chosen.outcome.expected_ms <= budget
    # no accuracy-constrained choice that fits the budget is more accurate by more than half a point
    for drop in np.linspace(0.0, 0.3, 61):
        other = choose_thresholds(scores, correct, ms, float(drop))
        if other.outcome.expected_ms <= budget:
            assert other.outcome.accuracy <= chosen.outcome.accuracy + 0.005
    assert chosen.target_accuracy == chosen.outcome.accuracy


def test_a_budget_of_full_depth_or_more_loses_no_accuracy() -> None:
    scores, correct, ms = _synthetic(seed=1)
    chosen = choose_for_budget(scores, correct, ms, 10.0)
    assert chosen.outcome.accuracy >= chosen.final_accuracy  # early exits may even be right more often


def test_a_budget_below_the_cheapest_plan_says_what_the_cheapest_costs() -> None:
    scores, correct, ms = _synthetic(seed=2)
    with pytest.raises(ValueError, match=r"cannot be met: the cheapest thresholds found cost 1 ms \(full depth 4 ms\)"):
        choose_for_budget(scores, correct, ms, 0.5)
    with pytest.raises(ValueError, match="above 0 ms"):
        choose_for_budget(scores, correct, ms, 0.0)
