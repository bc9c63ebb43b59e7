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

The engine is a facade over modules with one job each: ``results`` (the records),
``validation`` (what a caller hands in), ``scoring`` (exit rules, scores, Results), ``walk``
(the single-sample and batched walks) and ``full_depth`` (calibration's outputs). Every name
callers import from here stays importable from here.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from edgeexit.criteria.learned import gate_arrays
from edgeexit.errors import UnknownNameError, UsageError
from edgeexit.package import Package, open_package
from edgeexit.runtime.backends import BACKENDS, PRECISIONS, Chain, Segment, bind_chain, open_segment
from edgeexit.runtime.full_depth import full_depth_outputs
from edgeexit.runtime.results import (
    BatchProgress,
    Context,
    ExitRule,
    FullDepth,
    Inputs,
    OffloadInfo,
    Pending,
    Result,
)
from edgeexit.runtime.scoring import Scorer, exit_rules
from edgeexit.runtime.sessions import default_cache_dir
from edgeexit.runtime.settings import EngineSettings
from edgeexit.runtime.validation import InputCheck
from edgeexit.runtime.walk import Walk, Walker, context_rows
from edgeexit.signing import TrustedKeys


class Engine:
    """Loads a package once (hashes verified, one session per segment) and runs it.

    ``criterion`` / ``threshold`` override every non-final exit's manifest setting (the CLI's
    ``--criterion`` and ``--threshold``). ``cache_dir=None`` disables the optimized-graph cache.
    ``backend`` (onnxruntime, tflite) and ``precision`` (fp32, int8) pick which build of the
    segments runs: the ONNX fp32 graphs, or one of the package's variants (``tflite/``,
    ``int8/``), with that variant's own calibrated thresholds when it has them. ``trusted_keys``
    (``edgeexit.signing.TrustedKeys``): refuse a package no trusted key signed, before loading it.
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
        trusted_keys: TrustedKeys | None = None,
    ) -> None:
        if backend not in BACKENDS or precision not in PRECISIONS:
            raise UnknownNameError(
                f"backend {backend!r} / precision {precision!r} is unknown; expected a backend in {BACKENDS} "
                f"and a precision in {PRECISIONS}"
            )
        if isinstance(package, Package) and trusted_keys is not None:
            raise UsageError("trusted_keys check a package as it is opened; pass its path, not an opened Package")
        self.package = package if isinstance(package, Package) else open_package(package, trusted_keys=trusted_keys)
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
        self._temperatures = self._temperature_feeds()
        gated = self._feed_gates()
        rules = exit_rules(self.exits, criterion, threshold, tempered=self._temperatures, gated=gated)
        self._scorer = Scorer(rules, self.exits, manifest.labels, manifest.num_classes)
        self._feed_temperatures()
        self._inputs = InputCheck(manifest.input, manifest.segments)
        self._walker = Walker(self.segments, self._scorer, bind_chain(backend, self.segments, manifest.input))
        self._scoring_walk = Walk.for_scoring(None, (), None)

    def _temperature_feeds(self) -> dict[int, np.ndarray]:
        """Per exit whose graph takes its temperature as an input, the one-value array fed there
        (registered as the segment's constant, so the bound chain binds it once): the in-graph
        score is then right at the calibrated temperature, and no exit check runs softmax in numpy."""
        feeds: dict[int, np.ndarray] = {}
        for spec in self.exits:
            segment = self.segments[spec.segment]
            if spec.temperature_input is not None and segment.accepts(spec.temperature_input):
                feeds[spec.index] = segment.constants.setdefault(spec.temperature_input, np.ones(1, np.float32))
        return feeds

    def _feed_gates(self) -> set[int]:
        """The exits whose graph computes the ``learned`` score from gate inputs it takes, their
        trained weights registered as segment constants (bound once, like the temperature); an
        untrained gate is not fed, and the graph's default weights give its 0.5 everywhere. A gate
        the graph's inputs do not fit (a graph exported by another edgeexit, with another gate
        width) is scored in numpy instead, as on a backend without gate inputs."""
        gated: set[int] = set()
        for spec in self.exits:
            segment = self.segments[spec.segment]
            arrays = gate_arrays(spec.gate) if spec.gate is not None else (None,) * len(spec.gate_inputs)
            shapes = [None if a is None else a.shape for a in arrays]
            if not spec.gate_inputs or not all(map(segment.accepts, spec.gate_inputs, shapes)):
                continue
            if spec.gate is not None:
                segment.constants.update(zip(spec.gate_inputs, arrays, strict=True))
            gated.add(spec.index)
        return gated

    def _feed_temperatures(self) -> None:
        for k, value in self._temperatures.items():
            value[0] = self.rules[k].temperature  # in place: bound chains share the array

    @classmethod
    def from_settings(cls, package: str | Path | Package, settings: EngineSettings) -> Engine:
        """The engine the CLI, ``device.toml`` and the benchmarks build: one record, one place."""
        trusted = TrustedKeys.load(settings.trusted_keys) if settings.trusted_keys else None
        return cls(package, threads=settings.threads, criterion=settings.criterion, threshold=settings.threshold,
                   cache_dir=settings.cache_dir, backend=settings.backend, precision=settings.precision,
                   trusted_keys=trusted)  # fmt: skip

    @property
    def num_exits(self) -> int:
        return len(self.rules)

    @property
    def rules(self) -> tuple[ExitRule, ...]:
        """Each exit's rule (criterion, threshold, temperature, in-graph score)."""
        return self._scorer.rules

    @rules.setter
    def rules(self, rules: tuple[ExitRule, ...]) -> None:
        self._scorer.rules = rules
        self._feed_temperatures()

    @property
    def _chain(self) -> Chain | None:
        """The backend's batch-1 chain the single-sample walk runs through (None: plain runs)."""
        return self._walker.chain

    @_chain.setter
    def _chain(self, chain: Chain | None) -> None:
        self._walker.chain = chain

    # ---------------------------------------------------------------- one sample

    def run(self, x: Inputs, *, keep_hidden: bool = False) -> Result:
        """One sample, shaped like the model input with or without the batch axis of 1."""
        sample, context = self._inputs.inputs(x, batched=False)
        walker = self._walker
        if walker.chain is not None and self._scorer.straight(True):  # full depth: no Walk needed
            return walker.straight(sample, keep_hidden, time.perf_counter(), context)
        return walker.one(Walk.from_input(sample, context, None, early_exit=True, keep_hidden=keep_hidden))  # type: ignore[return-value]

    def run_until(
        self, x: Inputs, boundary: int, *, early_exit: bool = True, keep_hidden: bool = False
    ) -> Result | Pending:
        """One sample up to ``boundary``: a Result when an exit at or before it is confident,
        else a Pending holding the boundary's tensor. ``early_exit=False`` consults no exit (the
        split-at-k baseline: every sample reaches the boundary, and ``resume`` runs to full depth).
        Boundary -1 is the model input: a Pending holding a copy of ``x``, nothing run yet."""
        self._inputs.boundary(boundary)
        sample, context = self._inputs.inputs(x, batched=False)
        walk = Walk.from_input(sample, context, boundary, early_exit=early_exit, keep_hidden=keep_hidden)
        if boundary == -1:
            return walk.pending(-1, sample.copy(), (0,), {name: value.copy() for name, value in context.items()})
        return self._walker.one(walk)

    def advance(self, pending: Pending, boundary: int, *, early_exit: bool | None = None) -> Result | Pending:
        """Carry one pending sample on from its boundary to the later ``boundary``, nothing
        recomputed: a Result when an exit in between (``boundary``'s included) is confident, else
        a Pending at ``boundary``. ``early_exit`` None keeps the pending state's setting. Stepping
        ``run_until(x, 0)``, ``advance(p, 1)``, ... ``resume(p)`` gives exactly ``run(x)``'s Result,
        and ``advance(run_until(x, k), k2)`` the Pending ``run_until(x, k2)`` gives."""
        if pending.samples != 1:
            raise UsageError(
                f"advance() carries one sample on; this pending state holds {pending.samples} "
                "(from run_batch_until): run_batch_until to the later boundary instead"
            )
        self._inputs.pending(pending)
        self._inputs.boundary(boundary)
        if boundary <= pending.boundary:
            raise UsageError(
                f"cannot advance from boundary {pending.boundary} to boundary {boundary}: expected a later one"
            )
        return self._walker.one(Walk.from_pending(pending, boundary, early_exit=early_exit))

    def resume(self, pending: Pending) -> Result:
        """Finish one pending sample here, from its boundary: later exits still apply, and the
        Result equals what ``run`` gives (its latency counts from the original start)."""
        if pending.samples != 1:
            raise UsageError(
                f"resume() finishes one sample; this pending state holds {pending.samples} "
                "(from run_batch_until): use resume_batch()"
            )
        self._inputs.pending(pending)
        return self._walker.one(Walk.from_pending(pending, None))  # type: ignore[return-value]

    # ---------------------------------------------------------------- batches

    def run_batch(self, xs: Inputs, *, keep_hidden: bool = False, batch_size: int | None = None) -> list[Result]:
        """N samples; early exits retire per sample; results in input order."""
        batch, context = self._inputs.inputs(xs, batched=True)
        step = batch_size if batch_size and batch.shape[0] > batch_size else batch.shape[0]
        results: list[Result] = []
        for start in range(0, batch.shape[0], step):
            chunk = context_rows(context, start, start + step)
            walk = Walk.from_input(batch[start : start + step], chunk, None, early_exit=True, keep_hidden=keep_hidden)
            found, _ = self._walker.batch(walk)
            results += found  # type: ignore[arg-type]  # the final exit answers every sample left
        return results

    def run_batch_until(
        self, xs: Inputs, boundary: int, *, early_exit: bool = True, keep_hidden: bool = False
    ) -> BatchProgress:
        """``run_until`` for a batch: the samples that exit at or before ``boundary`` are answered,
        the survivors come back as one Pending (their rows in input order)."""
        self._inputs.boundary(boundary)
        batch, context = self._inputs.inputs(xs, batched=True)
        walk = Walk.from_input(batch, context, boundary, early_exit=early_exit, keep_hidden=keep_hidden)
        if boundary == -1:
            owned = {name: value.copy() for name, value in context.items()}
            held = walk.pending(-1, batch.copy(), tuple(range(batch.shape[0])), owned)
            return BatchProgress((None,) * batch.shape[0], held)
        found, pending = self._walker.batch(walk)
        return BatchProgress(tuple(found), pending)

    def advance_batch(self, pending: Pending, boundary: int) -> tuple[dict[int, Result], Pending | None]:
        """``advance`` for a batch: ``pending``'s samples carried on from their boundary to the
        later ``boundary``, nothing recomputed. Returns the samples an exit in between (``boundary``'s
        included) was sure of, by input row, and the rest as a Pending at ``boundary`` (rows in input
        order; None when none is left); each answer is the one ``run`` gives. A policy deciding a
        batch boundary by boundary steps with it."""
        self._inputs.pending(pending)
        self._inputs.boundary(boundary)
        if boundary <= pending.boundary:
            raise UsageError(
                f"cannot advance from boundary {pending.boundary} to boundary {boundary}: expected a later one"
            )
        found, later = self._walker.batch(Walk.from_pending(pending, boundary))
        rows = pending.rows
        done = {rows[i]: result for i, result in enumerate(found) if result is not None}
        if later is None:
            return done, None
        return done, dataclasses.replace(later, rows=tuple(rows[i] for i in later.rows))

    def resume_batch(self, pending: Pending) -> list[Result]:
        """Finish pending samples here, batched; one Result per ``pending.rows`` entry, in order,
        each equal to what ``run`` gives."""
        self._inputs.pending(pending)
        found, _ = self._walker.batch(Walk.from_pending(pending, None))
        return found  # type: ignore[return-value]

    # ---------------------------------------------------------------- a tail's answer

    def boundary_tensors(self, pending: Pending) -> tuple[np.ndarray, ...]:
        """What a tail from ``pending``'s boundary takes, in its order: the hidden tensor, then the
        boundary's further tensors (at the input: the model input, then the further inputs)."""
        if pending.boundary == -1:
            names = [spec.name for spec in self.manifest.input.context]
        else:
            names = list(self.manifest.segments[pending.boundary].carries)
        return (pending.hidden, *(pending.context[name] for name in names))

    def tail_results(self, pending: Pending, logits: np.ndarray, *, offload: OffloadInfo | None = None) -> list[Result]:
        """Results from a tail's final logits ``(M, classes)`` for ``pending``'s samples, in order:
        the final exit's rule (temperature, criterion score) applied as a local run would."""
        return self._scorer.tail_results(pending, logits, offload)

    # ---------------------------------------------------------------- measuring

    def run_full(self, xs: Inputs, *, batch_size: int = 256, timing_samples: int = 64) -> FullDepth:
        """Every exit's outputs for every sample, plus batch-1 segment latencies on ``timing_samples``
        of them (0: none, the latencies all 0)."""
        batch, context = self._inputs.inputs(xs, batched=True)
        chunks = (
            (batch[start : start + batch_size], context_rows(context, start, start + batch_size))
            for start in range(0, batch.shape[0], batch_size)
        )
        logits, similarity = full_depth_outputs(self.segments, self.exits, chunks)
        if timing_samples <= 0:  # outputs only (a shadow run): no timing pass
            segment_ms: tuple[float, ...] = (0.0,) * len(self.segments)
        else:
            segment_ms = self._walker.segment_latency(batch[:timing_samples], context_rows(context, 0, timing_samples))
        return FullDepth(logits=logits, similarity=similarity, segment_ms=segment_ms)

    def steps(
        self, x: np.ndarray, context: Context | None = None
    ) -> Iterator[tuple[int, dict[str, np.ndarray], float]]:
        """One sample (batch of 1, already validated) segment by segment, as ``run`` walks it but
        never stopping: (index, outputs, ms). Outputs may be views of the bound chain's buffers,
        overwritten by the next segment. What ``edgeexit profile`` times."""
        return self._walker.steps(x, 0, context)

    def segment_latency(self, xs: Inputs, warmup: int = 3) -> tuple[float, ...]:
        """Mean batch-1 latency of each segment in ms, through the bound chain when there is one."""
        return self._walker.segment_latency(*self._inputs.inputs(xs, batched=True), warmup=warmup)

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
        walk = self._scoring_walk  # one record re-aimed per call: the timed check builds nothing the walk does not
        walk.previous, walk.history, walk.context = previous, list(history), context or {}
        return self._scorer.score(k, walk, outputs, self._scorer.logits(k, outputs), hidden)[0]


__all__ = [
    "BatchProgress",
    "Context",
    "Engine",
    "ExitRule",
    "FullDepth",
    "Inputs",
    "OffloadInfo",
    "Pending",
    "Result",
    "full_depth_outputs",
]
