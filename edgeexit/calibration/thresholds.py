"""Choosing thresholds: simulate early exit on full-depth scores, then search for cheap settings.

Everything here works on the (E, N) score and correctness matrices of one full-depth pass, so a
threshold setting is evaluated without running a model: a sample leaves at the first exit whose
score reaches its threshold (the final exit always), exactly the engine's rule.

Thresholds: ``+inf`` means "never exit here", ``-inf`` (used for the final exit) "always". JSON
cannot hold infinities, so the manifest stores "never" as ``NEVER`` (1e9): no criterion scores that
high (confidence and similarity are at most 1, patience at most the number of exits).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgeexit.manifest import NEVER_THRESHOLD

#: The finite stand-in for "never exit here" in a manifest (see ``finite_threshold``).
NEVER = NEVER_THRESHOLD
_MAX_SWEEPS = 50
#: Accuracy constraints a compute budget tries before refining (``choose_for_budget``).
_BUDGET_GRID = 256


@dataclass(frozen=True)
class Outcome:
    """What a threshold setting does on the calibration data.

    ``expected_ms`` is the mean over samples of the batch-1 time of the segments each one runs;
    ``exit_accuracy[k]`` is the accuracy among the samples that left at exit k (None if none did).
    """

    accuracy: float
    expected_ms: float
    exit_rate: tuple[float, ...]
    exit_accuracy: tuple[float | None, ...]
    samples: int


@dataclass(frozen=True)
class Choice:
    """Chosen thresholds (one per exit; +inf never, -inf for the final exit) and what they give.

    ``target_accuracy`` is the lowest accuracy the constraint allowed: the final exit's minus
    ``max_drop``, rounded up to a whole sample, so ``outcome.accuracy >= target_accuracy`` exactly.
    """

    thresholds: tuple[float, ...]
    outcome: Outcome
    final_accuracy: float
    target_accuracy: float


def finite_threshold(threshold: float) -> float:
    """A threshold JSON can hold: +inf ("never exit") becomes ``NEVER`` (1e9), -inf becomes -1e9."""
    if math.isinf(threshold):
        return NEVER if threshold > 0 else -NEVER
    return float(threshold)


def _check(
    scores: np.ndarray, correct: np.ndarray, segment_ms: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    c = np.asarray(correct)
    ms = np.asarray(segment_ms, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"scores must be (exits, samples) with at least one of each; got shape {s.shape}")
    if c.shape != s.shape or c.dtype != np.bool_:
        raise ValueError(f"correct must be a bool array shaped like the scores {s.shape}; got {c.dtype} {c.shape}")
    if ms.shape != (s.shape[0],) or not np.isfinite(ms).all() or (ms < 0).any():
        raise ValueError(f"segment_ms must hold {s.shape[0]} finite non-negative times; got {ms.tolist()}")
    return s, c, ms


def exit_index(scores: np.ndarray, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    """(N,) the exit each sample leaves at: the first k with ``scores[k] >= thresholds[k]``."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(thresholds, dtype=np.float64)
    if t.shape != (s.shape[0],):
        raise ValueError(f"need one threshold per exit ({s.shape[0]}); got {t.shape[0] if t.ndim else 'a scalar'}")
    leave = s >= t[:, None]
    leave[-1] = True
    return leave.argmax(axis=0)


def _outcome(index: np.ndarray, correct: np.ndarray, cumulative: np.ndarray) -> Outcome:
    exits, samples = correct.shape
    hit = correct[index, np.arange(samples)]
    counts = np.bincount(index, minlength=exits)
    right = np.bincount(index, weights=hit, minlength=exits)
    return Outcome(
        accuracy=float(hit.mean()),
        expected_ms=float(cumulative[index].mean()),
        exit_rate=tuple(float(n / samples) for n in counts),
        exit_accuracy=tuple(float(r / n) if n else None for r, n in zip(right, counts, strict=True)),
        samples=int(samples),
    )


