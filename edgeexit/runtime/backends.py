"""Which runtime loads a segment file: ONNX Runtime, or LiteRT for a package's TFLite variant.

Every backend gives the engine the same small object (``Segment``), so early exit, batching,
offload and calibration work unchanged whatever runs the graphs. A backend that can also run a
sample through all its segments with no copies between them offers a ``Chain`` (``bind_chain``);
the engine uses it for one sample when it is there and plain ``Segment.run`` calls when not,
never asking which backend it has. LiteRT is imported only when
asked for, so a device with ONNX Runtime alone never needs it (and vice versa for the check).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from edgeexit.errors import PackageError
from edgeexit.manifest import InputSpec, SegmentSpec

BACKENDS = ("onnxruntime", "tflite")
PRECISIONS = ("fp32", "int8")


class Segment(Protocol):
    """One loaded segment graph, named as the manifest names its tensors."""

    spec: SegmentSpec
    #: Optional graph inputs fed with the same value on every run (an exit's temperature), set
    #: by the engine before it binds a chain; the arrays are updated in place, never replaced,
    #: so a bound chain sees new values.
    constants: dict[str, np.ndarray]

    def accepts(self, name: str, shape: tuple[int, ...] | None = None) -> bool:
        """Whether the graph has the optional input ``name`` (else it keeps its built-in value),
        of that ``shape`` when one is given."""
        ...

    def run(self, x: np.ndarray, context: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Outputs by manifest name for input ``x`` (batch first), the request's context inputs
        and the segment's ``constants``."""
        ...


class Chain(Protocol):
    """A package's segments bound once for batch 1: write a sample into ``input`` (or into
    ``outputs[k-1]``'s hidden buffer to start at segment k) and run segment by segment; each
    segment's outputs are views of buffers the next run overwrites."""

    input: np.ndarray
    #: the further model inputs' buffers by name (empty for one-input models), written per request
    context: dict[str, np.ndarray]
    outputs: list[dict[str, np.ndarray]]

    def run_segment(self, k: int) -> dict[str, np.ndarray]:
        """Run segment k on whatever its input buffer holds."""
        ...

    def run_all(self, times: list[float]) -> None:
        """Run every segment in turn from ``input``, appending each one's ms to ``times``: a walk
        no exit can stop before the last, with nothing between two runs but the clock."""
        ...


def open_segment(
    backend: str, path: Path, spec: SegmentSpec, *, threads: int, cache_dir: Path | None, sha256: str
) -> Segment:
    if backend == "onnxruntime":
        from edgeexit.runtime.ort_backend import OrtSegment

        return OrtSegment(path, spec, threads=threads, cache_dir=cache_dir, sha256=sha256)
    if backend == "tflite":
        from edgeexit.runtime.litert_backend import LiteRtSegment

        return LiteRtSegment(path, spec, threads=threads)
    raise PackageError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")


def bind_chain(backend: str, segments: Sequence[Segment], input_spec: InputSpec) -> Chain | None:
    """``backend``'s copy-free batch-1 chain over ``segments`` (opened by ``open_segment`` with
    that backend), or None when it has none or the package's shapes do not allow one."""
    if backend == "onnxruntime":
        from edgeexit.runtime.ort_backend import bind_chain as bind_ort_chain

        return bind_ort_chain(segments, input_spec)  # type: ignore[arg-type]
    return None
