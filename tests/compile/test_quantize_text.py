"""``quantize_package`` on a text encoder: token ids + attention mask, a dynamic token axis.

The zoo's tiny masked encoder (``tiny_text``) stands in for BERT, so dynamic and static quantization, the
mask reaching every segment's calibration reader, and the engine running the int8 variant on
padded batches and unpadded single texts are all tested in seconds.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgeexit.compile import export
from edgeexit.compile.model import MultiExitModel
from edgeexit.compile.quantize import TRANSFORMER_OP_TYPES, QuantizeOptions, QuantizeReport, quantize_package
from edgeexit.compile.zoo import tiny_text
from edgeexit.compile.zoo import tiny_text_tokens as _tokens
from edgeexit.errors import DataError
from edgeexit.package import open_package
from edgeexit.runtime import Engine


def _labels(model: MultiExitModel, tokens: dict[str, np.ndarray]) -> np.ndarray:
    """The fp32 final exit's answers as labels: untrained heads, so accuracy reads agreement."""
    with torch.no_grad():
        logits = model(torch.from_numpy(tokens["input_ids"]), torch.from_numpy(tokens["attention_mask"]))[-1]
    return logits.argmax(dim=-1).numpy().astype(np.int64)


@pytest.fixture(scope="module")
def text_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("text") / "pkg"
    export(tiny_text(dim=32, layer_norm=True), (1, 12), out, sample=_tokens(6, 12), labels=["neg", "neu", "pos"])
    return out


@pytest.fixture(scope="module")
def data() -> tuple[dict[str, np.ndarray], np.ndarray]:
    tokens = _tokens(96, 16, seed=1)
    return tokens, _labels(tiny_text(dim=32, layer_norm=True), tokens)


def _copy(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


@pytest.fixture(scope="module")
def dynamic(text_package: Path, data, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, QuantizeReport]:
    root = _copy(text_package, tmp_path_factory.mktemp("dynamic") / "pkg")
    tokens, y = data
    return root, quantize_package(root, tokens, y, QuantizeOptions(samples=32, timing_samples=4))


def test_text_encoders_are_quantized_dynamically_by_default(dynamic) -> None:
    root, report = dynamic
    manifest = open_package(root).manifest
    variant = manifest.variant("int8")
    assert variant.files == ("int8/0.onnx", "int8/1.onnx", "int8/2.onnx")
    assert variant.report["mode"] == "dynamic"
    assert variant.report["op_types"] == list(TRANSFORMER_OP_TYPES)
    assert report.calibration_samples == 0  # dynamic: activation ranges come from each call
    for name in variant.files:  # hashed: open_package checks them
        assert manifest.files[name]
    for k in range(3):
        ops = {node.op_type for node in onnx.load(str(root / f"int8/{k}.onnx")).graph.node}
        assert "DynamicQuantizeLinear" in ops or "DynamicQuantizeMatMul" in ops, ops
        assert "LayerNormalization" in ops  # left float
    for change in report.exits:
        assert change.agreement is not None
        assert change.agreement >= 0.8, change
    assert all(c.precision == "int8" and c.alone_agreement is not None for c in report.choices)


def test_engine_runs_the_int8_text_variant_padded_and_unpadded(dynamic, data) -> None:
    """The attention mask carries through int8 segments: a padded batch answers as the texts do alone.
    Not bit for bit: dynamic quantization takes each call's own activation range, and a batch's range
    spans its other texts. With the u8s8 kernels this test once ran on, an AVX2-only CPU saturated and
    the two answers drifted 0.05 apart; the default scheme (u8u8) is exact on every CPU, so what is
    left is the range's rounding."""
    root, _ = dynamic
    tokens, _ = data
    engine = Engine(root, precision="int8", cache_dir=None, threshold=2.0)  # full depth
    batch = engine.run_batch({name: value[:8] for name, value in tokens.items()})
    for i, result in enumerate(batch):
        length = int(tokens["attention_mask"][i].sum())
        alone = engine.run({name: value[i, :length] for name, value in tokens.items()})
        np.testing.assert_allclose(alone.probabilities, result.probabilities, atol=2e-2)


def test_static_mode_feeds_every_segment_its_hidden_tensor_and_the_mask(text_package: Path, data, tmp_path) -> None:
    root = _copy(text_package, tmp_path / "pkg")
    tokens, y = data
    report = quantize_package(root, tokens, y, QuantizeOptions(samples=24, timing_samples=2, mode="static"))
    assert report.variant.report["mode"] == "static"
    assert report.calibration_samples == 24
    assert [s["shape_inference"] for s in report.variant.report["segments"]] != []
    for k in range(3):
        model = onnx.load(str(root / f"int8/{k}.onnx"))
        consumers = {i: node.op_type for node in model.graph.node for i in node.input}
        dequantized = [n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"]
        assert dequantized, f"segment {k} has no quantized node"
        fed = {consumers[name] for name in dequantized if name in consumers}
        assert "MatMul" in fed  # the projections' weights and inputs are int8
        assert not fed & {"LayerNormalization", "Tanh", "Softmax", "Gelu"}, fed  # these stay float
    for change in report.exits:
        assert change.agreement is not None
        assert change.agreement >= 0.8, change
    engine = Engine(root, precision="int8", cache_dir=None)
    assert len(engine.run_batch(tokens)) == len(y)


def test_text_inputs_are_checked(text_package: Path, data) -> None:
    tokens, y = data
    with pytest.raises(DataError, match="several inputs"):
        quantize_package(text_package, tokens["input_ids"].astype(np.float32), y)
    with pytest.raises(DataError, match="takes"):
        quantize_package(text_package, {"input_ids": tokens["input_ids"]}, y)
    with pytest.raises(DataError, match="different shapes"):
        quantize_package(
            text_package, {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"][:, :3]}, y
        )
    with pytest.raises(DataError, match="labels"):
        quantize_package(text_package, tokens, y[:5])


def test_cli_tweets_need_a_text_encoder(edgeexit_cli: list[str], package_copy: Path) -> None:
    done = subprocess.run(
        [*edgeexit_cli, "quantize", str(package_copy), "--data", "tweets"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "tokenizer" in done.stderr


def test_verify_runs_the_int8_variant_and_reports_its_agreement(dynamic) -> None:
    from edgeexit.runtime.verify import verify_package

    root, _ = dynamic
    report = verify_package(root)
    assert report.ok
    (note,) = [n for n in report.notes if n.startswith("variant int8")]
    assert "agrees with fp32 on" in note
