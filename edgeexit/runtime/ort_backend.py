"""Segments on ONNX Runtime: any-batch runs, and a batch-1 chain bound once.

A plain chain of ``session.run`` calls allocates every output and copies it into the next
call (measured 1.20x a monolithic graph on a small CNN). ``BoundChain`` allocates each
segment's outputs once as numpy arrays, wraps them as OrtValues sharing that memory, and binds
segment k's hidden buffer as segment k+1's input, so a sample flows through with no copies
(measured 1.08x).
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgeexit.errors import PackageError
from edgeexit.manifest import InputSpec, SegmentSpec, TensorSpec
from edgeexit.runtime.sessions import load_session


class OrtSegment:
    """One segment graph and the names the manifest gives its tensors."""

    def __init__(self, path: Path, spec: SegmentSpec, *, threads: int, cache_dir: Path | None, sha256: str) -> None:
        self.spec = spec
        # one arena for all of a package's segments, as inside one graph (see runtime.sessions)
        self.session = load_session(path, threads, cache_dir=cache_dir, sha256=sha256, shared_arena=True)
        self.input_name = spec.inputs[0].name
        #: the graph's inputs after the first: what it takes of a context (other entries are for other segments)
        self._takes = frozenset(i.name for i in spec.inputs[1:])
        self.output_names = [o.name for o in spec.outputs]
        found = [o.name for o in self.session.get_outputs()]
        if sorted(found) != sorted(self.output_names):
            raise PackageError(f"{path} has outputs {found}; the manifest declares {self.output_names}")
        self.constants: dict[str, np.ndarray] = {}
        # inputs with a stored default (ONNX "overridable initializers"): the exit temperature
        self._optional = {i.name: tuple(i.shape) for i in self.session.get_overridable_initializers()}

    def accepts(self, name: str, shape: tuple[int, ...] | None = None) -> bool:
        found = self._optional.get(name)
        return found is not None and (shape is None or found == tuple(shape))

    def run(self, x: np.ndarray, context: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        feeds = {self.input_name: x}
        if context:
            takes = self._takes
            feeds.update(context if context.keys() <= takes else {n: v for n, v in context.items() if n in takes})
        if self.constants:
            feeds.update(self.constants)
        values = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, values, strict=True))


def _static_shape(spec: TensorSpec) -> tuple[int, ...] | None:
    if any(d is None for d in spec.shape[1:]):
        return None
    return (1, *(int(d) for d in spec.shape[1:]))  # type: ignore[arg-type]


_NUMPY = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32, "int8": np.int8}


class BoundChain:
    """Pre-allocated batch-1 buffers, bound once to every segment's IOBinding."""

    def __init__(self, segments: list[OrtSegment], input_spec: TensorSpec, context: Sequence[TensorSpec] = ()) -> None:
        shape = _static_shape(input_spec)
        if shape is None or any(_static_shape(spec) is None for spec in context):
            raise ValueError("dynamic non-batch axes: no fixed buffers to bind")
        self.input = np.zeros(shape, dtype=_NUMPY[input_spec.dtype])
        #: a buffer per further model input (a traced model's side vector), written per request
        self.context = {spec.name: np.zeros(_static_shape(spec), dtype=_NUMPY[spec.dtype]) for spec in context}  # type: ignore[arg-type]
        self.outputs: list[dict[str, np.ndarray]] = []
        self._bindings: list[ort.IOBinding] = []
        self._runs: list[Callable[[], object]] = []
        self._segments = segments
        sources = {segments[0].input_name: self.input, **self.context}  # what a segment's inputs are bound to
        for segment in segments:
            binding = segment.session.io_binding()
            for spec in segment.spec.inputs:  # a boundary of several tensors binds each
                if spec.name not in sources:
                    raise ValueError(f"input {spec.name} is fed per request: no fixed buffer to bind")
                binding.bind_ortvalue_input(spec.name, ort.OrtValue.ortvalue_from_numpy(sources[spec.name]))
            for name, value in segment.constants.items():  # shares the array: in-place updates apply
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value))
            buffers: dict[str, np.ndarray] = {}
            for spec in segment.spec.outputs:
                out_shape = _static_shape(spec)
                if out_shape is None:
                    raise ValueError(f"output {spec.name} has dynamic non-batch axes")
                buffers[spec.name] = np.zeros(out_shape, dtype=_NUMPY[spec.dtype])
                binding.bind_ortvalue_output(spec.name, ort.OrtValue.ortvalue_from_numpy(buffers[spec.name]))
            self._bindings.append(binding)
            self._runs.append(_direct_run(segment.session, binding))
            self.outputs.append(buffers)
            sources = {name: buffers[name] for name in segment.spec.boundary}

    def run_segment(self, k: int) -> dict[str, np.ndarray]:
        """Run segment k on whatever its input buffer holds; returns views of its output buffers."""
        self._runs[k]()
        return self.outputs[k]

    def run_all(self, times: list[float]) -> None:
        """Every segment in turn, timed. Python between two ONNX Runtime calls costs 2-3x its
        hot-loop time (each run evicts the interpreter's caches), so the per-segment bookkeeping
        of a walk waits until the last run: on a 0.4 ms CNN that was most of the engine's overhead
        over the bare chained sessions (docs/benchmarks.md, point 5)."""
        clock = time.perf_counter
        stamps = [clock()]
        for run in self._runs:
            run()
            stamps.append(clock())
        times.extend([(after - before) * 1e3 for before, after in itertools.pairwise(stamps)])


def _direct_run(session: ort.InferenceSession, binding: ort.IOBinding) -> Callable[[], object]:
    """``session.run_with_iobinding(binding)`` without the Python wrapper's per-call WebGPU
    graph-capture bookkeeping (ONNX Runtime 1.2x+), which a CPU session never uses and which cost
    about a microsecond per segment, several when the interpreter's caches are cold between
    segments. The wrapper's own call is the fallback where the binding's internals differ."""
    native = getattr(session, "_sess", None)
    handle = getattr(binding, "_iobinding", None)
    if native is None or handle is None or not hasattr(native, "run_with_iobinding"):
        return functools.partial(session.run_with_iobinding, binding)
    if session.get_providers() != ["CPUExecutionProvider"]:
        return functools.partial(session.run_with_iobinding, binding)
    return functools.partial(native.run_with_iobinding, handle, None)


def bind_chain(segments: Sequence[OrtSegment], input_spec: InputSpec) -> BoundChain | None:
    """A ``BoundChain`` over ``segments``, or None where fixed buffers cannot be bound: dynamic
    non-batch axes (a text encoder's token axis, in its ids and its mask: then the engine runs
    segment by segment). A traced model's further inputs of fixed shape get buffers of their own."""
    try:
        return BoundChain(list(segments), input_spec.tensor, input_spec.context)
    except ValueError:
        return None
