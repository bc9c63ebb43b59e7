"""int8 that means the same thing on every CPU: saturation-free schemes, the float oracle, the
kernel check at quantize time and the drift check in verify.

Nothing here depends on the CPU that runs it. ONNX Runtime's u8 x s8 kernels saturate on x86
without VNNI and not elsewhere, so no test asserts what a saturating scheme does here; each test
asserts what holds on every CPU (the oracle is exact integer arithmetic; the default schemes'
products fit in 16 bits; the kernels match the oracle) or forces the failing path itself.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeexit.compile import quantize as quantize_module
from edgeexit.compile.quantize import QuantizeOptions, quantize_package
from edgeexit.data import load_dataset
from edgeexit.errors import EdgeExitError, ExportError
from edgeexit.fileio import sha256_file
from edgeexit.int8_schemes import DEFAULT_SCHEMES, SCHEMES, float_oracle, get_scheme
from edgeexit.package import open_package
from edgeexit.runtime import Engine
from edgeexit.runtime.inputs import prepare_dataset
from edgeexit.runtime.verify import INT8_REFERENCE_FILE, KERNEL_TOLERANCE, int8_cpu_features, verify_package


def _matmul_integer(path: Path, a_dtype: int, b: np.ndarray, b_zero: int) -> Path:
    """A graph computing MatMulInteger(a, B) with zero points 0 (a) and ``b_zero`` (B)."""
    b_type = TensorProto.INT8 if b.dtype == np.int8 else TensorProto.UINT8
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b", "", "b_zero"], ["y"])],
        "matmul_integer",
        [helper.make_tensor_value_info("a", a_dtype, [None, b.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [None, b.shape[1]])],
        [numpy_helper.from_array(b, "b"), helper.make_tensor("b_zero", b_type, [], [b_zero])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def _run(path: Path, optimize: bool, a: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]


def test_the_oracle_is_exact_integer_arithmetic_even_where_kernels_may_saturate(tmp_path: Path) -> None:
    # 255 * 127 + 255 * 127 = 64,770 does not fit VPMADDUBSW's 16-bit pair sums (x86 without VNNI).
    a = np.full((2, 64), 255, np.uint8)
    b = np.full((64, 3), 127, np.int8)
    b[:, 1] = -128
    quantized = _matmul_integer(tmp_path / "q.onnx", TensorProto.UINT8, b, 0)
    float_oracle(quantized, tmp_path / "oracle.onnx")
    exact = a.astype(np.int64) @ b.astype(np.int64)
    np.testing.assert_array_equal(_run(tmp_path / "oracle.onnx", False, a), exact)


def test_7bit_weights_keep_every_kernel_exact(tmp_path: Path) -> None:
    """The default static scheme's products fit in 16 bits, so this CPU's kernels (whichever they
    are) equal exact arithmetic: the property that makes int8 answers the same everywhere."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (4, 96)).astype(np.uint8)
    a[0] = 255
    b = rng.integers(-64, 64, (96, 8)).astype(np.int8)  # reduce_range: 7 bits
    b[:, 0] = 63
    quantized = _matmul_integer(tmp_path / "q.onnx", TensorProto.UINT8, b, 0)
    exact = a.astype(np.int64) @ b.astype(np.int64)
    np.testing.assert_array_equal(_run(quantized, True, a), exact)
    u8 = rng.integers(0, 256, (96, 8)).astype(np.uint8)  # u8u8: widened to 16 bits before multiplying
    quantized = _matmul_integer(tmp_path / "u.onnx", TensorProto.UINT8, u8, 128)
    np.testing.assert_array_equal(_run(quantized, True, a), a.astype(np.int64) @ (u8.astype(np.int64) - 128))


def test_schemes_by_name_and_mode() -> None:
    assert get_scheme(None, "static") == SCHEMES[DEFAULT_SCHEMES["static"]]
    assert get_scheme(None, "dynamic") == SCHEMES[DEFAULT_SCHEMES["dynamic"]]
    assert all(SCHEMES[name].saturation_free for name in DEFAULT_SCHEMES.values())
    assert get_scheme("u8s8-7bit", "dynamic").reduce_range
    with pytest.raises(EdgeExitError, match="unknown int8 scheme 'int4'; expected one of: s8s8-7bit"):
        get_scheme("int4", "static")
    with pytest.raises(EdgeExitError, match="dynamic quantization always makes uint8 ones; expected one of: u8s8-7bit"):
        get_scheme("s8s8-7bit", "dynamic")


