"""From a full-depth pass over labelled data to a recalibrated manifest.

Only thresholds, temperatures and criteria change, never a graph, so the package_id (a hash of
the graphs) stays what it was and a tail server keeps accepting the package's hidden tensors.

Exits without a classifier: the engine scores them by similarity whatever the criterion, and the
answer they give is no prediction at all, which calibration counts as a wrong answer. They may
exit only when the requested criterion is ``similarity``; otherwise their threshold is ``NEVER``.

The engine uses the graph's own score output when an exit keeps its exported criterion (fed the
calibrated temperature where the graph takes it as an input, else only at temperature 1.0);
calibration scores in numpy, and the engine recomputes in numpy any in-graph score within
``NEAR_THRESHOLD`` of its threshold, so the decisions calibration simulates are the ones taken.
An exit calibrated to another criterion than its graph computes loses its in-graph ``score``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from edgeexit.calibration.gates import GateTraining, fit_gate, gate_share
from edgeexit.calibration.risk_control import certify_thresholds, exit_predictions, ordering_split
from edgeexit.calibration.scores import exit_scores
from edgeexit.calibration.temperature import fit_temperature
from edgeexit.calibration.thresholds import (
    Choice,
    Outcome,
    choose_for_budget,
    choose_thresholds,
    finite_threshold,
    pareto_curve,
    simulate,
)
from edgeexit.errors import DataError, UnknownNameError, UsageError
from edgeexit.manifest import (
    CRITERION_NAMES,
    LEARNED_CRITERION,
    CalibrationRecord,
    ExitCalibration,
    ExitGate,
    ExitSpec,
    Manifest,
)

if TYPE_CHECKING:  # the runtime imports onnxruntime; calibration only reads its numpy record
    from edgeexit.runtime.engine import FullDepth


def digest_data(x: np.ndarray | Mapping[str, np.ndarray], labels: np.ndarray) -> str:
    """A digest of a labelled data set (dtype, shape and bytes of inputs and labels) for the
    calibration record; a text encoder's inputs are a mapping (token ids, mask), taken by name."""
    digest = hashlib.sha256()
    inputs = [x[name] for name in sorted(x)] if isinstance(x, Mapping) else [x]
    for array in (*map(np.ascontiguousarray, inputs), np.ascontiguousarray(labels)):
        digest.update(f"{array.dtype.str}{array.shape}\n".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def check_labels(labels: object, samples: int, num_classes: int) -> np.ndarray:
    """Labels as (N,) int64, or a DataError that says what was found and what was expected."""
    array = np.asarray(labels)
    expected = f"expected {samples} integer class indices in [0, {num_classes})"
    if array.ndim != 1:
        raise DataError(f"labels have shape {array.shape}; {expected} as a 1-D array")
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"labels have dtype {array.dtype}; {expected} (convert with labels.astype(np.int64))")
    if array.shape[0] != samples:
        raise DataError(f"there are {array.shape[0]} labels for {samples} samples; {expected}")
    if samples and (array.min() < 0 or array.max() >= num_classes):
        bad = array[(array < 0) | (array >= num_classes)]
        raise DataError(
            f"{bad.size} label(s) out of range, e.g. {bad[0]} (labels span [{array.min()}, {array.max()}]); {expected}"
        )
    return array.astype(np.int64)


def exit_costs(manifest: Manifest, segment_ms: Sequence[float]) -> np.ndarray:
    """Per exit, the time of the segments between the previous exit and this one."""
    if len(segment_ms) != len(manifest.segments):
        raise UsageError(
            f"the full-depth record times {len(segment_ms)} segments; the manifest has {len(manifest.segments)}"
        )
    cumulative = np.cumsum(np.asarray(segment_ms, dtype=np.float64))
    at_exit = np.array([cumulative[spec.segment] for spec in manifest.exits])
    return np.diff(at_exit, prepend=0.0)