def simulate(
    scores: np.ndarray,
    correct: np.ndarray,
    segment_ms: Sequence[float] | np.ndarray,
    thresholds: Sequence[float] | np.ndarray,
) -> Outcome:
    """Early exit replayed on full-depth data: ``segment_ms[k]`` is the cost of going from exit k-1 to k."""
    s, c, ms = _check(scores, correct, segment_ms)
    return _outcome(exit_index(s, thresholds), c, np.cumsum(ms))


def _cuts(row: np.ndarray, count: int) -> np.ndarray:
    """Candidate thresholds for one exit: cut points just below its score quantiles.

    A cut sits halfway between two neighbouring distinct scores, rounded to float32 (the runtime
    compares float32 scores, and numpy 2 casts a Python float threshold to float32 for that), so
    a score that moves by a rounding error between the calibration pass and a compacted batch does
    not flip its decision. Integer scores (patience) are cut at the integers themselves.
    """
    finite = np.sort(row[np.isfinite(row)])
    if finite.size == 0:
        return np.empty(0)
    distinct = np.unique(finite)
    levels = np.linspace(0.0, 1.0, max(count, 2))
    values = np.quantile(finite, levels, method="inverted_cdf")
    positions = np.unique(np.searchsorted(distinct, values))
    if np.array_equal(distinct, np.floor(distinct)):
        return distinct[positions]
    cuts = []
    for i in positions:
        hi = float(distinct[i])
        if i == 0:
            cuts.append(hi)
            continue
        lo = float(distinct[i - 1])
        middle = float(np.float32((lo + hi) / 2.0))
        cuts.append(middle if lo < middle <= hi else hi)
    return np.asarray(cuts)


def _required(final_correct: int, samples: int, max_drop: float) -> int:
    """The fewest correct samples that keep accuracy within ``max_drop`` of the final exit's.

    Counting samples rather than comparing float accuracies makes the constraint exact: 0.95 - 0.01
    is not 0.94 in binary, and an off-by-one-sample verdict would make the search unstable.
    """
    return max(0, math.ceil(final_correct - max_drop * samples - 1e-9))


