"""Scores, simulated early exit, threshold search and the Pareto frontier on synthetic multi-exit data."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from edgeexit.calibration import (
    NEVER,
    choose_thresholds,
    exit_index,
    exit_scores,
    finite_threshold,
    pareto_curve,
    simulate,
)
from edgeexit.criteria import Boundary, create_criterion
from edgeexit.runtime.engine import FullDepth

SEGMENT_MS = np.array([2.0, 3.0, 5.0])


def multi_exit(
    seed: int = 0, samples: int = 3000, strengths: tuple[float, ...] = (1.6, 2.6, 4.0), classes: int = 10
) -> tuple[list[np.ndarray], np.ndarray]:
    """Per-exit float32 logits whose accuracy rises with depth and whose confidence tracks correctness.

    Each sample has an easiness shared by all exits, so the samples an early exit is sure of are
    mostly the easy ones it gets right, as in a trained multi-exit network.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, samples)
    easiness = rng.uniform(0.1, 1.6, samples)
    onehot = np.eye(classes)[labels]
    logits = [
        (rng.normal(size=(samples, classes)) + strength * easiness[:, None] * onehot).astype(np.float32)
        for strength in strengths
    ]
    return logits, labels


def matrices(
    logits: list[np.ndarray], labels: np.ndarray, criterion: str = "max_prob"
) -> tuple[np.ndarray, np.ndarray]:
    full = FullDepth(tuple(logits), tuple(np.zeros(len(labels), np.float32) for _ in logits), (1.0,) * len(logits))
    scores = exit_scores(criterion, full, [1.0] * len(logits))
    correct = np.stack([lg.argmax(axis=1) == labels for lg in logits])
    return scores, correct


# ------------------------------------------------------------------------------------------------ simulate


def test_simulate_matches_a_hand_computed_case() -> None:
    scores = np.array([[0.9, 0.2, 0.7, 0.1], [0.5, 0.9, 0.3, 0.2], [np.inf] * 4])
    correct = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 1]], dtype=bool)
    # exits: sample 0 at 0 (0.9 >= 0.7), 1 at 1, 2 at 0 (a score equal to the threshold exits), 3 at the final
    assert exit_index(scores, [0.7, 0.6, -np.inf]).tolist() == [0, 1, 0, 2]
    outcome = simulate(scores, correct, [1.0, 2.0, 4.0], [0.7, 0.6, -np.inf])
    assert outcome.accuracy == 0.75  # right, right, wrong, right
    assert outcome.expected_ms == (1 + 3 + 1 + 7) / 4
    assert outcome.exit_rate == (0.5, 0.25, 0.25)
    assert outcome.exit_accuracy == (0.5, 1.0, 1.0)
    assert outcome.samples == 4


def test_simulate_reports_none_for_an_exit_nobody_took_and_the_final_always_exits() -> None:
    scores = np.array([[0.1, 0.2], [0.3, 0.4], [-np.inf, np.nan]])  # even a final score of -inf/NaN exits
    correct = np.array([[1, 1], [1, 1], [0, 1]], dtype=bool)
    outcome = simulate(scores, correct, [1.0, 1.0, 1.0], [np.inf, np.inf, np.inf])
    assert outcome.exit_rate == (0.0, 0.0, 1.0)
    assert outcome.exit_accuracy == (None, None, 0.5)
    assert outcome.expected_ms == 3.0
    assert math.isclose(sum(outcome.exit_rate), 1.0)


def test_simulate_refuses_mismatched_shapes() -> None:
    scores = np.zeros((3, 4))
    with pytest.raises(ValueError, match="bool"):
        simulate(scores, np.zeros((3, 4)), [1, 1, 1], [0, 0, 0])
    with pytest.raises(ValueError, match="segment_ms"):
        simulate(scores, np.zeros((3, 4), bool), [1, 1], [0, 0, 0])
    with pytest.raises(ValueError, match="one threshold per exit"):
        simulate(scores, np.zeros((3, 4), bool), [1, 1, 1], [0, 0])


# ------------------------------------------------------------------------------------------------ scores