def calibrate_manifest(
    manifest: Manifest,
    full: FullDepth,
    labels: np.ndarray,
    *,
    criterion: str | None,
    max_drop: float,
    data_sha256: str,
    candidates: int = 64,
    margin: float = 1.0,
    delta: float | None = None,
    against: str = "final",
    seed: int = 0,
    budget_ms: float | None = None,
) -> tuple[Manifest, Choice]:
    """Fit temperatures, choose thresholds for ``max_drop``, and record both in a new manifest.

    Two methods. ``delta`` None: the margin method, ``margin`` standard errors (see
    ``choose_thresholds``) kept in reserve so the drop also holds on data the thresholds were not
    chosen on (a heuristic; 0 spends the whole budget on this data). ``delta`` given: Learn-then-Test
    (``risk_control.certify_thresholds``), the cheapest thresholds whose loss ``against`` the final
    exit's answer (or the labels) exceeds ``max_drop`` on new data with probability at most
    ``delta``; when none can be certified the early exits never fire, and the record says so.
    ``budget_ms`` given instead (the compute-budget mode): the most accurate thresholds whose
    expected latency on this data stays within it (``choose_for_budget``; ``max_drop`` unused), or
    a UsageError naming the cheapest plan when it cannot be met.

    ``criterion`` None keeps each exit's own criterion. Every exit with logits gets its fitted
    temperature (the final one too: it shapes the probabilities a Result reports); the final exit
    keeps its threshold. The record's per-exit accuracy is among the samples that left there, or,
    where none did, the exit's accuracy over all samples (what it would score if it were used).

    The ``learned`` criterion trains a gate per early exit (``fit_gates``) on half of the share
    Learn-then-Test orders its candidates with (``gates.gate_share``, drawn by ``seed``); every
    method then chooses, orders and tests the thresholds on the other samples only. With
    Learn-then-Test or learned gates the temperatures are fitted on the ordering share, so nothing
    a test sample's loss depends on was fitted to it.
    """
    if criterion is not None and criterion not in CRITERION_NAMES:
        raise UnknownNameError(f"unknown criterion {criterion!r}; expected one of {', '.join(CRITERION_NAMES)}")
    exits = manifest.exits
    if len(full.logits) != len(exits) or len(full.similarity) != len(exits):
        raise UsageError(
            f"the full-depth record has {len(full.logits)} exits; the manifest has {len(exits)}: "
            "run Engine.run_full on this package"
        )
    samples = full.samples
    final_logits = full.logits[-1]
    num_classes = manifest.num_classes or (final_logits.shape[-1] if final_logits is not None else 0)
    y = check_labels(labels, samples, num_classes)
    if samples == 0:
        raise DataError("calibration got no samples; expected a labelled validation set")

    wanted = [spec.criterion if (criterion is None or spec.final) else criterion for spec in exits]
    scored = ["similarity" if full.logits[k] is None else name for k, name in enumerate(wanted)]
    learned = any(name == LEARNED_CRITERION and not spec.final for name, spec in zip(scored, exits, strict=True))
    # Learn-then-Test and the learned gates fit nothing on the samples that test (or choose) the
    # thresholds: the temperatures too come from the ordering share then
    fit_on = ordering_split(samples, seed)[0] if (delta is not None or learned) and samples > 1 else slice(None)
    temperatures = [
        fit_temperature(logits[fit_on], y[fit_on]) if logits is not None else spec.temperature
        for spec, logits in zip(exits, full.logits, strict=True)
    ]
    gate_rows = gate_share(samples, seed) if learned else np.empty(0, dtype=np.int64)
    gates = fit_gates(scored, exits, full, temperatures, gate_rows, seed)
    scores = exit_scores(scored, full, temperatures, gates)
    correct = np.zeros(scores.shape, dtype=bool)
    for k, logits in enumerate(full.logits):
        if logits is not None:
            correct[k] = logits.argmax(axis=-1) == y
        if logits is None and wanted[k] != "similarity" and not exits[k].final:
            scores[k] = -np.inf  # no candidate threshold: this exit never fires
    costs = exit_costs(manifest, full.segment_ms)
    guarantee = None
    # the samples the margin and budget methods choose on: not those the gates were trained on
    unseen_by_gates = np.setdiff1d(np.arange(samples), gate_rows) if learned else None
    chosen_on = slice(None) if unseen_by_gates is None else unseen_by_gates
    if budget_ms is not None and delta is not None:
        raise UsageError("a compute budget and a certified drop (delta) are two ways to choose thresholds; give one")
    if budget_ms is not None:
        try:
            choice = choose_for_budget(scores[:, chosen_on], correct[:, chosen_on], costs, budget_ms, candidates)
        except ValueError as err:
            raise UsageError(str(err)) from None
    elif delta is None:
        choice = choose_thresholds(
            scores[:, chosen_on], correct[:, chosen_on], costs, max_drop, candidates, margin=margin
        )
    else:
        try:
            choice, guarantee = certify_thresholds(
                scores, correct, costs, max_drop, delta, predictions=exit_predictions(full.logits, samples),
                against=against, seed=seed, candidates=candidates,
                ordering_rows=unseen_by_gates,
            )  # fmt: skip
        except ValueError as err:
            raise UsageError(f"cannot certify thresholds: {err}") from None

    new_exits: list[ExitSpec] = []
    records: list[ExitCalibration] = []
    for k, spec in enumerate(exits):
        if spec.final:
            updated = dataclasses.replace(spec, temperature=temperatures[k])
        else:
            threshold = finite_threshold(choice.thresholds[k])
            changes: dict[str, object] = {"criterion": scored[k], "threshold": threshold}
            if scored[k] != spec.criterion:  # the graph's score output computes the old criterion
                changes["score"] = None
            changes["temperature"] = temperatures[k]
            changes["gate"] = gates[k]
            updated = dataclasses.replace(spec, **changes)
        new_exits.append(updated)
        accuracy = choice.outcome.exit_accuracy[k]
        records.append(
            ExitCalibration(
                exit=k,
                threshold=updated.threshold,
                temperature=updated.temperature,
                accuracy=float(correct[k].mean()) if accuracy is None else accuracy,
                exit_rate=choice.outcome.exit_rate[k],
            )
        )
    early = [name for name, spec in zip(wanted, exits, strict=True) if not spec.final]
    record = CalibrationRecord(
        criterion=criterion or ("+".join(dict.fromkeys(early)) if early else exits[-1].criterion),
        max_drop=float(max_drop),
        margin=float(margin) if guarantee is None and budget_ms is None else 0.0,
        method="budget" if budget_ms is not None else ("margin" if guarantee is None else "ltt"),
        guarantee=guarantee,
        budget_ms=None if budget_ms is None else float(budget_ms),
        samples=samples,
        data_sha256=data_sha256,
        final_accuracy=choice.final_accuracy,
        accuracy=choice.outcome.accuracy,
        expected_latency_ms=choice.outcome.expected_ms,
        exits=tuple(records),
    )
    return manifest.with_exits(tuple(new_exits), record), choice


