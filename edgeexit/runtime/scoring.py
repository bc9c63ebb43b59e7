"""How an exit decides, and the Result it gives: the rules, the scores, the answer.

An exit's rule (criterion, threshold, temperature) comes from the manifest, or from the
caller's override for every non-final exit. Scoring uses the graph's own score when it already
is the answer, else the criterion's numpy code, and computes a softmax only when someone reads
it. Both walks (one sample, a batch) and a tail server's logits go through the same ``Scorer``,
so a sample gets the same Result however it was run.
"""

from __future__ import annotations

import time
from collections.abc import Container, Sequence
from typing import TYPE_CHECKING

import numpy as np

from edgeexit.criteria import Boundary, create_criterion, softmax
from edgeexit.errors import InputError, UnknownNameError
from edgeexit.manifest import CRITERION_NAMES, IN_GRAPH_CRITERIA, LEARNED_CRITERION, NEVER_THRESHOLD, ExitSpec
from edgeexit.runtime.results import ExitRule, OffloadInfo, Pending, Result, answer

if TYPE_CHECKING:
    from edgeexit.runtime.walk import Walk


def exit_rules(
    exits: Sequence[ExitSpec],
    criterion: str | None,
    threshold: float | None,
    tempered: Container[int] = (),
    gated: Container[int] = (),
) -> tuple[ExitRule, ...]:
    """Each exit's rule: the manifest's, with ``criterion`` / ``threshold`` overriding every
    non-final exit (the CLI's ``--criterion`` and ``--threshold``). ``tempered`` holds the exits
    whose graph is fed the exit's temperature: their in-graph score holds at any temperature
    (without it, only at 1); ``gated`` those whose graph is fed the exit's trained gate (a
    ``learned`` in-graph score holds only then)."""
    return tuple(_rule(spec, criterion, threshold, spec.index in tempered, spec.index in gated) for spec in exits)


def _rule(spec: ExitSpec, criterion: str | None, threshold: float | None, tempered: bool, gated: bool) -> ExitRule:
    chosen = spec.criterion if (criterion is None or spec.final) else criterion
    if chosen not in CRITERION_NAMES:
        raise UnknownNameError(f"unknown criterion {chosen!r}; expected one of {', '.join(CRITERION_NAMES)}")
    if spec.logits is None and chosen != "similarity":
        chosen = "similarity"  # an exit without a classifier can only stop by similarity
    limit = spec.threshold if (threshold is None or spec.final) else float(threshold)
    at_graph_temperature = tempered or spec.temperature == 1.0
    in_graph = chosen in IN_GRAPH_CRITERIA or (chosen == LEARNED_CRITERION and gated)
    use_graph = chosen == spec.criterion and in_graph and at_graph_temperature
    if not use_graph:
        return ExitRule(chosen, limit, spec.temperature, None, spec.final, gate=spec.gate)
    return ExitRule(chosen, limit, spec.temperature, spec.score, spec.final, spec.probabilities, spec.gate)


#: How close to its threshold an in-graph score must be to be recomputed in numpy (scores are in
#: [0, 1]; the graph's and numpy's float32 softmax differ by about 1e-7).
NEAR_THRESHOLD = 1e-5


def _near(score: np.ndarray, threshold: float) -> bool:
    if score.shape[0] == 1:  # batch 1: plain floats, no numpy calls
        return abs(float(score[0]) - threshold) <= NEAR_THRESHOLD
    return bool((np.abs(score - np.float32(threshold)) <= NEAR_THRESHOLD).any())


