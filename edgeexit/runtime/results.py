"""The engine's records: what a caller gets back, and what a split request carries between calls.

Kept apart from the walks so that the daemon, the offload layer and calibration can name a
``Result`` or a ``Pending`` without reading how segments are run. numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

import numpy as np

from edgeexit.errors import UsageError
from edgeexit.manifest import ExitGate

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


_new = object.__new__
T = TypeVar("T")


def replaced(instance: T, **changes: Any) -> T:
    """``dataclasses.replace`` for a frozen dataclass without ``__post_init__`` or slots, on a
    per-sample path: the instance's fields copied and ``changes`` written over them, without the
    generated ``__init__``'s ``object.__setattr__`` per field (measured 3.5-4.3 us hot for a Result
    or a Decision, twice per sample in ``PolicyRunner``, against ~0.5 us here)."""
    found = _new(type(instance))
    fields = found.__dict__
    fields.update(instance.__dict__)
    fields.update(changes)
    return found


def answer(
    prediction: int | None,
    label: str | None,
    probabilities: np.ndarray | None,
    exit: int,
    score: float,
    latency_ms: float,
    segment_ms: tuple[float, ...],
    hidden: np.ndarray | None,
    offload: OffloadInfo | None,
) -> Result:
    """``Result(...)`` for the walks' hot path: the same fields written straight into the new
    instance's dict. A frozen dataclass's ``__init__`` sets each field with ``object.__setattr__``;
    right after an ONNX Runtime run (cold caches) that cost 5 us per sample, a fifth of a 0.4 ms
    CNN's whole engine overhead (docs/benchmarks.md, point 5)."""
    result = _new(Result)
    fields = result.__dict__
    fields["prediction"] = prediction
    fields["label"] = label
    fields["probabilities"] = probabilities
    fields["exit"] = exit
    fields["score"] = score
    fields["latency_ms"] = latency_ms
    fields["segment_ms"] = segment_ms
    fields["hidden"] = hidden
    fields["offload"] = offload
    fields["decisions"] = ()
    return result


@dataclass(frozen=True)
class OffloadInfo:
    """How a sample that reached the offload boundary was answered.

    Offloaded (``fallback`` False): ``server`` answered with the tail's final logits. Fallback:
    the offload failed for ``reason`` and the engine finished the sample here from the same
    boundary. ``bytes_sent`` is this sample's share of the request bytes handed to gRPC (summed
    over attempts; ``batch`` samples shared the request), ``transfer_ms`` the wall time from the
    first attempt to the reply or the last failure, ``queue_ms`` / ``compute_ms`` / ``server_ms``
    (the request's whole time in the server) what the server reported (None when it did not say,
    e.g. Triton). ``shed``: the fallback is the server's "too loaded for this deadline"
    (``OffloadShed``), answered at once; ``expected_server_ms`` the time the server expected (from its
    reply, or from the shed).
    """

    boundary: int
    codec: str
    model: str
    server: str | None = None
    bytes_sent: int = 0
    transfer_ms: float = 0.0
    queue_ms: float | None = None
    compute_ms: float | None = None
    server_ms: float | None = None
    batch: int = 1
    attempts: int = 0
    fallback: bool = False
    reason: str | None = None
    shed: bool = False
    expected_server_ms: float | None = None

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
            "server_ms": ms(self.server_ms),
            "batch": self.batch,
            "attempts": self.attempts,
            "shed": self.shed,
            "expected_server_ms": ms(self.expected_server_ms),
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
    (a text encoder's attention mask, a traced model's further inputs) and the further tensors of
    a boundary that carries several (``SegmentSpec.carries``), rows aligned with ``hidden``; empty
    for image models with one-tensor boundaries.
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
            raise UsageError(f"got {len(finished)} results for {len(rows)} pending samples; expected one each")
        merged = list(self.results)
        for row, result in zip(rows, finished, strict=True):
            merged[row] = result
        return merged  # type: ignore[return-value]


@dataclass(frozen=True)
class ExitRule:
    """How one exit decides: criterion, threshold, temperature, and the in-graph score to use
    when it already is the answer (same criterion, at the temperature the graph is fed or 1),
    with the in-graph softmax it came from (None: numpy computes it when a Result needs it)."""

    criterion: str
    threshold: float
    temperature: float
    graph_score: str | None
    final: bool
    graph_probabilities: str | None = None
    #: the ``learned`` criterion's trained gate (None: untrained, or another criterion)
    gate: ExitGate | None = None


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

    def take(self, rows: np.ndarray) -> FullDepth:
        """The same record for the samples ``rows`` only (a benchmark's calibration / test split)."""
        return FullDepth(
            logits=tuple(None if z is None else z[rows] for z in self.logits),
            similarity=tuple(s[rows] for s in self.similarity),
            segment_ms=self.segment_ms,
        )
