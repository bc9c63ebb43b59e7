"""ONNX Runtime sessions with options chosen on purpose for small CPUs.

One thread by default (an edge box runs other work, and small graphs gain little from more),
full graph optimization, the CPU provider only so behaviour does not change with what else is
installed.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from edgeexit.errors import PackageError


def session_options(threads: int = 1) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def load_session(path: Path, threads: int = 1) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own untyped errors
        raise PackageError(f"ONNX Runtime cannot load {path}: {str(err)[:300]}") from None
