"""TFLite for the generic adapter's models: boundaries of several tensors and a side input.

Real litert-torch conversions at export (parity with the ONNX segments, isolated and chained),
then the LiteRT backend against ONNX Runtime through the engine. Skipped where the TFLite
extras are missing; CI installs them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeexit.compile import create_model, export
from edgeexit.errors import ExportError
from edgeexit.runtime import Engine
from edgeexit.runtime.verify import verify_package

pytest.importorskip(
    "litert_torch", reason="needs litert-torch: pip install -c constraints.txt 'edgeexit[tflite-export]'"
)
pytest.importorskip("ai_edge_litert", reason="needs ai-edge-litert: pip install 'edgeexit[tflite]'")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # conversions are slow on a loaded 2-core CI


@pytest.mark.parametrize("name", ["graph_unet", "graph_two_inputs"])
def test_litert_runs_the_carried_tensors_as_onnx_runtime_does(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    package = export(model, (1, 1, 28, 28), tmp_path / name, codecs=(), tflite=True)
    variant = package.manifest.variants[0]
    assert variant.backend == "tflite"
    assert verify_package(tmp_path / name).ok
    generator = torch.Generator().manual_seed(3)
    values = [torch.randn(e.shape, generator=generator).numpy() for e in model.example_inputs((3,))]
    names = (model.input_name, *model.context_names)
    feed = values[0] if not model.context_names else dict(zip(names, values, strict=True))
    for threshold in (0.0, 1.01):  # the first exit answers, then only the final one
        onnx = Engine(package, threshold=threshold, cache_dir=None).run_batch(feed)
        litert = Engine(package, threshold=threshold, backend="tflite", cache_dir=None).run_batch(feed)
        for a, b in zip(onnx, litert, strict=True):
            assert a.exit == b.exit
            np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-3)  # XNNPACK vs MLAS


def test_a_segment_the_converter_cannot_take_fails_the_export_cleanly(tmp_path: Path) -> None:
    """ConvNeXt's channels-last Linear on a 4-D tensor becomes a rank-4 batch_matmul that LiteRT
    refuses: the export names the segment and the converter's reason, and writes nothing."""
    torch.manual_seed(0)
    model = create_model("graph_convnext", in_channels=1, size=28).eval()
    with pytest.raises(ExportError, match=r"litert-torch could not convert segment \d"):
        export(model, (1, 1, 28, 28), tmp_path / "convnext", codecs=(), tflite=True)
    assert not (tmp_path / "convnext").exists()
