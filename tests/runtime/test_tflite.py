"""The TFLite variant: litert-torch conversion at export, the LiteRT backend, and their parity with ONNX.

Real conversions of the digits model, real LiteRT interpreters against real ONNX Runtime
sessions, real files. Skipped (with the reason) where the ``[tflite-export]`` / ``[tflite]``
extras are not installed; CI installs them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeexit.data import LabelledData
from edgeexit.errors import ExportError, PackageError
from edgeexit.fileio import sha256_file
from edgeexit.package import open_package
from edgeexit.runtime.ort_backend import OrtSegment

pytest.importorskip(
    "litert_torch", reason="needs litert-torch: pip install -c constraints.txt 'edgeexit[tflite-export]'"
)
pytest.importorskip("ai_edge_litert", reason="needs ai-edge-litert: pip install 'edgeexit[tflite]'")

from edgeexit.compile.tflite import add_tflite
from edgeexit.runtime.litert_backend import LiteRtSegment

# litert-torch converts each graph in seconds when the machine is idle; under a loaded 2-core CI the
# conversions passed the suite's 300 s hang guard (a fresh-clone run on an AVX2 EPYC). The guard is
# for hangs, not speed: these modules get more room.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def tflite_package(tmp_path_factory: pytest.TempPathFactory, digits_package: Path, digits_model) -> Path:
    """The digits package with its tflite variant added after export (add_tflite)."""
    target = tmp_path_factory.mktemp("tflite") / "digits"
    shutil.copytree(digits_package, target)
    add_tflite(digits_model, target)
    return target


def segments(root: Path) -> tuple[list[OrtSegment], list[LiteRtSegment]]:
    package = open_package(root)
    manifest = package.manifest
    variant = manifest.variant("tflite")
    onnx = [
        OrtSegment(package.path(s.file), s, threads=1, cache_dir=None, sha256=manifest.files[s.file])
        for s in manifest.segments
    ]
    lite = [LiteRtSegment(package.path(f), s, threads=1) for s, f in zip(manifest.segments, variant.files, strict=True)]
    return onnx, lite


def test_variant_is_recorded_hashed_and_passed_parity(tflite_package: Path) -> None:
    manifest = open_package(tflite_package).manifest
    variant = manifest.variant("tflite")
    assert (variant.backend, variant.precision) == ("tflite", "fp32")
    assert variant.files == tuple(f"tflite/{k}.tflite" for k in range(len(manifest.segments)))
    for name in variant.files:
        assert manifest.files[name] == sha256_file(tflite_package / name)
    assert manifest.find_variant("tflite", "fp32") == variant
    report = variant.report
    assert report["converter"].startswith("litert-torch ")
    assert report["batch"] == ["dynamic"] * len(manifest.segments)
    graphs = {row["graph"] for row in report["parity"]}
    assert {"tflite segment 0", "tflite segment 0 batch 1", f"tflite chain to {len(manifest.segments) - 1}"} <= graphs
    assert all(row["ok"] for row in report["parity"])
    assert not list(tflite_package.glob(".tflite.*")), "the scratch directory is removed"


@pytest.mark.parametrize("batch", [1, 5])
def test_litert_segments_match_onnx_per_segment(tflite_package: Path, digits: LabelledData, batch: int) -> None:
    onnx, lite = segments(tflite_package)
    x = np.ascontiguousarray(digits.x[100 : 100 + batch])  # samples the conversion never saw
    for ort_segment, lite_segment in zip(onnx, lite, strict=True):
        expected = ort_segment.run(x)
        got = lite_segment.run(x)
        assert list(got) == [o.name for o in ort_segment.spec.outputs]
        for name, value in expected.items():
            assert got[name].shape == value.shape
            assert got[name].dtype == value.dtype
            np.testing.assert_allclose(got[name], value, atol=1e-4, rtol=1e-3, err_msg=name)
        if ort_segment.spec.hidden is not None:
            x = expected[ort_segment.spec.hidden]


def test_outputs_are_copies_not_interpreter_buffers(tflite_package: Path, digits: LabelledData) -> None:
    _, lite = segments(tflite_package)
    first = lite[0].run(digits.x[:2])
    kept = {name: value.copy() for name, value in first.items()}
    lite[0].run(digits.x[50:53])  # another batch size: the graph is re-planned and its arena reused
    for name, value in kept.items():
        np.testing.assert_array_equal(first[name], value)


def test_a_graph_that_does_not_fit_the_manifest_is_refused(tflite_package: Path) -> None:
    manifest = open_package(tflite_package).manifest
    with pytest.raises(PackageError, match="does not belong to this manifest"):
        LiteRtSegment(tflite_package / "tflite/0.tflite", manifest.segments[1])


def test_a_corrupted_tflite_file_is_refused(tflite_package: Path, tmp_path: Path, edgeexit_cli: list[str]) -> None:
    broken = tmp_path / "pkg"
    shutil.copytree(tflite_package, broken)
    data = bytearray((broken / "tflite/1.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "tflite/1.tflite").write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"tflite/1\.tflite was altered"):
        open_package(broken)
    done = subprocess.run([*edgeexit_cli, "verify", str(broken)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "1.tflite was altered" in " ".join(done.stderr.split())


def test_other_weights_fail_the_conversion_and_leave_the_package_as_it_was(
    digits_package: Path, digits_model, tmp_path: Path
) -> None:
    import copy

    import torch

    other = copy.deepcopy(digits_model)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.05)
    target = tmp_path / "pkg"
    shutil.copytree(digits_package, target)
    before = (target / "manifest.json").read_text()
    with pytest.raises(ExportError, match=r"LiteRT disagrees with the ONNX segments.*tflite segment 0 hidden_0"):
        add_tflite(other, target)
    assert (target / "manifest.json").read_text() == before
    assert not (target / "tflite").exists()
    assert not list(target.glob(".tflite.*"))
    open_package(target)


def test_engine_on_tflite_gives_the_onnx_engine_answers(tflite_package: Path, digits: LabelledData) -> None:
    from edgeexit.runtime import Engine

    x = digits.x[200:216]
    onnx = Engine(tflite_package).run_batch(x)
    lite = Engine(tflite_package, backend="tflite").run_batch(x)
    assert [(r.prediction, r.exit) for r in lite] == [(r.prediction, r.exit) for r in onnx]
    for a, b in zip(lite, onnx, strict=True):
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)


def test_verify_runs_the_tflite_variant_or_says_why_not(tflite_package: Path, cli_without) -> None:
    from edgeexit.runtime.verify import verify_package

    report = verify_package(tflite_package)
    rows = [c for c in report.checks if c.graph.startswith("tflite segment")]
    segments = open_package(tflite_package).manifest.segments
    assert {c.graph for c in rows} == {f"tflite segment {s.index}" for s in segments}
    assert all(c.ok for c in rows)
    assert report.notes == ()
    # a device without ai-edge-litert still verifies the rest, and says what it did not run
    done = subprocess.run(
        [*cli_without("ai_edge_litert"), "verify", str(tflite_package)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "variant tflite: not run, ai-edge-litert is not installed" in " ".join(done.stdout.split())


def test_a_learned_package_gets_a_tflite_variant_that_scores_its_gates_in_numpy(
    tmp_path: Path, digits_model, digits: LabelledData
) -> None:
    """LiteRT takes no gate inputs: the variant's graphs compute max_prob where the ONNX ones hold the
    gate, and the engine scores the calibrated gate in numpy there, taking the ONNX engine's exits."""
    from edgeexit.calibration import calibrate_manifest
    from edgeexit.compile.export import export
    from edgeexit.fileio import atomic_write_text
    from edgeexit.manifest import MANIFEST_FILE
    from edgeexit.runtime import Engine

    out = tmp_path / "learned"
    export(digits_model, (1, 1, 8, 8), out, labels=digits.labels, sample=digits.x[:8], criterion="learned",
           codecs=(), tflite=True)  # fmt: skip
    engine = Engine(out, cache_dir=None)
    calibrated, _ = calibrate_manifest(engine.manifest, engine.run_full(digits.x), digits.y, criterion="learned",
                                       max_drop=0.03, data_sha256="")  # fmt: skip
    atomic_write_text(out / MANIFEST_FILE, calibrated.to_json())
    onnx, litert = Engine(out, cache_dir=None), Engine(out, cache_dir=None, backend="tflite")
    assert all(rule.graph_score is None and rule.gate is not None for rule in litert.rules[:-1])
    x = digits.x[:200]
    assert [onnx.run(row[None]).exit for row in x] == [litert.run(row[None]).exit for row in x]


def test_a_margin_package_converts_to_tflite(tmp_path: Path, digits_model, digits: LabelledData) -> None:
    """The in-graph margin takes its top two without a sort (``graphs.top_two``): topk became a
    STABLEHLO_SORT op that the LiteRT runtime could not load, so `--criterion margin --tflite` failed."""
    from edgeexit.compile.export import export
    from edgeexit.runtime import Engine

    out = tmp_path / "margin"
    export(digits_model, (1, 1, 8, 8), out, labels=digits.labels, sample=digits.x[:8], criterion="margin",
           codecs=(), tflite=True)  # fmt: skip
    onnx, litert = (
        Engine(out, cache_dir=None, threshold=0.5),
        Engine(out, cache_dir=None, backend="tflite", threshold=0.5),
    )
    x = digits.x[:100]
    found = [(litert.run(row[None]).exit, onnx.run(row[None]).exit) for row in x]
    assert [a for a, _ in found] == [b for _, b in found]
