"""Walking the segments: one sample through the bound chain, or a batch that sheds its exits.

A walk starts at the model input (``run``) or at a split request's boundary (``resume``,
``advance``) and goes segment by segment until an exit is confident, the final exit answers, or
the boundary it was asked to stop at is reached (a ``Pending``). Everything a walk carries from
one segment to the next is one ``Walk`` record, so starting, stopping and resuming are the same
code whatever the entry point.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgeexit.criteria import softmax
from edgeexit.manifest import SegmentSpec
from edgeexit.runtime.backends import Chain, Segment
from edgeexit.runtime.results import Context, Pending, Result
from edgeexit.runtime.scoring import Scorer

_NOTHING = np.empty(0, np.float32)


def hand_on(
    context: Context, done: SegmentSpec, outputs: Mapping[str, np.ndarray], before: SegmentSpec | None
) -> Context:
    """The context the segment after ``done`` runs with: the request's own context inputs and the
    tensors ``done``'s boundary carries besides its hidden one (a skip connection a later layer
    reads), without those of the boundary before, which no later segment takes."""
    kept = {n: v for n, v in context.items() if n not in before.carries} if before is not None else dict(context)
    kept.update((name, outputs[name]) for name in done.carries)
    return kept


def carrying(segments: Sequence[Segment]) -> list[bool]:
    """Per segment, whether a walk must call ``hand_on`` after it (its boundary, or the one before,
    carries several tensors); False throughout for a package of one-tensor boundaries."""
    specs = [s.spec for s in segments]
    return [bool(spec.carries or (k > 0 and specs[k - 1].carries)) for k, spec in enumerate(specs)]


@dataclass(slots=True, eq=False)
class Walk:
    """One walk in progress (mutable, owned by the call that walks).

    ``source`` is segment ``start``'s input; the walk returns a Pending after segment ``stop``
    (None: run to an answer). ``started`` is the request's ``time.perf_counter()`` start,
    ``times`` the device segments' ms so far, ``history`` the earlier exits' predictions
    (patience), ``previous`` the boundary tensor before the next segment's (similarity),
    ``context`` the request's context inputs (rows aligned with ``source``)."""

    source: np.ndarray
    start: int
    stop: int | None
    started: float
    times: list[float]
    history: list[np.ndarray]
    previous: np.ndarray | None
    early_exit: bool
    keep_hidden: bool
    context: Context

    @classmethod
    def from_input(
        cls, source: np.ndarray, context: Context, stop: int | None, *, early_exit: bool, keep_hidden: bool
    ) -> Walk:
        """A new request at the model input, timed from now."""
        return cls(source, 0, stop, time.perf_counter(), [], [], None, early_exit, keep_hidden, context)

    @classmethod
    def from_pending(cls, pending: Pending, stop: int | None, *, early_exit: bool | None = None) -> Walk:
        """Carry ``pending`` on from its boundary, nothing recomputed (``early_exit`` None keeps its own)."""
        return cls(
            pending.hidden,
            pending.boundary + 1,
            stop,
            pending.started,
            list(pending.segment_ms),
            list(pending.history),
            None if pending.boundary == -1 else pending.hidden,  # nothing before the model input
            pending.early_exit if early_exit is None else early_exit,
            pending.keep_hidden,
            pending.context,
        )

    @classmethod
    def for_scoring(cls, previous: np.ndarray | None, history: Sequence[np.ndarray], context: Context | None) -> Walk:
        """The state one exit is scored in outside a walk (``Engine.exit_score``: what
        ``edgeexit profile`` times as the exit check), early exit on."""
        return cls(_NOTHING, 0, None, 0.0, [], list(history), previous, True, False, context or {})

    def pending(self, boundary: int, hidden: np.ndarray, rows: tuple[int, ...], context: Context) -> Pending:
        """The walk stopped after segment ``boundary``, ``hidden`` (owned) its survivors' tensor."""
        return Pending(
            boundary, hidden, rows, tuple(self.history), tuple(self.times), self.started, self.early_exit,
            self.keep_hidden, context,
        )  # fmt: skip


