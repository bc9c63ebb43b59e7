"""Thresholds with a statistical guarantee: Learn-then-Test with fixed-sequence testing.

The margin method (``choose_thresholds(..., margin=1)``) keeps one standard error in reserve: a
heuristic, and on unseen images the drop came out at 0.46-1.24 points for a 1-point budget.
Learn-then-Test (Angelopoulos, Bates, Candès, Jordan and Lei, "Learn then Test: Calibrating
Predictive Algorithms to Achieve Risk Control", 2021) turns the choice into multiple hypothesis
testing: for each candidate threshold set ``t`` the null hypothesis is "its risk on new data
exceeds EPS"; the sets whose null is rejected at level DELTA by a family-wise-error-controlling
procedure are certified, and any of them keeps ``P(risk > EPS) <= DELTA`` over the draw of the
calibration data (for new data exchangeable with it). CALM (Schuster et al., "Confident Adaptive
Language Modeling", 2022) calibrates per-token exits this way.

What is controlled here, per sample (both losses are 0 or 1, so the binomial tail bound is exact
in its assumptions):

- ``against="final"``: the early answer disagrees with the final exit's (CALM's "textual
  consistency"). Needs no labels; it bounds the accuracy drop too, since a sample can only lose
  accuracy where the answers differ.
- ``against="labels"``: the final exit is right and the early answer wrong (CALM's "risk
  consistency", the drop's positive part). Its mean is at least the accuracy drop (the drop
  subtracts the samples an early exit gets right where the final one does not), so bounding it
  bounds the drop.

The p-value of each null is the Hoeffding-Bentkus one (Bates, Angelopoulos, Lei, Malik and
Jordan, "Distribution-Free, Risk-Controlling Prediction Sets", 2021, eq. (8)-(10)), valid for a
loss bounded in [0, 1]: ``min(exp(-n h(r, EPS)), e * P(Binomial(n, EPS) <= ceil(n r)))``.

Fixed-sequence testing needs an order fixed before the test data is seen. The candidate threshold
sets come from one dimension of per-exit thresholds, so the order is learned on a held-apart share
of the calibration data (Pareto Testing: Laufer-Goldshtein, Fisch, Barzilay and Jaakkola,
"Efficiently Controlling Multiple Risks with Pareto Testing", ICLR 2023): ``choose_thresholds``
with growing loss budgets gives a path from full depth to ever cheaper sets, ordered from the
most conservative; the rest of the data tests them in that order at level DELTA each, stopping at
the first null not rejected. The cheapest rejected set is certified. Full depth needs no test
(its loss is 0 by definition) and is the answer when the first set already fails: the
calibration then says that nothing could be certified at that n rather than pretend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from edgeexit.calibration.thresholds import Choice, _outcome, choose_thresholds, exit_index
from edgeexit.manifest import RiskGuarantee

#: How a RiskGuarantee names this procedure: Learn-then-Test, fixed-sequence, Hoeffding-Bentkus.
METHOD = "learn-then-test (fixed sequence, Hoeffding-Bentkus)"
#: What the certified loss compares an early answer with (see the module docstring).
AGAINST = ("final", "labels")
#: Share of the calibration data that orders the candidates (the rest tests them).
PATH_SHARE = 0.3
#: Loss budgets that trace the candidate path, as multiples of EPS (beyond ~2 EPS nothing passes).
PATH_BUDGETS = np.linspace(0.0, 2.0, 81)[1:]


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k), summed in log space (numpy only: the device side has no scipy)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    i = np.arange(1, k + 1, dtype=np.float64)
    log_choose = np.concatenate(([0.0], np.cumsum(np.log(n - i + 1.0) - np.log(i))))
    j = np.arange(k + 1, dtype=np.float64)
    terms = log_choose + j * math.log(p) + (n - j) * math.log1p(-p)
    top = float(terms.max())
    return float(min(1.0, math.exp(top) * np.exp(terms - top).sum()))


def _kl_bernoulli(a: float, b: float) -> float:
    """h(a, b) = a log(a / b) + (1 - a) log((1 - a) / (1 - b)), with 0 log 0 = 0."""
    total = 0.0
    if a > 0.0:
        total += a * math.log(a / b)
    if a < 1.0:
        total += (1.0 - a) * math.log((1.0 - a) / (1.0 - b))
    return total


def hoeffding_bentkus_p_value(loss: float, n: int, eps: float) -> float:
    """The p-value of "the risk exceeds ``eps``" given a mean loss ``loss`` over ``n`` samples of a
    loss in [0, 1] (Bates et al. 2021, RCPS, Hoeffding-Bentkus)."""
    if n <= 0:
        return 1.0
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be a risk level in (0, 1); got {eps}")
    hoeffding = math.exp(-n * _kl_bernoulli(min(loss, eps), eps))
    bentkus = math.e * binomial_cdf(math.ceil(n * loss - 1e-9), n, eps)
    return min(1.0, hoeffding, bentkus)


def upper_bound(loss: float, n: int, delta: float) -> float:
    """The (1 - delta) upper confidence bound on the risk: the least eps whose null the
    Hoeffding-Bentkus test rejects at ``delta`` (bisection; 1.0 when none below 1 is)."""
    lo, hi = loss, 1.0 - 1e-12
    if n <= 0 or hoeffding_bentkus_p_value(loss, n, hi) > delta:
        return 1.0
    for _ in range(60):
        mid = (lo + hi) / 2.0
        if mid > 0.0 and hoeffding_bentkus_p_value(loss, n, mid) <= delta:
            hi = mid
        else:
            lo = mid
    return hi


def exit_predictions(logits: Sequence[np.ndarray | None], samples: int) -> np.ndarray:
    """(E, N) the class each exit answers; -1 where an exit has no classifier (it never agrees)."""
    return np.stack([np.full(samples, -1) if z is None else z.argmax(axis=-1) for z in logits])


def losses(correct: np.ndarray, predictions: np.ndarray | None, against: str) -> np.ndarray:
    """(E, N) bool: the loss of answering at exit k, per sample (the final row is all False).

    ``against="final"`` needs ``predictions`` (E, N), the class each exit answers; ``"labels"``
    needs only ``correct`` (E, N), whether each exit's answer is right."""
    if against == "final":
        if predictions is None:
            raise ValueError("against='final' needs each exit's predictions")
        lost = np.asarray(predictions) != np.asarray(predictions)[-1]
    elif against == "labels":
        c = np.asarray(correct, dtype=bool)
        lost = c[-1][None, :] & ~c
    else:
        raise ValueError(f"unknown loss {against!r}; expected one of {', '.join(AGAINST)}")
    lost = np.array(lost, dtype=bool)
    lost[-1] = False
    return lost