def test_exit_scores_use_the_runtime_criteria_with_temperature_and_history() -> None:
    logits, _labels = multi_exit(samples=200)
    similarity = tuple(np.linspace(-1, 1, 200, dtype=np.float32) * (k + 1) / 4 for k in range(3))
    full = FullDepth(tuple(logits), similarity, (1.0, 1.0, 1.0))
    temperatures = [1.7, 0.6, 1.0]
    scores = exit_scores("max_prob", full, temperatures)
    assert scores.shape == (3, 200)
    assert scores.dtype == np.float64
    expected = create_criterion("max_prob").score(Boundary(logits[1], temperature=0.6))
    np.testing.assert_array_equal(scores[1], expected)  # bit for bit: float32 -> float64 is exact
    assert np.isposinf(scores[2]).all()

    patience = exit_scores("patience", full, temperatures)
    history = (logits[0].argmax(axis=1),)
    np.testing.assert_array_equal(patience[1], create_criterion("patience").score(Boundary(logits[1], history=history)))
    assert set(np.unique(patience[1])) <= {1.0, 2.0}

    np.testing.assert_array_equal(exit_scores("similarity", full, temperatures)[1], similarity[1])


def test_an_exit_without_logits_is_scored_by_similarity_and_skipped_in_patience_history() -> None:
    logits, _ = multi_exit(samples=50, strengths=(1.0, 2.0, 3.0, 4.0))
    similarity = tuple(np.full(50, 0.1 * k, np.float32) for k in range(4))
    full = FullDepth((logits[0], None, logits[2], logits[3]), similarity, (1.0,) * 4)
    scores = exit_scores(["patience"] * 4, full, [1.0] * 4)
    np.testing.assert_array_equal(scores[1], similarity[1])
    history = (logits[0].argmax(axis=1),)  # exit 1 has no prediction to agree with
    np.testing.assert_array_equal(scores[2], create_criterion("patience").score(Boundary(logits[2], history=history)))
    with pytest.raises(ValueError, match="one criterion"):
        exit_scores(["max_prob"] * 3, full, [1.0] * 4)


# ------------------------------------------------------------------------------------------------ choose


@pytest.mark.parametrize("criterion", ["max_prob", "margin", "entropy", "patience"])
@pytest.mark.parametrize("max_drop", [0.0, 0.01, 0.05])
def test_choice_meets_the_accuracy_target_and_beats_full_depth(criterion: str, max_drop: float) -> None:
    logits, labels = multi_exit()
    scores, correct = matrices(logits, labels, criterion)
    choice = choose_thresholds(scores, correct, SEGMENT_MS, max_drop)
    final = float(correct[-1].mean())
    assert choice.final_accuracy == final
    assert choice.target_accuracy >= final - max_drop - 1e-12
    assert choice.outcome.accuracy >= choice.target_accuracy
    assert choice.outcome == simulate(scores, correct, SEGMENT_MS, choice.thresholds)
    assert math.isclose(sum(choice.outcome.exit_rate), 1.0)
    assert choice.thresholds[-1] == -np.inf
    full_ms = float(SEGMENT_MS.sum())
    if criterion != "patience" or max_drop > 0:
        assert choice.outcome.expected_ms < full_ms  # confident early exits are mostly right: use them
    assert choice.outcome.expected_ms <= full_ms


def test_a_larger_budget_never_costs_more_time() -> None:
    logits, labels = multi_exit(seed=3)
    scores, correct = matrices(logits, labels)
    times = [choose_thresholds(scores, correct, SEGMENT_MS, d).outcome.expected_ms for d in (0.0, 0.01, 0.03, 0.1)]
    assert times == sorted(times, reverse=True)
    assert times[-1] < times[0]


def test_zero_drop_with_noisy_early_exits_keeps_final_accuracy() -> None:
    rng = np.random.default_rng(5)
    logits, labels = multi_exit(seed=5, strengths=(0.2, 0.4, 4.0))
    # early exits are confidently wrong at random: their confidence says nothing about correctness
    for k in (0, 1):
        spikes = rng.integers(0, 10, len(labels))
        logits[k][np.arange(len(labels)), spikes] += rng.uniform(0, 8, len(labels)).astype(np.float32)
    scores, correct = matrices(logits, labels)
    choice = choose_thresholds(scores, correct, SEGMENT_MS, 0.0)
    assert choice.outcome.accuracy >= choice.final_accuracy
    assert choice == choose_thresholds(scores, correct, SEGMENT_MS, 0.0)  # deterministic