def _digits(manifest, split: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
    return prepare_dataset(load_dataset("digits", split=split).head(limit), manifest)


@pytest.fixture(scope="module")
def quantized(digits_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("int8") / "pkg"
    shutil.copytree(digits_package, root)
    x, y = _digits(open_package(root).manifest, "test", 200)
    quantize_package(root, x, y, QuantizeOptions(samples=32, timing_samples=2))
    return root


def test_a_variant_records_how_it_was_quantized_and_its_exact_outputs(quantized: Path) -> None:
    manifest = open_package(quantized).manifest  # the reference file is hashed like the graphs
    report = manifest.variant("int8").report
    assert report["scheme"] == SCHEMES["s8s8-7bit"].record()
    assert report["weights"] == "int8 (7-bit, symmetric)"
    check = report["kernel_check"]
    assert check["file"] == INT8_REFERENCE_FILE
    assert manifest.files[INT8_REFERENCE_FILE] == sha256_file(quantized / INT8_REFERENCE_FILE)
    assert check["tolerance"] == KERNEL_TOLERANCE
    assert 0.0 <= check["max_error_here"] <= KERNEL_TOLERANCE  # the kernels here matched the oracle
    assert int8_cpu_features() in check["machine"]
    with np.load(quantized / INT8_REFERENCE_FILE) as stored:
        keys = set(stored.files)
    exits = {f"{e.segment}/{e.logits}" for e in manifest.exits if e.logits}
    assert exits <= keys  # every exit's logits; hidden tensors are not stored
    assert not any(key.endswith(f"/{s.hidden}") for s in manifest.segments if s.hidden for key in keys)

    report = verify_package(quantized)
    assert report.ok
    (note,) = [n for n in report.notes if n.startswith("variant int8")]
    assert "reproduce its exact integer outputs" in note
    assert any(c.graph.startswith("int8 kernels vs exact") for c in report.checks)


def _tamper(root: Path, scale: float) -> None:
    """Record other exact outputs than the graphs compute, and re-hash them: what a device whose
    kernels saturate sees (its outputs then differ from the recorded ones), forced on any CPU."""
    path = root / INT8_REFERENCE_FILE
    with np.load(path) as stored:
        arrays = {key: stored[key] * np.float32(scale) + np.float32(1.0) for key in stored.files}
    np.savez(path, **arrays)
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][INT8_REFERENCE_FILE] = sha256_file(path)
    manifest_path.write_text(json.dumps(manifest, indent=2))


def test_verify_refuses_an_int8_variant_that_drifted(quantized: Path, tmp_path: Path, edgeexit_cli: list[str]) -> None:
    root = tmp_path / "pkg"
    shutil.copytree(quantized, root)
    _tamper(root, 1.5)
    report = verify_package(root)
    assert not report.ok
    (note,) = [n for n in report.notes if n.startswith("variant int8")]
    assert "DRIFTED" in note
    assert "saturation-free scheme" in note
    result = subprocess.run([*edgeexit_cli, "verify", str(root)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "DRIFTED" in " ".join(result.stdout.split())
    assert "int8 kernels vs exact" in " ".join((result.stdout + result.stderr).split())
    assert "Traceback" not in result.stderr


def test_an_old_variant_without_recorded_outputs_is_run_and_said_so(quantized: Path, tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    shutil.copytree(quantized, root)
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for variant in manifest["variants"]:
        variant["report"].pop("kernel_check")
    manifest_path.write_text(json.dumps(manifest, indent=2))
    report = verify_package(root)
    assert report.ok
    (note,) = [n for n in report.notes if n.startswith("variant int8")]
    assert "cannot be checked (re-run edgeexit quantize)" in note


def test_kernels_off_from_the_oracle_are_refused_and_nothing_is_written(
    package_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Forced: a negative tolerance fails every comparison, as saturating kernels would.
    monkeypatch.setattr(quantize_module, "KERNEL_TOLERANCE", -1.0)
    before = {p: p.read_bytes() for p in sorted(package_copy.rglob("*")) if p.is_file()}
    x, y = _digits(open_package(package_copy).manifest, "test", 64)
    with pytest.raises(ExportError, match=r"do not compute what the s8s8-7bit graphs specify.*saturation-free scheme"):
        quantize_package(package_copy, x, y, QuantizeOptions(samples=16, timing_samples=2))
    assert {p: p.read_bytes() for p in sorted(package_copy.rglob("*")) if p.is_file()} == before


def test_the_engine_runs_each_saturation_free_scheme_close_to_fp32(digits_package: Path, tmp_path: Path) -> None:
    """Static u8u8 and dynamic u8u8 (a CNN's Convs and Gemm) too: written, checked against the oracle, run."""
    for scheme, mode in (("u8u8", "static"), ("u8u8", "dynamic")):
        root = tmp_path / f"{scheme}-{mode}"
        shutil.copytree(digits_package, root)
        x, y = _digits(open_package(root).manifest, "test", 100)
        report = quantize_package(root, x, y, QuantizeOptions(samples=32, timing_samples=2, mode=mode, scheme=scheme))
        assert report.variant.report["scheme"]["name"] == scheme
        assert report.variant.report["kernel_check"]["max_error_here"] <= KERNEL_TOLERANCE
        fp32 = Engine(root, cache_dir=None, threshold=2.0).run_batch(x[:32])
        int8 = Engine(root, precision="int8", cache_dir=None, threshold=2.0).run_batch(x[:32])
        agree = np.mean([a.prediction == b.prediction for a, b in zip(fp32, int8, strict=True)])
        assert agree >= 0.9, (scheme, agree)
