"""ONNX Runtime sessions: the options edge devices get, and a clear error for a graph it cannot load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgeexit.errors import PackageError
from edgeexit.runtime.sessions import load_session, session_options


@pytest.mark.parametrize("threads", [1, 2])
def test_session_options(threads: int) -> None:
    options = session_options(threads)
    assert options.intra_op_num_threads == threads
    assert options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_load_session_uses_the_cpu_provider_only(digits_package: Path) -> None:
    session = load_session(digits_package / "segments/0.onnx")
    assert session.get_providers() == ["CPUExecutionProvider"]
    x = np.zeros((3, 1, 8, 8), np.float32)  # the batch axis is dynamic
    hidden, logits, score, probabilities = session.run(None, {"input": x})
    assert hidden.shape[0] == logits.shape[0] == score.shape[0] == 3
    assert logits.shape == probabilities.shape == (3, 10)


def test_load_session_of_a_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match=r"ONNX Runtime cannot load .*nothing\.onnx"):
        load_session(tmp_path / "nothing.onnx")


def test_load_session_of_a_corrupt_file_names_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(PackageError, match=r"ONNX Runtime cannot load .*bad\.onnx"):
        load_session(bad)
