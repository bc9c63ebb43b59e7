"""``edgeexit quantize``: real static int8 quantization of the session's digits package.

The package is quantized once per module (a few seconds) and copied by tests that alter it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeexit.compile.quantize import QuantizeOptions, QuantizeReport, quantize_package
from edgeexit.data import LabelledData, load_dataset
from edgeexit.errors import DataError, EdgeExitError, PackageError
from edgeexit.fileio import sha256_file
from edgeexit.package import open_package
from edgeexit.runtime.inputs import prepare_dataset
from edgeexit.runtime.verify import verify_package


def _data(manifest, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    data = load_dataset("digits", split=split)
    return prepare_dataset(data.head(limit) if limit else data, manifest)


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under the package (hidden ones included) and its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def quantized(digits_package: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, QuantizeReport]:
    root = tmp_path_factory.mktemp("quantized") / "pkg"
    shutil.copytree(digits_package, root)
    manifest = open_package(root).manifest
    x, y = _data(manifest, "test")
    eval_x, eval_y = _data(manifest, "train", 400)
    options = QuantizeOptions(samples=64, timing_samples=8)
    report = quantize_package(root, x, y, options, eval_x=eval_x, eval_y=eval_y)
    return root, report


def test_int8_files_are_hashed_and_the_package_verifies(digits_package: Path, quantized) -> None:
    root, report = quantized
    original = open_package(digits_package).manifest
    manifest = open_package(root).manifest  # hashes checked on open
    variant = manifest.variant("int8")
    assert variant.files == ("int8/0.onnx", "int8/1.onnx", "int8/2.onnx")
    assert (variant.backend, variant.precision) == ("onnxruntime", "int8")
    for name in variant.files:
        assert manifest.files[name] == sha256_file(root / name)
    assert manifest.package_id == original.package_id
    assert manifest.exits == original.exits  # the fp32 exits are untouched; int8 has its own
    assert len(variant.exits) == len(original.exits)
    assert variant.calibration is not None
    assert variant.report["per_channel"] is True
    assert variant.report["calibration_samples"] == 64
    assert verify_package(root).ok
    assert manifest.find_variant("onnxruntime", "int8") == variant
    assert report.package.manifest == manifest


def test_int8_graphs_are_qdq_with_per_channel_weight_scales(quantized) -> None:
    root, _ = quantized
    for k in range(3):
        model = onnx.load(str(root / f"int8/{k}.onnx"))
        ops = [node.op_type for node in model.graph.node]
        assert "QuantizeLinear" in ops
        assert "DequantizeLinear" in ops
        weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        per_channel = [
            node
            for node in model.graph.node
            if node.op_type == "DequantizeLinear"
            and weights.get(node.input[0], np.zeros(0)).dtype == np.int8
            and weights[node.input[1]].ndim == 1
            and weights[node.input[1]].size > 1
        ]
        assert per_channel, f"segment {k}: no int8 weight with one scale per channel"
        # the exit's last layer and its score (softmax onwards) stay float: its logits are not dequantized
        producers = {out: node for node in model.graph.node for out in node.output}
        assert producers[f"exit_{k}_logits"].op_type not in ("DequantizeLinear", "QuantizeLinear")
        assert producers[f"exit_{k}_score"].op_type not in ("DequantizeLinear", "QuantizeLinear")


def test_a_corrupt_int8_file_is_refused(quantized, tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    shutil.copytree(quantized[0], root)
    data = bytearray((root / "int8/1.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (root / "int8/1.onnx").write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"int8/1\.onnx was altered"):
        open_package(root)


def test_accuracy_change_on_digits_is_small(quantized) -> None:
    _, report = quantized
    assert report.eval_samples == 400
    for change in report.exits:
        assert change.fp32 is not None
        assert change.int8 is not None
        assert change.agreement is not None
        assert abs(change.change) <= 0.03, change
        assert change.agreement >= 0.9, change
    assert report.exits[-1].int8 >= 0.95
    record = report.variant.calibration
    assert record.final_accuracy - record.accuracy <= record.max_drop + 1e-9
    assert [t.segment for t in report.segments] == [0, 1, 2]
    assert all(t.fp32_ms > 0 and t.int8_ms > 0 for t in report.segments)


def test_wrong_data_shape_fails_clearly_and_leaves_the_package(package_copy: Path) -> None:
    before = _snapshot(package_copy)
    x = np.zeros((16, 1, 28, 28), np.float32)
    with pytest.raises(DataError, match=r"expects Nx1x8x8"):
        quantize_package(package_copy, x, np.zeros(16, np.int64))
    assert _snapshot(package_copy) == before


def test_a_failure_after_staging_leaves_the_previous_int8_variant(
    quantized, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgeexit.compile.quantize as quantize

    root = tmp_path / "pkg"
    shutil.copytree(quantized[0], root)
    before = _snapshot(root)
    x, y = _data(open_package(root).manifest, "test", 60)
    staged: list[list[str]] = []

    def fail_in_calibration(*args: object, **kwargs: object) -> None:
        staged.append(sorted(p.name for p in root.glob(".int8.*.partial/*.onnx")))
        raise EdgeExitError("calibration failed (injected)")

    monkeypatch.setattr(quantize, "calibrate_manifest", fail_in_calibration)
    with pytest.raises(EdgeExitError, match="injected"):
        quantize_package(root, x, y, QuantizeOptions(samples=16))
    assert staged == [["0.onnx", "1.onnx", "2.onnx"]]  # it failed with new int8 graphs staged
    assert _snapshot(root) == before
    assert verify_package(root).ok
    with pytest.raises(EdgeExitError, match="unknown criterion 'bogus'"):  # options are checked before any work
        quantize_package(root, x, y, QuantizeOptions(criterion="bogus"))


def test_engine_runs_the_int8_segments_with_their_thresholds(quantized) -> None:
    from edgeexit.runtime.engine import Engine

    root, report = quantized
    engine = Engine(root, precision="int8", cache_dir=None)
    x, y = _data(engine.manifest, "test")
    assert [Path(s.session._model_path).parent.name for s in engine.segments] == ["int8"] * 3
    assert [rule.threshold for rule in engine.rules] == [e.threshold for e in report.variant.exits]
    assert [rule.temperature for rule in engine.rules] == [e.temperature for e in report.variant.exits]
    results = engine.run_batch(x)
    accuracy = float(np.mean([r.prediction == label for r, label in zip(results, y, strict=True)]))
    rates = np.bincount([r.exit for r in results], minlength=3) / len(results)
    record = report.variant.calibration
    assert accuracy == pytest.approx(record.accuracy, abs=1e-9)  # calibrated on exactly this data
    assert rates == pytest.approx([e.exit_rate for e in record.exits], abs=1e-9)


@pytest.mark.slow
def test_cli_quantizes_and_refuses_bad_data(edgeexit_cli: list[str], package_copy: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    LabelledData(np.zeros((4, 1, 5, 5), np.float32), np.zeros(4, np.int64), ("a",), "bad").save_npz(bad)
    before = _snapshot(package_copy)
    failed = subprocess.run(
        [*edgeexit_cli, "quantize", str(package_copy), "--data", str(bad)], capture_output=True, text=True, timeout=300
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "error:" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert "expects" in failed.stderr
    assert _snapshot(package_copy) == before

    done = subprocess.run(
        [*edgeexit_cli, "quantize", str(package_copy), "--data", "digits", "--limit", "120", "--samples", "32",
         "--per-tensor", "--max-drop", "0.02", "--keep-fp32", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "int8 accuracy" in done.stdout
    assert "int8 threshold" in done.stdout
    assert "int8/fp32" in done.stdout
    assert "segment(s) 1 kept fp32" in done.stdout
    variant = open_package(package_copy).manifest.variant("int8")
    assert variant.report["per_channel"] is False
    assert variant.files[1] == "segments/1.onnx"
    assert variant.calibration is not None
    assert variant.calibration.max_drop == 0.02


NO_TORCH_SCRIPT = r"""
import importlib.util, sys

