"""Exit criteria: the numpy scores agree with the in-graph formulas and with their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeexit.criteria import Boundary, create_criterion, list_criteria, softmax
from edgeexit.manifest import CRITERION_NAMES

LOGITS = np.array([[4.0, 1.0, 0.0], [1.0, 1.0, 1.0], [2.0, 2.0, -1.0]], dtype=np.float32)


def test_every_manifest_criterion_has_an_implementation() -> None:
    assert sorted(CRITERION_NAMES) == list_criteria()


def test_max_prob_is_the_top_softmax_probability_and_respects_temperature() -> None:
    score = create_criterion("max_prob").score(Boundary(LOGITS))
    np.testing.assert_allclose(score, softmax(LOGITS).max(axis=1), rtol=1e-6)
    assert score[1] == pytest.approx(1 / 3)
    hotter = create_criterion("max_prob").score(Boundary(LOGITS, temperature=2.0))
    assert hotter[0] < score[0]  # a higher temperature flattens the distribution


def test_margin_is_zero_when_the_top_two_tie() -> None:
    score = create_criterion("margin").score(Boundary(LOGITS))
    probs = softmax(LOGITS)
    assert score[0] == pytest.approx(probs[0, 0] - probs[0, 1], rel=1e-6)
    assert score[1] == pytest.approx(0.0, abs=1e-7)
    assert score[2] == pytest.approx(0.0, abs=1e-7)


def test_entropy_score_is_one_minus_normalized_entropy() -> None:
    score = create_criterion("entropy").score(Boundary(LOGITS))
    probs = softmax(LOGITS).astype(np.float64)
    expected = 1 + (probs * np.log(probs)).sum(axis=1) / math.log(3)
    np.testing.assert_allclose(score, expected, atol=1e-6)
    assert score[1] == pytest.approx(0.0, abs=1e-6)


def test_patience_counts_the_run_of_agreeing_predictions() -> None:
    history = (np.array([0, 2, 0]), np.array([0, 0, 1]))
    score = create_criterion("patience").score(Boundary(LOGITS, history=history))
    # current predictions are [0, 0, 0]: sample 0 agreed twice before, sample 1 once, sample 2 never
    assert score.tolist() == [3.0, 2.0, 1.0]


def test_similarity_is_cosine_of_consecutive_hidden_states_and_needs_no_logits() -> None:
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(4, 5, 8)).astype(np.float32)
    criterion = create_criterion("similarity")
    assert not criterion.needs_logits
    same = criterion.score(Boundary(None, hidden, hidden * 3))
    np.testing.assert_allclose(same, 1.0, atol=1e-6)
    opposite = criterion.score(Boundary(None, hidden, -hidden))
    np.testing.assert_allclose(opposite, -1.0, atol=1e-6)
    first = criterion.score(Boundary(None, hidden, None))
    assert first.tolist() == [0.0] * 4
    reshaped = criterion.score(Boundary(None, hidden, hidden[:, :4]))
    assert reshaped.tolist() == [0.0] * 4


def test_confidence_criteria_refuse_an_exit_without_a_classifier() -> None:
    with pytest.raises(ValueError, match="logits"):
        create_criterion("max_prob").score(Boundary(None))


def test_unknown_criterion_lists_the_known_ones() -> None:
    with pytest.raises(Exception, match="max_prob"):
        create_criterion("confidence")


def test_numpy_max_prob_matches_the_score_computed_inside_the_exported_graph(digits_package, digits) -> None:
    import onnxruntime as ort

    from edgeexit.package import open_package

    manifest = open_package(digits_package).manifest
    segment = manifest.segments[0]
    spec = manifest.exits[0]
    session = ort.InferenceSession(str(digits_package / segment.file), providers=["CPUExecutionProvider"])
    logits, score = session.run([spec.logits, spec.score], {segment.inputs[0].name: digits.x[:32]})
    np.testing.assert_allclose(create_criterion(spec.criterion).score(Boundary(logits)), score, atol=1e-5)
