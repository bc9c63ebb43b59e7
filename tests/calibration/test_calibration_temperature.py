"""Temperature scaling recovers a known temperature and leaves degenerate data alone."""

from __future__ import annotations

import numpy as np
import pytest

from edgeexit.calibration import fit_temperature
from edgeexit.criteria import softmax


def sampled(true_logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Labels drawn from softmax(true_logits): the model is calibrated at temperature 1 by construction."""
    probs = softmax(true_logits).astype(np.float64)
    cumulative = probs.cumsum(axis=1)
    draws = rng.random((len(probs), 1)) * cumulative[:, -1:]
    return (draws > cumulative).sum(axis=1).astype(np.int64)


@pytest.mark.parametrize("scale", [0.4, 1.0, 3.0])
def test_recovers_the_temperature_that_scaled_calibrated_logits(scale: float) -> None:
    rng = np.random.default_rng(7)
    true_logits = rng.normal(scale=2.0, size=(8000, 10))
    labels = sampled(true_logits, rng)
    found = fit_temperature((true_logits * scale).astype(np.float32), labels)
    assert found == pytest.approx(scale, rel=0.08)


def test_is_deterministic_and_minimises_the_nll() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3.0, size=(500, 5))
    labels = sampled(logits / 1.7, rng)
    found = fit_temperature(logits, labels)
    assert 0.5 < found < 5.0  # an interior optimum, where the check below means something
    assert found == fit_temperature(logits, labels)

    def nll(t: float) -> float:
        p = softmax(logits, t).astype(np.float64)
        return float(-np.log(p[np.arange(500), labels]).mean())

    assert nll(found) <= min(nll(found * 0.97), nll(found * 1.03)) + 1e-9


def test_stays_within_the_search_range() -> None:
    logits = np.array([[10.0, 0.0], [0.0, 10.0]] * 20)
    labels = np.array([0, 1] * 20)
    assert fit_temperature(logits, labels) == pytest.approx(0.05)  # separable: the NLL wants T -> 0
    assert fit_temperature(logits, 1 - labels) == pytest.approx(20.0)  # always wrong: as flat as allowed


@pytest.mark.parametrize(
    ("logits", "labels"),
    [
        (np.zeros((0, 3)), np.zeros(0, dtype=np.int64)),  # no samples
        (np.ones((4, 1)), np.zeros(4, dtype=np.int64)),  # one class
        (np.full((4, 3), 2.5), np.array([0, 1, 2, 0])),  # constant rows: T does not matter
        (np.array([[np.nan, 1.0], [0.0, 1.0]]), np.array([0, 1])),  # non-finite
    ],
)
def test_degenerate_input_gives_one(logits: np.ndarray, labels: np.ndarray) -> None:
    assert fit_temperature(logits, labels) == 1.0


def test_mismatched_or_out_of_range_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="labels must be"):
        fit_temperature(np.zeros((4, 3)), np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        fit_temperature(np.eye(3), np.array([0, 1, 3]))