def test_when_early_exits_are_as_good_as_the_final_one_everyone_leaves_first() -> None:
    logits, labels = multi_exit(strengths=(6.0, 6.0, 6.0))
    logits = [logits[0]] * 3
    scores, correct = matrices(logits, labels)
    choice = choose_thresholds(scores, correct, SEGMENT_MS, 0.0)
    assert choice.outcome.exit_rate[0] == 1.0
    assert choice.outcome.expected_ms == SEGMENT_MS[0]


def test_an_exit_scored_minus_infinity_never_fires() -> None:
    logits, labels = multi_exit()
    scores, correct = matrices(logits, labels)
    scores[0] = -np.inf
    choice = choose_thresholds(scores, correct, SEGMENT_MS, 0.2)
    assert choice.thresholds[0] == np.inf
    assert choice.outcome.exit_rate[0] == 0.0


def test_thresholds_are_float32_exact_cuts_between_scores() -> None:
    """The runtime compares float32 scores (numpy 2 casts the threshold to float32 too): a cut
    that is not float32-exact, or that sits on a score, could flip a decision on the device."""
    logits, labels = multi_exit()
    scores, correct = matrices(logits, labels)
    choice = choose_thresholds(scores, correct, SEGMENT_MS, 0.02)
    for k in (0, 1):
        t = choice.thresholds[k]
        if np.isfinite(t):
            assert float(np.float32(t)) == t
            row32 = scores[k].astype(np.float32)
            np.testing.assert_array_equal(row32 >= t, scores[k] >= t)


def test_patience_thresholds_are_whole_numbers() -> None:
    logits, labels = multi_exit()
    scores, correct = matrices(logits, labels, "patience")
    choice = choose_thresholds(scores, correct, SEGMENT_MS, 0.05)
    assert all(t == np.inf or t == int(t) for t in choice.thresholds[:-1])


def test_bad_arguments_are_refused() -> None:
    logits, labels = multi_exit(samples=100)
    scores, correct = matrices(logits, labels)
    with pytest.raises(ValueError, match="max_drop"):
        choose_thresholds(scores, correct, SEGMENT_MS, -0.01)
    with pytest.raises(ValueError, match="max_drop"):
        choose_thresholds(scores, correct, SEGMENT_MS, float("nan"))
    with pytest.raises(ValueError, match="candidates"):
        choose_thresholds(scores, correct, SEGMENT_MS, 0.01, candidates=0)


def test_finite_threshold_maps_infinities_to_the_sentinel() -> None:
    assert finite_threshold(np.inf) == NEVER == 1e9
    assert finite_threshold(-np.inf) == -1e9
    assert finite_threshold(0.25) == 0.25
    logits, labels = multi_exit(samples=300)
    scores, correct = matrices(logits, labels)
    never = [finite_threshold(np.inf)] * 2 + [0.0]
    assert simulate(scores, correct, SEGMENT_MS, never).exit_rate == (0.0, 0.0, 1.0)


# ------------------------------------------------------------------------------------------------ pareto


def test_pareto_curve_is_monotone_and_covers_full_depth() -> None:
    logits, labels = multi_exit()
    scores, correct = matrices(logits, labels)
    curve = pareto_curve(scores, correct, SEGMENT_MS, points=20)
    assert len(curve) >= 5
    ms = [p[0] for p in curve]
    accuracy = [p[1] for p in curve]
    assert all(a < b for a, b in itertools.pairwise(ms))
    assert all(a < b for a, b in itertools.pairwise(accuracy))
    # full depth is on the frontier or beaten by it (early exits can fix some of the final exit's errors)
    assert curve[-1][0] <= SEGMENT_MS.sum() + 1e-9
    assert curve[-1][1] >= correct[-1].mean()
    assert curve[0][0] < SEGMENT_MS.sum()
    chosen = choose_thresholds(scores, correct, SEGMENT_MS, 0.01).outcome
    # no frontier point is both faster than the chosen one and accurate enough to have been chosen
    assert not any(m < chosen.expected_ms - 1e-9 and a >= chosen.accuracy for m, a in curve)