class Walker:
    """Runs walks over a package's loaded segments, scoring each exit with ``scorer``.

    ``chain`` is the backend's copy-free batch-1 chain (None: plain ``Segment.run`` calls); it
    may be replaced or dropped after construction."""

    def __init__(self, segments: Sequence[Segment], scorer: Scorer, chain: Chain | None) -> None:
        self.segments = segments
        self.scorer = scorer
        self.chain = chain
        self._hidden_names = [s.spec.hidden for s in segments]
        self._specs = [s.spec for s in segments]
        self._carrying = carrying(segments)

    def steps(
        self, source: np.ndarray, start: int = 0, context: Context | None = None
    ) -> Iterator[tuple[int, dict[str, np.ndarray], float]]:
        """Segment by segment for one sample from segment ``start`` (``source`` is its input):
        (index, outputs, ms). Through the chain when there is one (outputs are views of its
        buffers), else plain runs passing hidden on."""
        current = source
        chain = self.chain
        if chain is not None:
            self._load_chain(start, source, context or {})
        hidden_names = self._hidden_names
        for k in range(start, len(self.segments)):
            tick = time.perf_counter()
            outputs = chain.run_segment(k) if chain is not None else self.segments[k].run(current, context)
            yield k, outputs, (time.perf_counter() - tick) * 1e3
            if hidden_names[k]:
                current = outputs[hidden_names[k]]  # type: ignore[index]
            if self._carrying[k]:
                context = self._hand_on(k, context or {}, outputs)

    def _hand_on(self, k: int, context: Context, outputs: Mapping[str, np.ndarray]) -> Context:
        return hand_on(context, self._specs[k], outputs, self._specs[k - 1] if k > 0 else None)

    def _load_chain(self, start: int, source: np.ndarray, context: Context) -> None:
        """Put a walk's starting tensors where the chain's segment ``start`` reads them."""
        chain = self.chain
        assert chain is not None
        if start == 0:
            np.copyto(chain.input, source)
            for name, buffer in chain.context.items():
                np.copyto(buffer, context[name])
            return
        buffers = chain.outputs[start - 1]
        np.copyto(buffers[self._hidden_names[start - 1]], source)  # type: ignore[index]
        for name in self._specs[start - 1].carries:
            np.copyto(buffers[name], context[name])

    def one(self, walk: Walk) -> Result | Pending:
        """One sample from ``walk.start``, stopping at the first confident exit, or with a
        Pending after segment ``walk.stop``. The loop of ``steps`` written out: this is the
        batch-1 hot path, and a generator's resumption per segment costs more than the lines."""
        scorer = self.scorer
        rules = scorer.rules
        live = scorer.live(walk.early_exit)
        keeps_history = scorer.keeps_history
        times = walk.times
        context = walk.context
        hidden_names = self._hidden_names
        chain = self.chain
        current = walk.source
        start = walk.start
        if chain is not None:
            if start == 0 and walk.stop is None and scorer.straight(walk.early_exit):
                return self.straight(current, walk.keep_hidden, walk.started, context)
            self._load_chain(start, current, context)
        handing_on = self._carrying
        for k in range(start, len(hidden_names)):
            tick = time.perf_counter()
            outputs = chain.run_segment(k) if chain is not None else self.segments[k].run(current, context)
            times.append((time.perf_counter() - tick) * 1e3)
            hidden_name = hidden_names[k]
            hidden = outputs.get(hidden_name) if hidden_name else None
            if handing_on[k]:
                context = self._hand_on(k, context, outputs)
            if live[k] or keeps_history:  # an exit that cannot fire and feeds no history costs nothing
                logits = scorer.logits(k, outputs)
                if live[k]:
                    score, probabilities = scorer.score(k, walk, outputs, logits, hidden)
                    if score is not None and (rules[k].final or score[0] >= rules[k].threshold):
                        # a copy: the chain's buffers are overwritten by the next run
                        kept = hidden.copy() if (walk.keep_hidden and hidden is not None) else None
                        return scorer.result(k, logits, probabilities, score, 0, walk.started, tuple(times), kept)
                if keeps_history and logits is not None:
                    walk.history.append(logits.argmax(axis=-1))
            if k == walk.stop:
                owned = hidden.copy()  # type: ignore[union-attr]  # every non-final segment has a hidden output
                return walk.pending(k, owned, (0,), {name: value.copy() for name, value in context.items()})
            walk.previous = current = hidden  # type: ignore[assignment]
        raise AssertionError("the final exit always exits")  # pragma: no cover

    def straight(self, source: np.ndarray, keep_hidden: bool, started: float, context: Context | None = None) -> Result:
        """One sample from the model input when only the final exit can answer (the chain must be
        bound and ``scorer.straight`` hold): every segment runs back to back (``Chain.run_all``)
        and the final exit is read once, from the graph's own answer when it gives one."""
        chain = self.chain
        assert chain is not None
        np.copyto(chain.input, source)
        for name, buffer in chain.context.items():  # a traced model's further inputs
            np.copyto(buffer, context[name])  # type: ignore[index]
        times: list[float] = []
        chain.run_all(times)
        k = len(self._hidden_names) - 1
        outputs = chain.outputs[k]
        hidden_name = self._hidden_names[k]
        hidden = outputs.get(hidden_name) if hidden_name else None
        kept = hidden.copy() if (keep_hidden and hidden is not None) else None
        scorer = self.scorer
        if scorer.graph_answer is not None:
            return scorer.final_answer(outputs, started, tuple(times), kept)
        walk = Walk(source, 0, None, started, times, [], None, True, keep_hidden, {})
        if k > 0:  # the similarity criterion compares with the boundary before
            walk.previous = chain.outputs[k - 1][self._hidden_names[k - 1]]
        logits = scorer.logits(k, outputs)
        score, probabilities = scorer.score(k, walk, outputs, logits, hidden)
        return scorer.result(k, logits, probabilities, score, 0, started, tuple(times), kept)  # type: ignore[arg-type]

    def batch(self, walk: Walk) -> tuple[list[Result | None], Pending | None]:
        """A batch from ``walk.start``: exiting samples are answered in input order, survivors
        compacted and carried on; after segment ``walk.stop`` they come back as a Pending."""
        scorer = self.scorer
        rules = scorer.rules
        segments = self.segments
        hidden_names = self._hidden_names
        times = walk.times
        started = walk.started
        keep_hidden = walk.keep_hidden
        current = walk.source
        found: list[Result | None] = [None] * current.shape[0]
        active = np.arange(current.shape[0])
        for k in range(walk.start, len(segments)):
            tick = time.perf_counter()
            outputs = segments[k].run(current, walk.context)
            times.append((time.perf_counter() - tick) * 1e3)
            if self._carrying[k]:
                walk.context = self._hand_on(k, walk.context, outputs)
            hidden_name = hidden_names[k]
            hidden = outputs.get(hidden_name) if hidden_name else None
            logits = scorer.logits(k, outputs)
            score, probabilities = scorer.score(k, walk, outputs, logits, hidden)
            rule = rules[k]
            if rule.final:  # every sample left answers here: no masks to build
                leaving = range(len(active))
                if probabilities is None and logits is not None:
                    probabilities = softmax(logits, rule.temperature)
            else:
                mask = score >= rule.threshold if score is not None else np.zeros(len(active), bool)
                if probabilities is None and logits is not None and mask.any():
                    probabilities = softmax(logits, rule.temperature)
                leaving = np.flatnonzero(mask)
            for i in leaving:
                kept = hidden[i : i + 1].copy() if (keep_hidden and hidden is not None) else None
                found[active[i]] = scorer.result(k, logits, probabilities, score, i, started, tuple(times), kept)
            if rule.final:
                return found, None
            staying = ~mask
            if not staying.any():
                return found, None
            history = walk.history
            if logits is not None:
                history.append(logits.argmax(axis=-1))
            walk.history = [h[staying] for h in history]
            active = active[staying]
            current = np.ascontiguousarray(hidden[staying])  # type: ignore[index]  # a copy: owned
            walk.context = {name: value[staying] for name, value in walk.context.items()}  # copies: owned
            if k == walk.stop:
                return found, walk.pending(k, current, tuple(int(i) for i in active), walk.context)
            walk.previous = current
        return found, None  # pragma: no cover  # the final exit retires every sample

    def segment_latency(self, batch: np.ndarray, context: Context, warmup: int = 3) -> tuple[float, ...]:
        """Mean batch-1 latency of each segment in ms over ``batch``'s samples, through the chain
        when there is one, after ``warmup`` runs of the first sample."""
        totals = np.zeros(len(self.segments))
        for i in range(-warmup, batch.shape[0]):
            row = max(i, 0)
            for k, _, ms in self.steps(batch[row : row + 1], 0, context_rows(context, row, row + 1)):
                if i >= 0:
                    totals[k] += ms
        return tuple(float(t / max(batch.shape[0], 1)) for t in totals)


def context_rows(context: Context, start: int, stop: int) -> Context:
    """Rows ``start:stop`` of every context input (views; the empty context as is)."""
    return {name: value[start:stop] for name, value in context.items()} if context else context
