"""The early-exit engine: run segments, stop at the first confident exit. No torch, no onnx.

``run`` serves one sample through a chain bound once (no copies between segments).
``run_batch`` runs a batch through segment 0, retires the samples whose exit is confident,
compacts the survivors and carries only them on, so a batch costs what its hard samples cost;
results come back in input order and match ``run`` sample by sample.

Offloading splits a request at a boundary k: ``run_until`` / ``run_batch_until`` stop there
(earlier exits still apply) and hand back a ``Pending`` that owns boundary k's hidden tensor;
``advance`` carries one sample's Pending on to a later boundary without recomputing (so a
policy can decide boundary by boundary), ``resume`` / ``resume_batch`` finish it here with the
answer ``run`` would have given, and ``tail_results`` turns a tail server's final logits into
Results. The engine knows nothing about the network: ``edgeexit.device`` does the sending.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from edgeexit.criteria import Boundary, create_criterion, softmax
from edgeexit.errors import EdgeExitError, InputError
from edgeexit.manifest import CRITERIA, IN_GRAPH_CRITERIA, NEVER_THRESHOLD, ExitSpec
from edgeexit.package import Package, open_package
from edgeexit.runtime.backends import BACKENDS, PRECISIONS, Segment, open_segment
from edgeexit.runtime.ort_backend import BoundChain, OrtSegment
from edgeexit.runtime.sessions import default_cache_dir
from edgeexit.runtime.settings import EngineSettings

#: A model input: one array, or for a model with context inputs (a text encoder) a mapping
#: from the input's name and every context input's name to its array (``input_ids``,
#: ``attention_mask``), each batch first.
Inputs: TypeAlias = "np.ndarray | Mapping[str, np.ndarray]"
Context: TypeAlias = "dict[str, np.ndarray]"


@dataclass(frozen=True, eq=False)
class Result:
    """One sample's answer. ``prediction`` is None only when the exit that stopped it has no
    classifier (an encoder stopped by similarity); ``hidden`` is that boundary's tensor when
    the caller asked for it (``keep_hidden=True``). ``offload`` is set when the sample reached an
    offload boundary: answered by a tail server, or finished here after the offload failed
    (``offload.fallback``); ``segment_ms`` then lists only the segments that ran on this device.
    ``decisions`` are the offload policy's decisions for this sample, in boundary order (set by
    ``edgeexit.device.PolicyRunner``; empty otherwise): objects with ``to_dict()``, e.g.
    ``edgeexit.policy.Decision``."""

    prediction: int | None
    label: str | None
    probabilities: np.ndarray | None
    exit: int
    score: float
    latency_ms: float
    segment_ms: tuple[float, ...]
    hidden: np.ndarray | None = None
    offload: OffloadInfo | None = None
    decisions: tuple[Any, ...] = ()

    def to_json(self) -> dict[str, object]:
        found: dict[str, object] = {
            "prediction": self.prediction,
            "label": self.label,
            "exit": self.exit,
            "score": round(float(self.score), 6),
            "probabilities": None if self.probabilities is None else [round(float(p), 6) for p in self.probabilities],
            "latency_ms": round(self.latency_ms, 4),
            "segment_ms": [round(t, 4) for t in self.segment_ms],
        }
        if self.offload is not None:  # absent, not null, for local runs: their JSON stays as it was
            found["offload"] = self.offload.to_json()
        if self.decisions:  # absent when no policy decided
            found["decisions"] = [d.to_dict() for d in self.decisions]
        return found


@dataclass(frozen=True)
class OffloadInfo:
    """How a sample that reached the offload boundary was answered.

    Offloaded (``fallback`` False): ``server`` answered with the tail's final logits. Fallback:
    the offload failed for ``reason`` and the engine finished the sample here from the same
    boundary. ``bytes_sent`` is this sample's share of the request bytes handed to gRPC (summed
    over attempts; ``batch`` samples shared the request), ``transfer_ms`` the wall time from the
    first attempt to the reply or the last failure, ``queue_ms`` / ``compute_ms`` what the server
    reported (None when it did not say, e.g. Triton).
    """

    boundary: int
    codec: str
    model: str
    server: str | None = None
    bytes_sent: int = 0
    transfer_ms: float = 0.0
    queue_ms: float | None = None
    compute_ms: float | None = None
    batch: int = 1
    attempts: int = 0
    fallback: bool = False
    reason: str | None = None

    @property
    def offloaded(self) -> bool:
        return not self.fallback

    def to_json(self) -> dict[str, object]:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(float(value), 4)

        return {
            "offloaded": self.offloaded,
            "fallback": self.fallback,
            "reason": self.reason,
            "server": self.server,
            "boundary": self.boundary,
            "codec": self.codec,
            "model": self.model,
            "bytes_sent": self.bytes_sent,
            "transfer_ms": ms(self.transfer_ms),
            "queue_ms": ms(self.queue_ms),
            "compute_ms": ms(self.compute_ms),
            "batch": self.batch,
            "attempts": self.attempts,
        }


@dataclass(frozen=True, eq=False)
class Pending:
    """Samples that reached boundary ``boundary`` without exiting: everything needed to finish
    them, here (``Engine.resume``) or on a tail server (``hidden`` is what it needs).

    ``hidden`` is the boundary's tensor ``(M, *dims)``, owned (a copy, safe across later runs);
    it is also the previous hidden state the next exit's similarity compares against. ``rows``
    are the samples' positions in the input (``(0,)`` for one sample), ``history`` the earlier
    exits' predictions for patience, ``segment_ms`` the device segments' times so far and
    ``started`` the request's ``time.perf_counter()`` start, so a finished Result's latency
    counts everything, a failed offload included. ``context`` holds the request's context inputs
    (a text encoder's attention mask), rows aligned with ``hidden``; empty for image models.
    """

    boundary: int
    hidden: np.ndarray
    rows: tuple[int, ...]
    history: tuple[np.ndarray, ...]
    segment_ms: tuple[float, ...]
    started: float
    early_exit: bool = True
    keep_hidden: bool = False
    context: Context = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return len(self.rows)

    def select(self, start: int, stop: int) -> Pending:
        """Samples ``start:stop`` of this state (a batch offloaded in several requests)."""
        return Pending(
            self.boundary,
            self.hidden[start:stop],
            self.rows[start:stop],
            tuple(h[start:stop] for h in self.history),
            self.segment_ms,
            self.started,
            self.early_exit,
            self.keep_hidden,
            {name: value[start:stop] for name, value in self.context.items()},
        )


@dataclass(frozen=True, eq=False)
class BatchProgress:
    """A batch run up to a boundary: ``results`` in input order, None where a sample is
    ``pending`` (its ``rows`` say which)."""

    results: tuple[Result | None, ...]
    pending: Pending | None = None

    def complete(self, finished: Sequence[Result]) -> list[Result]:
        """Every Result in input order, ``finished`` answering ``pending.rows`` in order."""
        rows = self.pending.rows if self.pending is not None else ()
        if len(finished) != len(rows):
            raise EdgeExitError(f"got {len(finished)} results for {len(rows)} pending samples; expected one each")
        merged = list(self.results)
        for row, result in zip(rows, finished, strict=True):
            merged[row] = result
        return merged  # type: ignore[return-value]


@dataclass(frozen=True)
class ExitRule:
    """How one exit decides: criterion, threshold, temperature, and the in-graph score to use
    when it already is the answer (same criterion, temperature 1)."""

    criterion: str
    threshold: float
    temperature: float
    graph_score: str | None
    final: bool


@dataclass(frozen=True, eq=False)
class FullDepth:
    """Every exit's outputs for every sample (no early exit): what calibration works from."""

    logits: tuple[np.ndarray | None, ...]  # per exit, (N, C) or None without a classifier
    similarity: tuple[np.ndarray, ...]  # per exit, (N,) cosine to the previous boundary
    segment_ms: tuple[float, ...]  # per segment, mean batch-1 latency per sample

    @property
    def samples(self) -> int:
        """N: every exit has a similarity row, with or without a classifier."""
        return int(self.similarity[0].shape[0]) if self.similarity else 0


class Engine:
    """Loads a package once (hashes verified, one session per segment) and runs it.

    ``criterion`` / ``threshold`` override every non-final exit's manifest setting (the CLI's
    ``--criterion`` and ``--threshold``). ``cache_dir=None`` disables the optimized-graph cache.
    ``backend`` (onnxruntime, tflite) and ``precision`` (fp32, int8) pick which build of the
    segments runs: the ONNX fp32 graphs, or one of the package's variants (``tflite/``,
    ``int8/``), with that variant's own calibrated thresholds when it has them.
    """

    def __init__(
        self,
        package: str | Path | Package,
        *,
        threads: int = 1,
        criterion: str | None = None,
        threshold: float | None = None,
        cache_dir: Path | str | None = "default",
        backend: str = "onnxruntime",
        precision: str = "fp32",
    ) -> None:
        if backend not in BACKENDS or precision not in PRECISIONS:
            raise EdgeExitError(
                f"backend {backend!r} / precision {precision!r} is unknown; expected a backend in {BACKENDS} "
                f"and a precision in {PRECISIONS}"
            )
        self.package = package if isinstance(package, Package) else open_package(package)
        manifest = self.package.manifest
        self.manifest = manifest
        self.backend = backend
        self.precision = precision
        self.variant = manifest.find_variant(backend, precision)
        self.exits = manifest.exits_for(self.variant)
        cache = default_cache_dir() if cache_dir == "default" else (Path(cache_dir) if cache_dir else None)
        files = self.variant.files if self.variant is not None else tuple(s.file for s in manifest.segments)
        self.segments: list[Segment] = [
            open_segment(backend, self.package.path(f), s, threads=threads, cache_dir=cache, sha256=manifest.files[f])
            for f, s in zip(files, manifest.segments, strict=True)
        ]
        self.rules = tuple(self._rule(spec, criterion, threshold) for spec in self.exits)
        self._criteria = [create_criterion(rule.criterion) for rule in self.rules]
        self._keeps_history = any(rule.criterion == "patience" for rule in self.rules)
        self._input = manifest.input
        self._context_names = tuple(spec.name for spec in manifest.input.context)
        self._hidden_names = [s.spec.hidden for s in self.segments]
        self._chain: BoundChain | None = None
        if all(isinstance(s, OrtSegment) for s in self.segments) and not self._context_names:
            with contextlib.suppress(ValueError):  # dynamic non-batch axes: plain runs
                self._chain = BoundChain(self.segments, manifest.input.tensor)  # type: ignore[arg-type]

    @classmethod
    def from_settings(cls, package: str | Path | Package, settings: EngineSettings) -> Engine:
        """The engine the CLI, ``device.toml`` and the benchmarks build: one record, one place."""
        return cls(package, threads=settings.threads, criterion=settings.criterion, threshold=settings.threshold,
                   cache_dir=settings.cache_dir, backend=settings.backend, precision=settings.precision)  # fmt: skip

    @property
    def num_exits(self) -> int:
        return len(self.rules)

    def _rule(self, spec: ExitSpec, criterion: str | None, threshold: float | None) -> ExitRule:
        chosen = spec.criterion if (criterion is None or spec.final) else criterion
        if chosen not in CRITERIA:
            raise EdgeExitError(f"unknown criterion {chosen!r}; expected one of {', '.join(CRITERIA)}")
        if spec.logits is None and chosen != "similarity":
            chosen = "similarity"  # an exit without a classifier can only stop by similarity
        limit = spec.threshold if (threshold is None or spec.final) else float(threshold)
        use_graph = chosen == spec.criterion and chosen in IN_GRAPH_CRITERIA and spec.temperature == 1.0
        return ExitRule(chosen, limit, spec.temperature, spec.score if use_graph else None, spec.final)

    # ---------------------------------------------------------------- one sample

    def run(self, x: Inputs, *, keep_hidden: bool = False) -> Result:
        """One sample, shaped like the model input with or without the batch axis of 1."""
        sample, context = self._check(x, batched=False)
        return self._forward_one(sample, 0, None, time.perf_counter(), [], [], None, True, keep_hidden, context)  # type: ignore[return-value]

    def run_until(
        self, x: Inputs, boundary: int, *, early_exit: bool = True, keep_hidden: bool = False
    ) -> Result | Pending:
        """One sample up to ``boundary``: a Result when an exit at or before it is confident,
        else a Pending holding the boundary's tensor. ``early_exit=False`` consults no exit (the
        split-at-k baseline: every sample reaches the boundary, and ``resume`` runs to full depth).
        Boundary -1 is the model input: a Pending holding a copy of ``x``, nothing run yet."""
        self._check_boundary(boundary)
        sample, context = self._check(x, batched=False)
        if boundary == -1:
            owned = {name: value.copy() for name, value in context.items()}
            return Pending(-1, sample.copy(), (0,), (), (), time.perf_counter(), early_exit, keep_hidden, owned)
        return self._forward_one(
            sample, 0, boundary, time.perf_counter(), [], [], None, early_exit, keep_hidden, context
        )

    def advance(self, pending: Pending, boundary: int, *, early_exit: bool | None = None) -> Result | Pending:
        """Carry one pending sample on from its boundary to the later ``boundary``, nothing
        recomputed: a Result when an exit in between (``boundary``'s included) is confident, else
        a Pending at ``boundary``. ``early_exit`` None keeps the pending state's setting. Stepping
        ``run_until(x, 0)``, ``advance(p, 1)``, ... ``resume(p)`` gives exactly ``run(x)``'s Result,
        and ``advance(run_until(x, k), k2)`` the Pending ``run_until(x, k2)`` gives."""
        if pending.samples != 1:
            raise EdgeExitError(
                f"advance() carries one sample on; this pending state holds {pending.samples} "
                "(from run_batch_until): run_batch_until to the later boundary instead"
            )
        self._check_pending(pending)
        self._check_boundary(boundary)
        if boundary <= pending.boundary:
            raise EdgeExitError(
                f"cannot advance from boundary {pending.boundary} to boundary {boundary}: expected a later one"
            )
        return self._forward_one(
            pending.hidden,
            pending.boundary + 1,
            boundary,
            pending.started,
            list(pending.segment_ms),
            list(pending.history),
            _previous(pending),
            pending.early_exit if early_exit is None else early_exit,
            pending.keep_hidden,
            pending.context,
        )

    def resume(self, pending: Pending) -> Result:
        """Finish one pending sample here, from its boundary: later exits still apply, and the
        Result equals what ``run`` gives (its latency counts from the original start)."""
        if pending.samples != 1:
            raise EdgeExitError(
                f"resume() finishes one sample; this pending state holds {pending.samples} "
                "(from run_batch_until): use resume_batch()"
            )
        self._check_pending(pending)
        return self._forward_one(  # type: ignore[return-value]
            pending.hidden,
            pending.boundary + 1,
            None,
            pending.started,
            list(pending.segment_ms),
            list(pending.history),
            _previous(pending),
            pending.early_exit,
            pending.keep_hidden,
            pending.context,
        )

    def _forward_one(
        self,
        source: np.ndarray,
        start: int,
        stop: int | None,
        started: float,
        times: list[float],
        history: list[np.ndarray],
        previous: np.ndarray | None,
        early_exit: bool,
        keep_hidden: bool,
        context: Context,
    ) -> Result | Pending:
        """Segments ``start``.. for one sample (``source`` is their input), stopping at the first
        confident exit, or with a Pending after segment ``stop``."""
        for k, outputs, ms in self._walk(source, start, context):
            times.append(ms)
            segment = self.segments[k]
            hidden = outputs.get(segment.spec.hidden) if segment.spec.hidden else None
            logits = self._logits(k, outputs)
            score, probabilities = self._score(k, early_exit, outputs, logits, hidden, previous, history, context)
            if score is not None and (self.rules[k].final or score[0] >= self.rules[k].threshold):
                # a copy: the bound chain's buffers are overwritten by the next run
                kept = hidden.copy() if (keep_hidden and hidden is not None) else None
                return self._result(k, logits, probabilities, score, 0, started, tuple(times), kept)
            if self._keeps_history and logits is not None:
                history.append(logits.argmax(axis=-1))
            if k == stop:
                owned = hidden.copy()  # type: ignore[union-attr]  # every non-final segment has a hidden output
                kept = {name: value.copy() for name, value in context.items()}
                return Pending(k, owned, (0,), tuple(history), tuple(times), started, early_exit, keep_hidden, kept)
            previous = hidden
        raise AssertionError("the final exit always exits")  # pragma: no cover

    # ---------------------------------------------------------------- batches

    def run_batch(self, xs: Inputs, *, keep_hidden: bool = False, batch_size: int | None = None) -> list[Result]:
        """N samples; early exits retire per sample; results in input order."""
        batch, context = self._check(xs, batched=True)
        step = batch_size if batch_size and batch.shape[0] > batch_size else batch.shape[0]
        results: list[Result] = []
        for start in range(0, batch.shape[0], step):
            chunk = batch[start : start + step]
            found: list[Result | None] = [None] * chunk.shape[0]
            self._forward_batch(chunk, np.arange(chunk.shape[0]), 0, None, time.perf_counter(), [], [], None, found,
                                True, keep_hidden, _rows(context, start, start + step))  # fmt: skip
            results += found  # type: ignore[arg-type]  # the final exit answers every sample left
        return results

    def run_batch_until(
        self, xs: Inputs, boundary: int, *, early_exit: bool = True, keep_hidden: bool = False
    ) -> BatchProgress:
        """``run_until`` for a batch: the samples that exit at or before ``boundary`` are answered,
        the survivors come back as one Pending (their rows in input order)."""
        self._check_boundary(boundary)
        batch, context = self._check(xs, batched=True)
        found: list[Result | None] = [None] * batch.shape[0]
        if boundary == -1:
            rows = tuple(range(batch.shape[0]))
            owned = {name: value.copy() for name, value in context.items()}
            held = Pending(-1, batch.copy(), rows, (), (), time.perf_counter(), early_exit, keep_hidden, owned)
            return BatchProgress(tuple(found), held)
        pending = self._forward_batch(batch, np.arange(batch.shape[0]), 0, boundary, time.perf_counter(), [], [],
                                      None, found, early_exit, keep_hidden, context)  # fmt: skip
        return BatchProgress(tuple(found), pending)

    def resume_batch(self, pending: Pending) -> list[Result]:
        """Finish pending samples here, batched; one Result per ``pending.rows`` entry, in order,
        each equal to what ``run`` gives."""
        self._check_pending(pending)
        found: list[Result | None] = [None] * pending.samples
        self._forward_batch(pending.hidden, np.arange(pending.samples), pending.boundary + 1, None, pending.started,
                            list(pending.segment_ms), list(pending.history), _previous(pending), found,
                            pending.early_exit, pending.keep_hidden, pending.context)  # fmt: skip
        return found  # type: ignore[return-value]

    def _forward_batch(
        self,
        current: np.ndarray,
        active: np.ndarray,
        start: int,
        stop: int | None,
        started: float,
        times: list[float],
        history: list[np.ndarray],
        previous: np.ndarray | None,
        found: list[Result | None],
        early_exit: bool,
        keep_hidden: bool,
        context: Context,
    ) -> Pending | None:
        """Segments ``start``.. on a batch: exiting samples fill ``found[active[i]]``, survivors
        are compacted; after segment ``stop`` the survivors come back as a Pending."""
        for k in range(start, len(self.segments)):
            segment = self.segments[k]
            tick = time.perf_counter()
            outputs = segment.run(current, context)
            times.append((time.perf_counter() - tick) * 1e3)
            hidden = outputs.get(segment.spec.hidden) if segment.spec.hidden else None
            logits = self._logits(k, outputs)
            score, probabilities = self._score(k, early_exit, outputs, logits, hidden, previous, history, context)
            if self.rules[k].final:
                leaving = np.ones(len(active), bool)
            else:
                leaving = score >= self.rules[k].threshold if score is not None else np.zeros(len(active), bool)
            if probabilities is None and logits is not None and leaving.any():
                probabilities = softmax(logits, self.rules[k].temperature)
            for i in np.flatnonzero(leaving):
                kept = hidden[i : i + 1].copy() if (keep_hidden and hidden is not None) else None
                found[active[i]] = self._result(k, logits, probabilities, score, i, started, tuple(times), kept)
            staying = ~leaving
            if not staying.any():
                return None
            if logits is not None:
                history.append(logits.argmax(axis=-1))
            history = [h[staying] for h in history]
            active = active[staying]
            current = np.ascontiguousarray(hidden[staying])  # type: ignore[index]  # a copy: owned
            context = {name: value[staying] for name, value in context.items()}  # copies: owned
            if k == stop:
                rows = tuple(int(i) for i in active)
                return Pending(k, current, rows, tuple(history), tuple(times), started, early_exit, keep_hidden,
                               context)  # fmt: skip
            previous = current
        return None  # pragma: no cover  # the final exit retires every sample

    # ---------------------------------------------------------------- a tail's answer

    def tail_results(self, pending: Pending, logits: np.ndarray, *, offload: OffloadInfo | None = None) -> list[Result]:
        """Results from a tail's final logits ``(M, classes)`` for ``pending``'s samples, in order:
        the final exit's rule (temperature, criterion score) applied as a local run would."""
        final = self.num_exits - 1
        rule = self.rules[final]
        logits = np.asarray(logits, dtype=np.float32)
        classes = self.manifest.num_classes
        if logits.ndim != 2 or logits.shape[0] != pending.samples or (classes and logits.shape[1] != classes):
            raise EdgeExitError(
                f"tail logits have shape {tuple(logits.shape)}; expected ({pending.samples}, {classes or 'classes'}) "
                "for the pending samples: the tail does not belong to this package"
            )
        probabilities = softmax(logits, rule.temperature)
        criterion = self._criteria[final]
        if criterion.needs_hidden:
            score = np.ones(len(logits), np.float32)  # as the engine scores a final exit it cannot judge
        else:  # patience counts the agreeing exits that ran here (the tail's own are not reported)
            boundary = Boundary(logits, None, None, pending.history, rule.temperature, probabilities)
            score = criterion.score(boundary)
        times = pending.segment_ms
        return [
            self._result(final, logits, probabilities, score, i, pending.started, times, None, offload)
            for i in range(pending.samples)
        ]

    def run_full(self, xs: Inputs, *, batch_size: int = 256, timing_samples: int = 64) -> FullDepth:
        """Every exit's outputs for every sample, plus batch-1 segment latencies on a few of them."""
        batch, context = self._check(xs, batched=True)
        chunks = (
            (batch[start : start + batch_size], _rows(context, start, start + batch_size))
            for start in range(0, batch.shape[0], batch_size)
        )
        logits, similarity = full_depth_outputs(self.segments, self.exits, chunks)
        return FullDepth(
            logits=logits,
            similarity=similarity,
            segment_ms=self._segment_latency(batch[:timing_samples], _rows(context, 0, timing_samples)),
        )

    def segment_latency(self, xs: Inputs, warmup: int = 3) -> tuple[float, ...]:
        """Mean batch-1 latency of each segment in ms, through the bound chain when there is one."""
        return self._segment_latency(*self._check(xs, batched=True), warmup=warmup)

    def _segment_latency(self, batch: np.ndarray, context: Context, warmup: int = 3) -> tuple[float, ...]:
        totals = np.zeros(len(self.segments))
        for i in range(-warmup, batch.shape[0]):
            row = max(i, 0)
            for k, _, ms in self._walk(batch[row : row + 1], 0, _rows(context, row, row + 1)):
                if i >= 0:
                    totals[k] += ms
        return tuple(float(t / max(batch.shape[0], 1)) for t in totals)

    # ---------------------------------------------------------------- helpers

    def _walk(
        self, source: np.ndarray, start: int = 0, context: Context | None = None
    ) -> Iterator[tuple[int, dict[str, np.ndarray], float]]:
        """Segment by segment for one sample from segment ``start`` (``source`` is its input):
        (index, outputs, ms). Through the bound chain when there is one (outputs are views of its
        buffers), else plain runs passing hidden on."""
        current = source
        if self._chain is not None:
            target = self._chain.input if start == 0 else self._chain.outputs[start - 1][self._hidden_names[start - 1]]
            np.copyto(target, source)
        for k in range(start, len(self.segments)):
            segment = self.segments[k]
            tick = time.perf_counter()
            outputs = self._chain.run_segment(k) if self._chain is not None else segment.run(current, context)
            yield k, outputs, (time.perf_counter() - tick) * 1e3
            if segment.spec.hidden:
                current = outputs[segment.spec.hidden]

    def _mask(self, context: Context | None) -> np.ndarray | None:
        """The token mask the similarity criterion ignores padding by (a text encoder's attention mask)."""
        return context.get("attention_mask") if context else None

    def _logits(self, k: int, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
        name = self.exits[k].logits
        return outputs[name] if name else None

    def exit_score(
        self,
        k: int,
        outputs: dict[str, np.ndarray],
        previous: np.ndarray | None = None,
        history: Sequence[np.ndarray] = (),
        context: Context | None = None,
    ) -> np.ndarray | None:
        """Exit k's scores on segment k's ``outputs``, computed as ``run`` computes them (None
        for an exit that cannot stop a sample: ``run`` scores nothing there). ``previous`` is the
        boundary tensor before (similarity), ``history`` the earlier exits' predictions
        (patience). What ``edgeexit profile`` times as the exit check."""
        hidden_name = self.segments[k].spec.hidden
        hidden = outputs[hidden_name] if hidden_name else None
        return self._score(k, True, outputs, self._logits(k, outputs), hidden, previous, history, context)[0]

    def _score(
        self,
        k: int,
        early_exit: bool,
        outputs: dict[str, np.ndarray],
        logits: np.ndarray | None,
        hidden: np.ndarray | None,
        previous: np.ndarray | None,
        history: Sequence[np.ndarray],
        context: Context | None = None,
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The exit's scores, and its probabilities when computing the score produced them; no
        scores when the exit cannot stop anything: early exit off, or a threshold no score reaches
        (inf for a full-depth run, ``NEVER_THRESHOLD`` for an exit calibrated to "never"), so such
        runs compute no softmax over logits nobody reads."""
        rule = self.rules[k]
        if not (rule.final or (early_exit and rule.threshold < NEVER_THRESHOLD)):
            return None, None
        if rule.graph_score is not None:
            return outputs[rule.graph_score], None
        criterion = self._criteria[k]
        probabilities = None
        if logits is not None and not criterion.needs_hidden:
            probabilities = softmax(logits, rule.temperature)  # once: the score and the Result share it
        if rule.final and (logits is None or criterion.needs_hidden):  # the final exit exits anyway
            return np.ones(len(logits) if logits is not None else len(hidden), np.float32), None  # type: ignore[arg-type]
        mask = self._mask(context) if criterion.needs_hidden else None
        boundary = Boundary(logits, hidden, previous, tuple(history), rule.temperature, probabilities, mask)
        return criterion.score(boundary), probabilities

    def _result(
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
        latency = (time.perf_counter() - started) * 1e3
        if logits is None:
            return Result(None, None, None, k, float(score[i]), latency, times, hidden, offload)
        row = probabilities[i] if probabilities is not None else softmax(logits[i], self.rules[k].temperature)
        prediction = int(logits[i].argmax())
        labels = self.manifest.labels
        label = labels[prediction] if prediction < len(labels) else str(prediction)
        return Result(prediction, label, row.copy(), k, float(score[i]), latency, times, hidden, offload)

    def _check_boundary(self, boundary: int) -> None:
        last = len(self.segments) - 2
        if isinstance(boundary, bool) or not isinstance(boundary, (int, np.integer)) or not -1 <= boundary <= last:
            where = f"0..{last}, or -1: the model input" if last >= 0 else "-1 (the model input) only"
            raise EdgeExitError(
                f"boundary {boundary!r} cannot be split at; expected a boundary with a later segment ({where}), "
                f"the package has {len(self.segments)} segments"
            )

    def _check_pending(self, pending: Pending) -> None:
        self._check_boundary(pending.boundary)
        if pending.boundary == -1:
            want = self._input.shape[1:]
        else:
            spec = self.segments[pending.boundary].spec
            want = spec.output(spec.hidden).shape[1:]  # type: ignore[arg-type]
        got = pending.hidden.shape
        if len(got) != len(want) + 1 or any(w is not None and w != g for w, g in zip(want, got[1:], strict=True)):
            raise EdgeExitError(
                f"pending hidden tensor has shape {tuple(got)}; boundary {pending.boundary} of this package has "
                f"(N, {', '.join('?' if d is None else str(d) for d in want)}): it came from another package"
            )

    def _check(self, x: object, *, batched: bool) -> tuple[np.ndarray, Context]:
        """The model input as one batch-first array, and the context inputs (rows aligned)."""
        if isinstance(x, Mapping):
            return self._check_mapping(x, batched=batched)
        if self._context_names:
            names = [self._input.name, *self._context_names]
            raise InputError(
                f"this model takes several inputs {names}; pass a mapping from each name to its array "
                "(for text: edgeexit.runtime.text.TextEncoder.from_package(...).encode(texts) gives it)"
            )
        return self._check_array(x, batched=batched), {}

    def _check_mapping(self, x: Mapping[str, object], *, batched: bool) -> tuple[np.ndarray, Context]:
        names = [self._input.name, *self._context_names]
        if sorted(x) != sorted(names):
            raise InputError(f"input mapping has keys {sorted(x)}; expected exactly {names}")
        if not self._context_names:
            return self._check_array(x[self._input.name], batched=batched), {}
        arrays: dict[str, np.ndarray] = {}
        for name in names:
            value = x[name]
            if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.integer):
                what = f"dtype {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
                raise InputError(f"input {name!r} is {what}; expected an integer numpy array (token ids or a 0/1 mask)")
            if not batched and value.ndim == 1:
                value = value[None]
            if value.ndim != 2 or value.shape[0] == 0 or value.shape[1] == 0 or (not batched and value.shape[0] != 1):
                what = "(N, L)" if batched else "(L,) or (1, L)"
                raise InputError(f"input {name!r} has shape {tuple(value.shape)}; expected {what} with N, L >= 1")
            arrays[name] = np.ascontiguousarray(value, dtype=np.int64)
        shapes = {name: a.shape for name, a in arrays.items()}
        if len(set(shapes.values())) != 1:
            raise InputError(f"inputs have different shapes {shapes}; expected one (N, L) shape for all")
        primary = arrays.pop(self._input.name)
        return primary, arrays

    def _check_array(self, x: object, *, batched: bool) -> np.ndarray:
        spec = self._input
        if not isinstance(x, np.ndarray):
            raise InputError(f"input must be a numpy array; got {type(x).__name__}")
        if x.dtype != np.float32:
            raise InputError(
                f"input dtype is {x.dtype}; expected float32 (model-ready values, preprocessed as the "
                f"manifest says): convert with x.astype(np.float32)"
            )
        sample_rank = len(spec.shape) - 1
        if not batched and x.ndim == sample_rank:
            x = x[None]
        if x.ndim == len(spec.shape) and (batched or x.shape[0] == 1) and self._fits(x.shape):
            return x if x.flags.c_contiguous else np.ascontiguousarray(x)  # the hot path: no messages built
        expected = "x".join("N" if d is None else str(d) for d in spec.shape)
        if x.ndim != len(spec.shape) or (not batched and x.shape[0] != 1):
            what = "one sample" if not batched else "a batch"
            raise InputError(
                f"input shape {tuple(x.shape)} does not fit {what}; expected {expected} ({spec.layout})"
                + ("" if batched else " or the same without the batch axis")
            )
        for axis, (want, got) in enumerate(zip(spec.shape[1:], x.shape[1:], strict=True), start=1):
            if want is not None and want != got:
                name = spec.layout[axis] if len(spec.layout) == len(spec.shape) else f"axis {axis}"
                what = "channel count" if name == "C" else f"size of {name}"
                raise InputError(
                    f"input {what} is {got}; expected {want} (input shape {expected}, layout {spec.layout}); "
                    f"got shape {tuple(x.shape)}"
                )
        raise InputError("input batch is empty; expected at least one sample")

    def _fits(self, shape: tuple[int, ...]) -> bool:
        if shape[0] == 0:
            return False
        return all(want is None or want == got for want, got in zip(self._input.shape[1:], shape[1:], strict=True))


def full_depth_outputs(
    segments: Sequence[Segment], exits: Sequence[ExitSpec], chunks: Iterable[tuple[np.ndarray, Context]]
) -> tuple[tuple[np.ndarray | None, ...], tuple[np.ndarray, ...]]:
    """Every exit's logits and every boundary's similarity to the one before, for every sample of
    ``chunks`` (input, context), with no early exit: what calibration reads. Any list of segments
    will do: an engine's, or ``edgeexit.compile.quantize``'s mixes of fp32 and int8 graphs."""
    logits: list[list[np.ndarray]] = [[] for _ in segments]
    similarity: list[list[np.ndarray]] = [[] for _ in segments]
    similar = create_criterion("similarity")
    for current, context in chunks:
        previous = None
        mask = context.get("attention_mask") if context else None
        for k, segment in enumerate(segments):
            outputs = segment.run(current, context)
            name = exits[k].logits
            if name is not None:
                logits[k].append(outputs[name])
            hidden = outputs.get(segment.spec.hidden) if segment.spec.hidden else None
            if hidden is not None:
                similarity[k].append(similar.score(Boundary(None, hidden, previous, mask=mask)))
                previous = current = hidden
            else:
                similarity[k].append(np.zeros(len(current), np.float32))
    return (
        tuple(np.concatenate(parts) if parts else None for parts in logits),
        tuple(np.concatenate(parts) for parts in similarity),
    )


def _rows(context: Context, start: int, stop: int) -> Context:
    return {name: value[start:stop] for name, value in context.items()} if context else context


def _previous(pending: Pending) -> np.ndarray | None:
    """The tensor before the next segment's output, for the similarity criteria: none at the input."""
    return None if pending.boundary == -1 else pending.hidden