sys.modules["torch"] = None  # a workstation without torch: `import torch` fails, find_spec says absent
# load the module by path: the edgeexit.compile package's __init__ imports torch for the exporters
spec = importlib.util.spec_from_file_location("quantize_alone", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["quantize_alone"] = module
spec.loader.exec_module(module)
import numpy as np

data = np.load(sys.argv[3])  # scikit-learn's digits, prepared by the test (scipy misbehaves with torch absent)
x, y = data["x"], data["y"]
report = module.quantize_package(sys.argv[2], x, y, module.QuantizeOptions(samples=8, timing_samples=2))
loaded = sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] == "torch")
print("QUANTIZED", len(report.variant.files), loaded)
"""


def test_quantize_needs_no_torch(package_copy: Path, tmp_path: Path) -> None:
    import edgeexit.compile.quantize as quantize

    x, y = _data(open_package(package_copy).manifest, "test", 40)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH_SCRIPT, quantize.__file__, str(package_copy), str(tmp_path / "data.npz")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "QUANTIZED 3 []" in done.stdout


# ---------------------------------------------------------------- mixed precision


def test_kept_segments_run_their_fp32_graph_and_the_package_verifies(quantized, tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    shutil.copytree(quantized[0], root)  # it has an all-int8 variant: this one replaces it
    manifest = open_package(root).manifest
    x, y = _data(manifest, "test", 200)
    report = quantize_package(root, x, y, QuantizeOptions(samples=32, timing_samples=4, keep_fp32=(0,)))
    manifest = open_package(root).manifest  # every file hashed and unaltered
    variant = manifest.variant("int8")
    assert variant.files == ("segments/0.onnx", "int8/1.onnx", "int8/2.onnx")
    assert not (root / "int8/0.onnx").exists()  # int8/ holds only what the variant names
    assert report.kept_fp32 == (0,)
    assert [c.precision for c in report.choices] == ["fp32", "int8", "int8"]
    assert all(c.alone_agreement is not None for c in report.choices)  # measured for every segment
    assert variant.report["fp32_segments"] == [0]
    assert manifest.package_id == open_package(quantized[0]).manifest.package_id
    assert verify_package(root).ok
    from edgeexit.runtime.engine import Engine

    engine = Engine(root, precision="int8", cache_dir=None)
    assert [Path(s.session._model_path).parent.name for s in engine.segments] == ["segments", "int8", "int8"]
    assert len(engine.run_batch(x)) == len(y)

    # replacing this variant (which names segments/0.onnx) by an all-int8 one keeps segment 0 hashed
    quantize_package(root, x, y, QuantizeOptions(samples=16, timing_samples=2))
    manifest = open_package(root).manifest
    assert manifest.variant("int8").files == ("int8/0.onnx", "int8/1.onnx", "int8/2.onnx")
    assert "segments/0.onnx" in manifest.files
    assert verify_package(root).ok


def test_auto_keeps_fp32_where_int8_is_slower_or_disagrees(package_copy: Path) -> None:
    x, y = _data(open_package(package_copy).manifest, "test", 200)
    before = _snapshot(package_copy)
    failure = ""
    try:  # which segments stay fp32 depends on this machine's timings: check the rule, not the outcome
        report = quantize_package(
            package_copy, x, y, QuantizeOptions(samples=32, timing_samples=8, auto=True, min_agreement=0.99)
        )
    except EdgeExitError as err:  # int8 paid nowhere: nothing written
        failure = str(err)
    if failure:
        assert "every segment would stay fp32" in failure
        assert _snapshot(package_copy) == before
        return
    for timing, choice in zip(report.segments, report.choices, strict=True):
        worse = timing.int8_ms >= timing.fp32_ms or choice.alone_agreement < 0.99
        assert (choice.precision == "fp32") == worse, (timing, choice)
    assert report.variant.files == tuple(
        f"segments/{c.segment}.onnx" if c.precision == "fp32" else f"int8/{c.segment}.onnx" for c in report.choices
    )


def test_keep_fp32_is_checked(package_copy: Path) -> None:
    x, y = _data(open_package(package_copy).manifest, "test", 20)
    with pytest.raises(EdgeExitError, match=r"segment\(s\) \[3\]"):
        quantize_package(package_copy, x, y, QuantizeOptions(keep_fp32=(3,)))
    with pytest.raises(EdgeExitError, match="every segment"):
        quantize_package(package_copy, x, y, QuantizeOptions(keep_fp32=(0, 1, 2)))
    with pytest.raises(EdgeExitError, match="unknown quantization mode"):
        quantize_package(package_copy, x, y, QuantizeOptions(mode="fp4"))
