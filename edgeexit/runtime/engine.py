"""The early-exit engine: run segments, stop at the first confident exit. No torch, no onnx.

``run`` serves one sample through a chain bound once (no copies between segments).
``run_batch`` runs a batch through segment 0, retires the samples whose exit is confident,
compacts the survivors and carries only them on, so a batch costs what its hard samples cost;
results come back in input order and match ``run`` sample by sample.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeexit.criteria import Boundary, create_criterion, softmax
from edgeexit.errors import EdgeExitError, InputError
from edgeexit.manifest import CRITERIA, IN_GRAPH_CRITERIA, ExitSpec
from edgeexit.package import Package, open_package
from edgeexit.runtime.ort_backend import BoundChain, OrtSegment
from edgeexit.runtime.sessions import default_cache_dir


@dataclass(frozen=True, eq=False)
class Result:
    """One sample's answer. ``prediction`` is None only when the exit that stopped it has no
    classifier (an encoder stopped by similarity); ``hidden`` is that boundary's tensor when
    the caller asked for it (``keep_hidden=True``)."""

    prediction: int | None
    label: str | None
    probabilities: np.ndarray | None
    exit: int
    score: float
    latency_ms: float
    segment_ms: tuple[float, ...]
    hidden: np.ndarray | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "prediction": self.prediction,
            "label": self.label,
            "exit": self.exit,
            "score": round(float(self.score), 6),
            "probabilities": None if self.probabilities is None else [round(float(p), 6) for p in self.probabilities],
            "latency_ms": round(self.latency_ms, 4),
            "segment_ms": [round(t, 4) for t in self.segment_ms],
        }


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
    """

    def __init__(
        self,
        package: str | Path | Package,
        *,
        threads: int = 1,
        criterion: str | None = None,
        threshold: float | None = None,
        cache_dir: Path | str | None = "default",
    ) -> None:
        self.package = package if isinstance(package, Package) else open_package(package)
        manifest = self.package.manifest
        self.manifest = manifest
        cache = default_cache_dir() if cache_dir == "default" else (Path(cache_dir) if cache_dir else None)
        self.segments = [
            OrtSegment(self.package.path(s.file), s, threads=threads, cache_dir=cache, sha256=manifest.files[s.file])
            for s in manifest.segments
        ]
        self.rules = tuple(self._rule(spec, criterion, threshold) for spec in manifest.exits)
        self._criteria = [create_criterion(rule.criterion) for rule in self.rules]
        self._keeps_history = any(rule.criterion == "patience" for rule in self.rules)
        self._input = manifest.input
        try:
            self._chain: BoundChain | None = BoundChain(self.segments, manifest.input.tensor)
        except ValueError:
            self._chain = None  # dynamic non-batch axes (e.g. sequence length): plain runs

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

    def run(self, x: np.ndarray, *, keep_hidden: bool = False) -> Result:
        """One sample, shaped like the model input with or without the batch axis of 1."""
        sample = self._check(x, batched=False)
        started = time.perf_counter()
        times: list[float] = []
        history: list[np.ndarray] = []
        previous: np.ndarray | None = None
        for k, outputs, ms in self._walk(sample):
            times.append(ms)
            segment = self.segments[k]
            hidden = outputs.get(segment.spec.hidden) if segment.spec.hidden else None
            logits = self._logits(k, outputs)
            score, probabilities = self._score(k, outputs, logits, hidden, previous, history)
            if self.rules[k].final or score[0] >= self.rules[k].threshold:
                # a copy: the bound chain's buffers are overwritten by the next run
                kept = hidden.copy() if (keep_hidden and hidden is not None) else None
                return self._result(k, logits, probabilities, score, 0, started, tuple(times), kept)
            if self._keeps_history and logits is not None:
                history.append(logits.argmax(axis=-1))
            previous = hidden
        raise AssertionError("the final exit always exits")  # pragma: no cover

    # ---------------------------------------------------------------- batches

    def run_batch(self, xs: np.ndarray, *, keep_hidden: bool = False, batch_size: int | None = None) -> list[Result]:
        """N samples; early exits retire per sample; results in input order."""
        batch = self._check(xs, batched=True)
        if batch_size and batch.shape[0] > batch_size:
            results: list[Result] = []
            for start in range(0, batch.shape[0], batch_size):
                results += self.run_batch(batch[start : start + batch_size], keep_hidden=keep_hidden)
            return results
        count = batch.shape[0]
        results_by_index: list[Result | None] = [None] * count
        active = np.arange(count)
        current = batch
        previous: np.ndarray | None = None
        history: list[np.ndarray] = []
        times: list[float] = []
        started = time.perf_counter()
        for k, segment in enumerate(self.segments):
            tick = time.perf_counter()
            outputs = segment.run(current)
            times.append((time.perf_counter() - tick) * 1e3)
            hidden = outputs.get(segment.spec.hidden) if segment.spec.hidden else None
            logits = self._logits(k, outputs)
            score, probabilities = self._score(k, outputs, logits, hidden, previous, history)
            leaving = np.ones(len(active), bool) if self.rules[k].final else score >= self.rules[k].threshold
            if probabilities is None and logits is not None and leaving.any():
                probabilities = softmax(logits, self.rules[k].temperature)
            for i in np.flatnonzero(leaving):
                kept = hidden[i : i + 1].copy() if (keep_hidden and hidden is not None) else None
                results_by_index[active[i]] = self._result(
                    k, logits, probabilities, score, i, started, tuple(times), kept
                )
            staying = ~leaving
            if not staying.any():
                break
            if logits is not None:
                history.append(logits.argmax(axis=-1))
            history = [h[staying] for h in history]
            active = active[staying]
            current = np.ascontiguousarray(hidden[staying])  # type: ignore[index]
            previous = current
        return [r for r in results_by_index if r is not None]

    def run_full(self, xs: np.ndarray, *, batch_size: int = 256, timing_samples: int = 64) -> FullDepth:
        """Every exit's outputs for every sample, plus batch-1 segment latencies on a few of them."""
        batch = self._check(xs, batched=True)
        logits: list[list[np.ndarray]] = [[] for _ in self.segments]
        similarity: list[list[np.ndarray]] = [[] for _ in self.segments]
        similar = create_criterion("similarity")
        for start in range(0, batch.shape[0], batch_size):
            current = batch[start : start + batch_size]
            previous = None
            for k, segment in enumerate(self.segments):
                outputs = segment.run(current)
                found = self._logits(k, outputs)
                if found is not None:
                    logits[k].append(found)
                hidden = outputs.get(segment.spec.hidden) if segment.spec.hidden else None
                if hidden is not None:
                    similarity[k].append(similar.score(Boundary(None, hidden, previous)))
                    previous = current = hidden
                else:
                    similarity[k].append(np.zeros(len(current), np.float32))
        return FullDepth(
            logits=tuple(np.concatenate(parts) if parts else None for parts in logits),
            similarity=tuple(np.concatenate(parts) for parts in similarity),
            segment_ms=self.segment_latency(batch[:timing_samples]),
        )

    def segment_latency(self, xs: np.ndarray, warmup: int = 3) -> tuple[float, ...]:
        """Mean batch-1 latency of each segment in ms, through the bound chain when there is one."""
        batch = self._check(xs, batched=True)
        totals = np.zeros(len(self.segments))
        for i in range(-warmup, batch.shape[0]):
            for k, _, ms in self._walk(batch[max(i, 0) : max(i, 0) + 1]):
                if i >= 0:
                    totals[k] += ms
        return tuple(float(t / max(batch.shape[0], 1)) for t in totals)

    # ---------------------------------------------------------------- helpers

    def _walk(self, sample: np.ndarray) -> Iterator[tuple[int, dict[str, np.ndarray], float]]:
        """Segment by segment for one sample: (index, outputs, ms). Through the bound chain when
        there is one (outputs are views of its buffers), else plain runs passing hidden on."""
        current = sample
        if self._chain is not None:
            np.copyto(self._chain.input, sample)
        for k, segment in enumerate(self.segments):
            tick = time.perf_counter()
            outputs = self._chain.run_segment(k) if self._chain is not None else segment.run(current)
            yield k, outputs, (time.perf_counter() - tick) * 1e3
            if segment.spec.hidden:
                current = outputs[segment.spec.hidden]

    def _logits(self, k: int, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
        name = self.manifest.exits[k].logits
        return outputs[name] if name else None

    def _score(
        self,
        k: int,
        outputs: dict[str, np.ndarray],
        logits: np.ndarray | None,
        hidden: np.ndarray | None,
        previous: np.ndarray | None,
        history: Sequence[np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The exit's scores, and its probabilities when computing the score produced them."""
        rule = self.rules[k]
        if rule.graph_score is not None:
            return outputs[rule.graph_score], None
        criterion = self._criteria[k]
        probabilities = None
        if logits is not None and not criterion.needs_hidden:
            probabilities = softmax(logits, rule.temperature)  # once: the score and the Result share it
        if rule.final and (logits is None or criterion.needs_hidden):  # the final exit exits anyway
            return np.ones(len(logits) if logits is not None else len(hidden), np.float32), None  # type: ignore[arg-type]
        boundary = Boundary(logits, hidden, previous, tuple(history), rule.temperature, probabilities)
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
    ) -> Result:
        latency = (time.perf_counter() - started) * 1e3
        if logits is None:
            return Result(None, None, None, k, float(score[i]), latency, times, hidden)
        row = probabilities[i] if probabilities is not None else softmax(logits[i], self.rules[k].temperature)
        prediction = int(logits[i].argmax())
        labels = self.manifest.labels
        label = labels[prediction] if prediction < len(labels) else str(prediction)
        return Result(prediction, label, row.copy(), k, float(score[i]), latency, times, hidden)

    def _check(self, x: object, *, batched: bool) -> np.ndarray:
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