def choose_thresholds(
    scores: np.ndarray,
    correct: np.ndarray,
    segment_ms: Sequence[float] | np.ndarray,
    max_drop: float,
    candidates: int = 64,
    *,
    margin: float = 0.0,
) -> Choice:
    """Thresholds with the lowest expected latency whose accuracy is at most ``max_drop`` below
    the final exit's (``max_drop`` is a fraction: 0.01 is one percentage point).

    ``margin`` asks the drop to hold on new data too: the measured drop plus ``margin`` standard
    errors must stay within ``max_drop``. Thresholds picked right at the edge of the constraint
    overfit the calibration set (seen: 1.0 point there, 1.8 on unseen images); the standard error
    of a paired accuracy difference is sqrt(discordant samples) / N (McNemar), where a sample is
    discordant when its early exit and the final exit disagree on being right.

    Coordinate descent from full depth (every early threshold +inf, which meets the constraint):
    each exit in turn takes the candidate that lowers expected latency most while the constraint
    holds (ties: more correct samples, then the higher threshold), until a sweep changes nothing.
    Candidates are ``candidates`` quantile cuts of the exit's scores plus +inf. A row of -inf
    scores (an exit that must not exit) offers only +inf. Each step prices all candidates of one
    exit at once against the others' fixed thresholds, so a sweep costs O(E^2 * N).
    """
    s, c, ms = _check(scores, correct, segment_ms)
    if not (max_drop >= 0.0 and math.isfinite(max_drop)):
        raise ValueError(f"max_drop must be a finite fraction >= 0 (0.01 = one point); got {max_drop}")
    if candidates < 1:
        raise ValueError(f"candidates must be at least 1; got {candidates}")
    if not (margin >= 0.0 and math.isfinite(margin)):
        raise ValueError(f"margin must be a finite number of standard errors >= 0; got {margin}")
    exits, samples = s.shape
    cumulative = np.cumsum(ms)
    final_correct = int(c[-1].sum())
    discordant = c != c[-1]  # (E, N): this exit and the final one disagree on being right
    need = _required(final_correct, samples, max_drop)
    thresholds = np.full(exits, np.inf)
    thresholds[-1] = -np.inf
    options = [np.append(_cuts(s[k], candidates), np.inf) for k in range(exits - 1)]
    columns = np.arange(samples)
    # Each exit's samples sorted by score once: the samples a candidate t lets out are a suffix of
    # that order, so all candidates are priced with one cumulative sum instead of a (candidates, N) mask.
    orders = [np.argsort(s[k], kind="stable") for k in range(exits - 1)]
    starts = [np.searchsorted(s[k][order], options[k], side="left") for k, order in enumerate(orders)]
    for _ in range(_MAX_SWEEPS):
        changed = False
        for k in range(exits - 1):
            # Where each sample leaves if exit k never fires; exit k only captures those reaching it.
            without = thresholds.copy()
            without[k] = np.inf
            base = exit_index(s, without)
            reach = (base > k) & ~np.isnan(s[k])  # NaN sorts last but never passes a threshold
            base_ms = cumulative[base]
            base_hit = c[base, columns].astype(np.int64)
            gain_ms = np.where(reach, cumulative[k] - base_ms, 0.0)[orders[k]]
            gain_hit = np.where(reach, c[k].astype(np.int64) - base_hit, 0)[orders[k]]
            base_disc = discordant[base, columns].astype(np.int64)
            gain_disc = np.where(reach, discordant[k].astype(np.int64) - base_disc, 0)[orders[k]]
            suffix_ms = np.append(np.cumsum(gain_ms[::-1])[::-1], 0.0)
            suffix_hit = np.append(np.cumsum(gain_hit[::-1])[::-1], 0)
            suffix_disc = np.append(np.cumsum(gain_disc[::-1])[::-1], 0)
            total_ms = base_ms.sum() + suffix_ms[starts[k]]
            total_hit = int(base_hit.sum()) + suffix_hit[starts[k]]
            total_disc = int(base_disc.sum()) + suffix_disc[starts[k]]
            feasible = np.flatnonzero(total_hit - margin * np.sqrt(total_disc) >= need - 1e-9)
            current = int(np.flatnonzero(options[k] == thresholds[k])[0])
            if feasible.size == 0:  # cannot happen (+inf restores a feasible state), kept for safety
                continue
            order = np.lexsort((-options[k][feasible], -total_hit[feasible], total_ms[feasible]))
            best = int(feasible[order[0]])
            tolerance = 1e-9 * max(1.0, abs(float(total_ms[current])))
            better = total_ms[best] < total_ms[current] - tolerance or (
                total_ms[best] <= total_ms[current] + tolerance and total_hit[best] > total_hit[current]
            )
            if better and options[k][best] != thresholds[k]:
                thresholds[k] = options[k][best]
                changed = True
        if not changed:
            break
    outcome = _outcome(exit_index(s, thresholds), c, cumulative)
    return Choice(
        thresholds=tuple(float(t) for t in thresholds),
        outcome=outcome,
        final_accuracy=final_correct / samples,
        target_accuracy=need / samples,
    )


