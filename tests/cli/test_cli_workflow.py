"""The command line as a user runs it: ``python -m edgeexit`` in a real subprocess.

The happy path trains a checkpoint, exports it into a package and verifies and inspects the
package, in one working directory shared by the tests of this module (training and exporting
cost seconds, so they run once).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeexit.manifest import MANIFEST_FILE
from edgeexit.package import open_package

COMMANDS = ("train", "export", "verify", "inspect", "demo", "models")


def run(cli: list[str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*cli, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, edgeexit_cli: list[str]) -> Path:
    """``edgeexit train`` then ``edgeexit export``, as in the README."""
    cwd = tmp_path_factory.mktemp("cli-workflow")
    trained = run(edgeexit_cli, "train", "digits_cnn", "--data", "digits", "--epochs", "1", "--out", "ck.pt", cwd=cwd)
    (cwd / "train.out").write_text(succeeded(trained))
    (cwd / "train.err").write_text(trained.stderr)
    exported = run(
        edgeexit_cli,
        *("export", "digits_cnn", "--weights", "ck.pt", "--input-shape", "1,1,8,8"),
        *("--data", "digits", "--out", "pkg", "--monolithic"),
        cwd=cwd,
    )
    (cwd / "export.out").write_text(succeeded(exported))
    return cwd


def test_help_lists_every_command(edgeexit_cli: list[str], tmp_path: Path) -> None:
    out = succeeded(run(edgeexit_cli, "--help", cwd=tmp_path))
    for command in COMMANDS:
        assert command in out, f"--help does not list {command}"


def test_no_arguments_shows_the_usage(edgeexit_cli: list[str], tmp_path: Path) -> None:
    result = run(edgeexit_cli, cwd=tmp_path)
    assert "Usage" in result.stdout + result.stderr
    assert "export" in result.stdout + result.stderr


def test_models_lists_the_built_in_models(edgeexit_cli: list[str], tmp_path: Path) -> None:
    out = succeeded(run(edgeexit_cli, "models", cwd=tmp_path))
    for name in ("demo_cnn", "digits_cnn", "tiny_resnet", "tiny_vit", "conv", "linear", "attention"):
        assert name in out


def test_train_writes_a_checkpoint_and_prints_per_exit_accuracy(workdir: Path) -> None:
    out = (workdir / "train.out").read_text()
    assert "per-exit accuracy on validation data" in out
    for column in ("exit", "boundary", "head", "accuracy"):
        assert column in out
    assert "checkpoint: ck.pt" in out
    assert (workdir / "ck.pt").is_file()
    assert "digits" in (workdir / "train.err").read_text()  # which data it used, on stderr


def test_export_writes_a_package_from_the_checkpoint(workdir: Path) -> None:
    out = (workdir / "export.out").read_text()
    assert "parity: ONNX Runtime vs PyTorch" in out
    assert "exported pkg" in out
    assert " yes " in out
    assert " NO " not in out  # every parity row passed
    assert (workdir / "pkg" / MANIFEST_FILE).is_file()
    manifest = open_package(workdir / "pkg").manifest
    assert manifest.model_name == "digits_cnn"
    assert manifest.monolithic == "monolithic.onnx"
    assert manifest.input.shape == (None, 1, 8, 8)
    assert manifest.labels == tuple(str(i) for i in range(10))
    assert all(row["ok"] for row in manifest.metadata["export"]["parity"])
    assert [(t.model, t.codec) for t in manifest.tails] == [
        ("digits_cnn__from_0", "fp32"),
        ("digits_cnn__from_1", "fp32"),
        ("digits_cnn__from_input", "fp32"),
    ]
    assert not any(p.name.endswith(".partial") for p in workdir.iterdir())


def test_export_used_the_trained_weights(workdir: Path) -> None:
    """The package computes what the checkpoint computes (not a freshly initialised model)."""
    import torch

    from edgeexit.compile.checkpoint import load_checkpoint
    from edgeexit.compile.zoo import digits_cnn

    model = load_checkpoint(digits_cnn(), workdir / "ck.pt")
    with np.load(workdir / "pkg" / "reference.npz") as reference:
        x, stored = reference["input"], reference["2/exit_2_logits"]
    with torch.no_grad():
        final = model(torch.from_numpy(x))[-1]
    np.testing.assert_allclose(final.numpy(), stored, atol=1e-4, rtol=1e-3)


def test_verify_prints_the_parity_table_and_ok(workdir: Path, edgeexit_cli: list[str]) -> None:
    out = succeeded(run(edgeexit_cli, "verify", "pkg", cwd=workdir))
    assert "verify pkg: 11 file hashes ok" in out  # 3 segments, monolithic, reference, 3 fp32 tails x 2 files
    assert "3 tail(s): config.pbtxt matches the manifest" in out
    for graph in ("segment 0", "segment 1", "segment 2", "monolithic"):
        assert graph in out
    assert " NO " not in out
    package_id = open_package(workdir / "pkg").manifest.package_id
    assert f"ok: pkg (package_id {package_id})" in out


def test_inspect_prints_the_segments_table(workdir: Path, edgeexit_cli: list[str]) -> None:
    out = succeeded(run(edgeexit_cli, "inspect", "pkg", cwd=workdir))
    manifest = open_package(workdir / "pkg").manifest
    assert f"digits_cnn  package_id {manifest.package_id}" in out
    for column in ("seg", "file", "hidden", "MFLOPs", "params", "exit head", "criterion", "threshold"):
        assert column in out
    for segment in manifest.segments:
        assert segment.file in out
    assert "Nx16x8x8" in out  # hidden tensor of segment 0
    assert "input input [None, 1, 8, 8] float32 NCHW; 10 labels: 0, 1, 2" in out
    assert "monolithic graph: monolithic.onnx" in out
    assert "not calibrated" in out


def test_export_tflite_then_run_with_litert_gives_the_onnx_answers(workdir: Path, edgeexit_cli: list[str]) -> None:
    pytest.importorskip("litert_torch", reason="the [tflite-export] extra converts segments")
    pytest.importorskip("ai_edge_litert", reason="the [tflite] extra runs them")
    exported = run(
        edgeexit_cli,
        *("export", "digits_cnn", "--weights", "ck.pt", "--input-shape", "1,1,8,8", "--data", "digits"),
        *("--out", "pkg-tflite", "--codecs", "", "--tflite"),
        cwd=workdir,
    )
    assert "tflite: 3 segments, max |tflite - onnx|" in succeeded(exported)
    batch = workdir / "batch.npz"
    if not batch.exists():
        from edgeexit.data import load_dataset

        data = load_dataset("digits", split="test").head(12)
        np.savez(batch, x=data.x, y=data.y)
    answers = {}
    for backend in ("onnxruntime", "tflite"):
        ran = run(edgeexit_cli, "run", "pkg-tflite", "batch.npz", "--json", "--backend", backend, cwd=workdir)
        out = succeeded(ran)
        answers[backend] = [(row["prediction"], row["exit"]) for row in json.loads(out)]
    assert answers["tflite"] == answers["onnxruntime"]
    missing = run(edgeexit_cli, "run", "pkg-tflite", "batch.npz", "--precision", "int8", cwd=workdir)
    assert missing.returncode != 0
    assert "edgeexit quantize" in missing.stdout + missing.stderr


def test_training_twice_with_one_seed_gives_the_same_checkpoint(
    edgeexit_cli: list[str], workdir: Path, tmp_path: Path
) -> None:
    import torch

    # the heads the factory initializes are seeded too, not only the data order
    args = ("train", "digits_cnn", "--data", "digits", "--epochs", "1", "--out", "ck.pt")
    again = run(edgeexit_cli, *args, cwd=tmp_path)
    succeeded(again)
    first = torch.load(workdir / "ck.pt", weights_only=True)
    second = torch.load(tmp_path / "ck.pt", weights_only=True)
    first, second = first.get("state_dict", first), second.get("state_dict", second)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
