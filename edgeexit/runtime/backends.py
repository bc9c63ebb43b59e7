"""Which runtime loads a segment file: ONNX Runtime, or LiteRT for a package's TFLite variant.

Every backend gives the engine the same small object (``Segment``), so early exit, batching,
offload and calibration work unchanged whatever runs the graphs. LiteRT is imported only when
asked for, so a device with ONNX Runtime alone never needs it (and vice versa for the check).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from edgeexit.errors import PackageError
from edgeexit.manifest import SegmentSpec

BACKENDS = ("onnxruntime", "tflite")
PRECISIONS = ("fp32", "int8")


class Segment(Protocol):
    """One loaded segment graph, named as the manifest names its tensors."""

    spec: SegmentSpec

    def run(self, x: np.ndarray, context: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Outputs by manifest name for input ``x`` (batch first) and the request's context inputs."""
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