def choose_for_budget(
    scores: np.ndarray,
    correct: np.ndarray,
    segment_ms: Sequence[float] | np.ndarray,
    budget_ms: float,
    candidates: int = 64,
) -> Choice:
    """The most accurate thresholds whose expected latency (the mean over samples of the segments
    each one runs, as ``Outcome.expected_ms``) stays within ``budget_ms``: the compute-budget mode
    (EERO and others fix the cost and spend it where it buys the most accuracy).

    Searches the accuracy constraint instead of re-implementing the descent: ``choose_thresholds``
    with "at least ``need`` correct" gives the cheapest thresholds for each ``need``, and the cost
    falls as ``need`` falls, though not strictly (the descent is greedy: a binary search alone
    settled 29 of 3,000 samples short of a setting that fit). So a grid of ``GRID + 1`` needs first,
    then a binary search between the best grid point that fits and the next one up; every probe that
    fits is a candidate. A search over the descent's family, not an exact optimum (the test allows
    half a point against any member of that family). Raises ValueError, naming the cheapest plan
    found, when even that exceeds the budget.
    """
    s, c, ms = _check(scores, correct, segment_ms)
    if not (budget_ms > 0.0 and math.isfinite(budget_ms)):
        raise ValueError(f"budget_ms must be a finite time above 0 ms; got {budget_ms}")
    samples = s.shape[1]
    final_correct = int(c[-1].sum())
    found: list[Choice] = []

    def fits(need: int) -> bool:
        choice = choose_thresholds(s, c, ms, (final_correct - need) / samples, candidates)
        if choice.outcome.expected_ms <= budget_ms:
            found.append(choice)
            return True
        return False

    grid = sorted({round(final_correct * k / _BUDGET_GRID) for k in range(_BUDGET_GRID + 1)})
    fitting = [need for need in grid if fits(need)]
    if not fitting:
        cheapest = choose_thresholds(s, c, ms, final_correct / samples, candidates).outcome.expected_ms
        raise ValueError(
            f"a budget of {budget_ms:.4g} ms per sample cannot be met: the cheapest thresholds found cost "
            f"{cheapest:.4g} ms (full depth {float(np.cumsum(ms)[-1]):.4g} ms); expected at least that"
        )
    lo = max(fitting)
    above = [need for need in grid if need > lo]
    hi = min(above) - 1 if above else lo
    lo += 1
    while lo <= hi:  # the largest need between the best fitting grid point and the next one up
        need = (lo + hi) // 2
        if fits(need):
            lo = need + 1
        else:
            hi = need - 1
    best = max(found, key=lambda choice: (choice.outcome.accuracy, -choice.outcome.expected_ms))
    return dataclasses.replace(best, target_accuracy=best.outcome.accuracy)


def pareto_curve(
    scores: np.ndarray,
    correct: np.ndarray,
    segment_ms: Sequence[float] | np.ndarray,
    points: int = 40,
) -> list[tuple[float, float]]:
    """The accuracy-vs-expected-latency frontier: non-dominated ``(expected_ms, accuracy)`` pairs,
    sorted by latency (so accuracy rises strictly along the list).

    Built from two sweeps, since neither alone covers the frontier well: ``choose_thresholds`` for
    ``points`` budgets from 0 to the drop of sending everyone out at the first exit, and one shared
    quantile level for all early exits. Full depth is always on it.
    """
    s, c, ms = _check(scores, correct, segment_ms)
    exits, samples = s.shape
    cumulative = np.cumsum(ms)
    found: list[tuple[float, float]] = []

    def add(thresholds: np.ndarray) -> None:
        outcome = _outcome(exit_index(s, thresholds), c, cumulative)
        found.append((outcome.expected_ms, outcome.accuracy))

    full = np.full(exits, np.inf)
    full[-1] = -np.inf
    add(full)
    final_accuracy = float(c[-1].mean())
    floor = min((float(c[k].mean()) for k in range(exits - 1) if np.isfinite(s[k]).any()), default=final_accuracy)
    widest = max(final_accuracy - floor, 0.0) + 1.0 / samples
    count = max(points, 2)
    for drop in np.linspace(0.0, widest, count):
        chosen = choose_thresholds(s, c, ms, float(drop), candidates=count).outcome
        found.append((chosen.expected_ms, chosen.accuracy))
    finite_rows = [np.sort(s[k][np.isfinite(s[k])]) for k in range(exits - 1)]
    for level in np.linspace(0.0, 1.0, count):
        shared = full.copy()
        for k, row in enumerate(finite_rows):
            if row.size:
                shared[k] = float(np.quantile(row, level, method="inverted_cdf"))
        add(shared)
    found.sort(key=lambda p: (p[0], -p[1]))
    frontier: list[tuple[float, float]] = []
    for ms_value, accuracy in found:
        if not frontier or accuracy > frontier[-1][1]:
            frontier.append((ms_value, accuracy))
    return frontier