def manifest_scores(exits: Sequence[ExitSpec], full: FullDepth) -> np.ndarray:
    """(E, N) scores of a calibrated manifest's exits (criteria, temperatures, gates) on ``full``."""
    return exit_scores([s.criterion for s in exits], full, [s.temperature for s in exits], [s.gate for s in exits])


def fit_gates(
    criteria: Sequence[str],
    exits: Sequence[ExitSpec],
    full: FullDepth,
    temperatures: Sequence[float],
    train: np.ndarray,
    seed: int,
) -> list[ExitGate | None]:
    """Per exit, a gate trained for the ``learned`` criterion (None for the others and the final
    exit) on the samples ``train`` (``gates.gate_share``): no threshold is chosen, ordered or tested
    on those, so the scores thresholds see are the scores unseen data will get."""
    gates: list[ExitGate | None] = [None] * len(exits)
    learned = [k for k, name in enumerate(criteria) if name == LEARNED_CRITERION and not exits[k].final]
    final_logits = full.logits[-1]
    if not learned or final_logits is None:
        return gates
    if train.size == 0:
        raise DataError(f"the learned criterion needs calibration samples to train its gates on; got {full.samples}")
    final_answer = final_logits.argmax(axis=-1)
    for k in learned:
        logits = full.logits[k]
        if logits is not None:
            agree = logits.argmax(axis=-1) == final_answer
            gates[k] = fit_gate(logits[train], temperatures[k], agree[train], GateTraining(seed=seed))
    return gates


def pareto_for(manifest: Manifest, full: FullDepth, labels: np.ndarray) -> tuple[list[tuple[float, float]], Outcome]:
    """The accuracy-latency frontier of a (calibrated) manifest's criteria and temperatures on
    the same full-depth pass, and the outcome of its current thresholds, for the Pareto plot."""
    scores, correct, costs, thresholds = _replay(manifest, full, labels)
    return pareto_curve(scores, correct, costs), simulate(scores, correct, costs, thresholds)


def manifest_outcome(manifest: Manifest, full: FullDepth, labels: np.ndarray) -> Outcome:
    """What a (calibrated) manifest's exits do on ``full``: accuracy, expected latency from the
    pass's segment times, exit rates; the figures a benchmark reads on data it did not calibrate on."""
    return simulate(*_replay(manifest, full, labels))


def _replay(
    manifest: Manifest, full: FullDepth, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """The manifest's scores, each exit's correctness, the exits' costs and thresholds on ``full``."""
    y = check_labels(labels, full.samples, manifest.num_classes)
    scores = manifest_scores(manifest.exits, full)
    correct = np.zeros(scores.shape, dtype=bool)
    for k, logits in enumerate(full.logits):
        if logits is not None:
            correct[k] = logits.argmax(axis=-1) == y
    costs = exit_costs(manifest, full.segment_ms)
    thresholds = [-np.inf if spec.final else spec.threshold for spec in manifest.exits]
    return scores, correct, costs, thresholds