def ordering_split(samples: int, seed: int, share: float = PATH_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """The indices that order the candidates (``share`` of them, drawn by ``seed``) and those
    that test them. The ``learned`` criterion trains its gates on half of the first
    (``gates.gate_share``): nothing a test sample's loss depends on was fitted to it."""
    order = np.random.default_rng(seed).permutation(samples)
    cut = round(share * samples)
    return order[:cut], order[cut:]


def certify_thresholds(
    scores: np.ndarray,
    correct: np.ndarray,
    segment_ms: Sequence[float] | np.ndarray,
    eps: float,
    delta: float,
    *,
    predictions: np.ndarray | None = None,
    against: str = "final",
    path_share: float = PATH_SHARE,
    seed: int = 0,
    candidates: int = 64,
    ordering_rows: np.ndarray | None = None,
) -> tuple[Choice, RiskGuarantee]:
    """The cheapest thresholds Learn-then-Test certifies: loss above ``eps`` on new data with
    probability at most ``delta``. ``scores`` / ``correct`` / ``segment_ms`` as for
    ``choose_thresholds``; the Choice's outcome is on all the calibration data. ``ordering_rows``:
    the ordering share's samples to order by (default: all of them); the others are left out when
    their scores would flatter them (the samples a learned gate was trained on)."""
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be a fraction in (0, 1) (0.01 = one point); got {eps}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be a probability in (0, 1); got {delta}")
    if not 0.0 < path_share < 1.0:
        raise ValueError(f"path_share must be in (0, 1); got {path_share}")
    s = np.asarray(scores, dtype=np.float64)
    c = np.asarray(correct, dtype=bool)
    lost = losses(c, predictions, against)
    exits, samples = s.shape
    path, test = ordering_split(samples, seed, path_share)
    if ordering_rows is not None:
        path = np.intersect1d(path, ordering_rows)
    ms = np.asarray(segment_ms, dtype=np.float64)
    full = np.full(exits, np.inf)
    full[-1] = -np.inf
    # the path: cheapest sets within growing loss budgets on the ordering share ("correct" = no loss)
    found: dict[tuple[float, ...], float] = {}
    if path.size:
        unharmed = ~lost[:, path]
        for budget in PATH_BUDGETS * eps:
            chosen = choose_thresholds(s[:, path], unharmed, ms, float(budget), candidates)
            found.setdefault(chosen.thresholds, chosen.outcome.expected_ms)
    sequence = sorted((t for t in found if t != tuple(full)), key=lambda t: -found[t])  # most conservative first
    best, best_loss, tested = tuple(full), 0.0, 0
    for thresholds in sequence:
        tested += 1
        index = exit_index(s[:, test], thresholds)
        loss = float(lost[index, test].mean()) if test.size else 1.0
        if hoeffding_bentkus_p_value(loss, int(test.size), eps) > delta:
            break
        best, best_loss = thresholds, loss
    certified = best != tuple(full)
    outcome = _outcome(exit_index(s, best), c, np.cumsum(ms))
    final_accuracy = float(c[-1].mean())
    choice = Choice(thresholds=tuple(float(t) for t in best), outcome=outcome, final_accuracy=final_accuracy,
                    target_accuracy=final_accuracy - eps)  # fmt: skip
    guarantee = RiskGuarantee(
        method=METHOD, against=against, eps=float(eps), delta=float(delta), tested=int(test.size), loss=best_loss,
        bound=upper_bound(best_loss, int(test.size), delta), certified=certified, candidates=tested, seed=int(seed),
    )  # fmt: skip
    return choice, guarantee