class Scorer:
    """Every exit's rule and criterion, and the package's labels: scores outputs, builds Results.

    ``rules`` may be replaced after construction (a benchmark scoring by the graph's own score);
    the criteria stay those the rules named at construction."""

    def __init__(
        self, rules: tuple[ExitRule, ...], exits: Sequence[ExitSpec], labels: Sequence[str], classes: int
    ) -> None:
        self.criteria = [create_criterion(rule.criterion) for rule in rules]
        #: Whether any exit reads the earlier exits' predictions (patience): the walks keep them only then.
        self.keeps_history = any(rule.criterion == "patience" for rule in rules)
        self._logit_names = tuple(spec.logits for spec in exits)
        self.rules = rules
        self._labels = tuple(labels)
        self._classes = classes

    @property
    def rules(self) -> tuple[ExitRule, ...]:
        return self._rules

    @rules.setter
    def rules(self, rules: tuple[ExitRule, ...]) -> None:
        self._rules = rules
        # per early_exit setting, which exits can stop a sample (the final one always answers)
        self._live = {
            early_exit: tuple(r.final or (early_exit and r.threshold < NEVER_THRESHOLD) for r in rules)
            for early_exit in (False, True)
        }
        # per early_exit setting, whether only the final exit can stop a sample and none feeds a
        # later one (patience): a walk may then run every segment before looking at any output
        self._straight = {
            early_exit: not any(live[:-1]) and not self.keeps_history for early_exit, live in self._live.items()
        }
        final = rules[-1] if rules else None
        names = self._logit_names[-1] if rules else None
        #: The final exit's logits, score and probabilities output names when its graph gives all
        #: three (the final exit answers whatever its score): its Result is read, nothing computed.
        self.graph_answer = (
            (names, final.graph_score, final.graph_probabilities)
            if final is not None and names and final.graph_score and final.graph_probabilities
            else None
        )

    def live(self, early_exit: bool) -> tuple[bool, ...]:
        """Per exit, whether it can stop a sample in a walk with ``early_exit``: the others are
        not scored at all (``score`` gives None for them), so a walk may skip them."""
        return self._live[early_exit]

    def straight(self, early_exit: bool) -> bool:
        """Whether a walk with ``early_exit`` reads nothing but the final exit (full depth)."""
        return self._straight[early_exit]

    def logits(self, k: int, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
        name = self._logit_names[k]
        return outputs[name] if name else None

    def score(
        self, k: int, walk: Walk, outputs: dict[str, np.ndarray], logits: np.ndarray | None, hidden: np.ndarray | None
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Exit k's scores on segment k's ``outputs`` at this point of ``walk``, and its
        probabilities when computing the score produced them; no scores when the exit cannot stop
        anything: early exit off, or a threshold no score reaches (inf for a full-depth run,
        ``NEVER_THRESHOLD`` for an exit calibrated to "never"), so such runs compute no softmax
        over logits nobody reads."""
        if not self._live[walk.early_exit][k]:
            return None, None
        rule = self._rules[k]
        if rule.graph_score is not None:
            score = outputs[rule.graph_score]
            if rule.final or not _near(score, rule.threshold):
                probabilities = rule.graph_probabilities
                return score, outputs[probabilities] if probabilities is not None else None
            # Calibration chose the threshold from numpy's scores; ONNX Runtime's float32 softmax
            # can differ from numpy's by an ulp or two, so a score this close to the threshold is
            # recomputed as calibration computed it, and the decisions it simulated are the ones taken.
        criterion = self.criteria[k]
        probabilities = None
        if logits is not None and not criterion.needs_hidden:
            probabilities = softmax(logits, rule.temperature)  # once: the score and the Result share it
        if rule.final and (logits is None or criterion.needs_hidden):  # the final exit exits anyway
            return np.ones(len(logits) if logits is not None else len(hidden), np.float32), None  # type: ignore[arg-type]
        # the token mask the similarity criterion ignores padding by (a text encoder's attention mask)
        context = walk.context
        mask = context.get("attention_mask") if (context and criterion.needs_hidden) else None
        boundary = Boundary(
            logits, hidden, walk.previous, tuple(walk.history), rule.temperature, probabilities, mask, rule.gate
        )
        return criterion.score(boundary), probabilities

    def result(
        self,
        k: int,
        logits: np.ndarray | None,
        probabilities: np.ndarray | None,
        score: np.ndarray,
        i: int,
        started: float,
        times: tuple[float, ...],
        hidden: np.ndarray | None,
        offload: OffloadInfo | None = None,
    ) -> Result:
        """Sample ``i``'s Result at exit ``k``; its latency counts from ``started`` to now."""
        latency = (time.perf_counter() - started) * 1e3
        if logits is None:
            return answer(None, None, None, k, score.item(i), latency, times, hidden, offload)
        row = probabilities[i] if probabilities is not None else softmax(logits[i], self.rules[k].temperature)
        prediction = int(logits.argmax() if len(logits) == 1 else logits[i].argmax())  # batch 1: no row view
        labels = self._labels
        label = labels[prediction] if prediction < len(labels) else str(prediction)
        return answer(prediction, label, row.copy(), k, score.item(i), latency, times, hidden, offload)

    def final_answer(
        self, outputs: dict[str, np.ndarray], started: float, times: tuple[float, ...], hidden: np.ndarray | None
    ) -> Result:
        """The final exit's Result for one sample, read from the final segment's ``outputs``
        (``graph_answer`` must be set): ``result`` on the graph's own logits, score and
        probabilities, without ``score`` looking up what the final exit's rule already says (the
        full-depth path: with a Walk record per request, that lookup cost ~11 us per sample on a
        0.4 ms CNN, docs/benchmarks.md, point 5)."""
        logits_name, score_name, probabilities_name = self.graph_answer  # type: ignore[misc]
        final = len(self._rules) - 1
        return self.result(final, outputs[logits_name], outputs[probabilities_name], outputs[score_name], 0, started,
                           times, hidden)  # fmt: skip

    def tail_results(self, pending: Pending, logits: np.ndarray, offload: OffloadInfo | None) -> list[Result]:
        """Results from a tail's final logits for ``pending``'s samples: the final exit's rule
        applied as a local run would."""
        final = len(self.rules) - 1
        rule = self.rules[final]
        logits = np.asarray(logits, dtype=np.float32)
        classes = self._classes
        if logits.ndim != 2 or logits.shape[0] != pending.samples or (classes and logits.shape[1] != classes):
            raise InputError(
                f"tail logits have shape {tuple(logits.shape)}; expected ({pending.samples}, {classes or 'classes'}) "
                "for the pending samples: the tail does not belong to this package"
            )
        probabilities = softmax(logits, rule.temperature)
        criterion = self.criteria[final]
        if criterion.needs_hidden:
            score = np.ones(len(logits), np.float32)  # as the engine scores a final exit it cannot judge
        else:  # patience counts the agreeing exits that ran here (the tail's own are not reported)
            boundary = Boundary(logits, None, None, pending.history, rule.temperature, probabilities, gate=rule.gate)
            score = criterion.score(boundary)
        times = pending.segment_ms
        return [
            self.result(final, logits, probabilities, score, i, pending.started, times, None, offload)
            for i in range(pending.samples)
        ]
