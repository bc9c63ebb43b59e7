"""Mistakes a user can fix get exit status 1 and one ``error:`` line naming the file or tensor, what
was expected and what was found; never a traceback. Real subprocesses of ``python -m edgeexit``."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeexit.fileio import sha256_file
from edgeexit.manifest import MANIFEST_FILE
from edgeexit.package import open_package


def run(cli: list[str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cli, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def user_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Assert a clean failure; return the one error line, which must contain every fragment."""
    both = f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    assert result.returncode == 1, f"exit {result.returncode}\n{both}"
    assert "Traceback" not in result.stdout + result.stderr, both
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, f"expected one error line\n{both}"
    assert "error:" not in result.stdout, both
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    return errors[0]


def export(cli: list[str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(cli, "export", *args, cwd=cwd)


@pytest.fixture
def digits_checkpoint(digits_model, tmp_path: Path) -> Path:
    """A checkpoint of the digits_cnn architecture, as `edgeexit train` writes it."""
    from edgeexit.compile.checkpoint import save_checkpoint

    save_checkpoint(digits_model, tmp_path / "ck.pt")
    return tmp_path / "ck.pt"


# --- export: factory, shape and weights -----------------------------------------------------------------------


def test_factory_module_that_is_not_importable(edgeexit_cli: list[str], tmp_path: Path) -> None:
    result = export(edgeexit_cli, tmp_path, "nosuchmod:make", "--input-shape", "1,1,8,8", "--out", "pkg")
    user_error(result, "cannot import module 'nosuchmod'", "'nosuchmod:make'", "expected an importable module")
    assert os.listdir(tmp_path) == []


def test_factory_that_returns_no_multi_exit_model(edgeexit_cli: list[str], tmp_path: Path) -> None:
    (tmp_path / "plainfactory.py").write_text("from torch import nn\n\n\ndef make():\n    return nn.Linear(64, 10)\n")
    result = export(edgeexit_cli, tmp_path, "plainfactory:make", "--input-shape", "1,1,8,8", "--out", "pkg")
    user_error(result, "'plainfactory:make'", "returned Linear", "expected a MultiExitModel", "attach_exits")
    assert not (tmp_path / "pkg").exists()


def test_factory_name_that_is_no_built_in_model(edgeexit_cli: list[str], tmp_path: Path) -> None:
    result = export(edgeexit_cli, tmp_path, "resnet9000", "--input-shape", "1,3,32,32", "--out", "pkg")
    user_error(result, "'resnet9000'", "built-in models:", "digits_cnn")


def test_input_shape_the_model_rejects(edgeexit_cli: list[str], tmp_path: Path) -> None:
    result = export(edgeexit_cli, tmp_path, "digits_cnn", "--input-shape", "1,3,8,8", "--out", "pkg")
    user_error(result, "'digits_cnn'", "(1, 3, 8, 8)", "1 channels", "got 3 channels", "expected the shape")
    assert os.listdir(tmp_path) == []  # no package, no half-written staging directory


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ("abc", ["--input-shape 'abc'", "is not a list of integers", "expected e.g. 1,1,28,28"]),
        ("1,0,8,8", ["--input-shape '1,0,8,8'", "positive sizes", "e.g. 1,1,28,28"]),
    ],
)
def test_malformed_input_shape(edgeexit_cli: list[str], tmp_path: Path, shape: str, expected: list[str]) -> None:
    result = export(edgeexit_cli, tmp_path, "digits_cnn", "--input-shape", shape, "--out", "pkg")
    user_error(result, *expected)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("factory", "shape", "mismatch"),
    [
        ("demo_cnn", "1,1,28,28", "segments.0.0.0.weight: checkpoint (16, 1, 3, 3) vs model (32, 1, 3, 3)"),
        ("tiny_resnet", "1,3,32,32", "segments.0.0.0.weight: checkpoint (16, 1, 3, 3) vs model (16, 3, 3, 3)"),
    ],
    ids=["demo_cnn", "tiny_resnet"],
)
def test_weights_of_another_architecture(
    edgeexit_cli: list[str], tmp_path: Path, digits_checkpoint: Path, factory: str, shape: str, mismatch: str
) -> None:
    result = export(edgeexit_cli, tmp_path, factory, "--weights", "ck.pt", "--input-shape", shape, "--out", "pkg")
    user_error(
        result,
        f"ck.pt does not fit model '{factory}'",
        "(written for 'digits_cnn')",
        mismatch,
        "Expected weights saved from the same factory",
    )
    assert not (tmp_path / "pkg").exists()


def test_weights_file_that_does_not_exist(edgeexit_cli: list[str], tmp_path: Path) -> None:
    result = export(edgeexit_cli, tmp_path, "digits_cnn", "--weights", "nothere.pt", "--input-shape", "1,1,8,8",
                    "--out", "pkg")  # fmt: skip
    user_error(result, "weights file nothere.pt does not exist", "expected a checkpoint")


def test_export_into_an_existing_package_needs_force(edgeexit_cli: list[str], package_copy: Path) -> None:
    manifest_before = (package_copy / MANIFEST_FILE).read_bytes()
    listing_before = sorted(p.relative_to(package_copy) for p in package_copy.rglob("*"))
    result = export(edgeexit_cli, package_copy.parent, "digits_cnn", "--input-shape", "1,1,8,8", "--out", "pkg")
    user_error(result, "pkg already exists", "--force")
    assert (package_copy / MANIFEST_FILE).read_bytes() == manifest_before
    assert sorted(p.relative_to(package_copy) for p in package_copy.rglob("*")) == listing_before
    open_package(package_copy)  # the old package is intact, hashes and all
    assert sorted(os.listdir(package_copy.parent)) == ["pkg"]


def test_export_below_a_regular_file(edgeexit_cli: list[str], tmp_path: Path) -> None:
    (tmp_path / "notadir").write_text("")
    result = export(edgeexit_cli, tmp_path, "digits_cnn", "--input-shape", "1,1,8,8", "--out", "notadir/pkg")
    user_error(result, "notadir")
    assert os.listdir(tmp_path) == ["notadir"]


# --- verify and inspect: damaged packages (no torch involved, fast) ---------------------------------------------


@pytest.mark.parametrize("command", ["verify", "inspect"])
def test_package_with_an_altered_file(edgeexit_cli: list[str], package_copy: Path, command: str) -> None:
    segment = package_copy / "segments" / "1.onnx"
    data = bytearray(segment.read_bytes())
    data[100] ^= 0x20
    segment.write_bytes(bytes(data))
    expected = json.loads((package_copy / MANIFEST_FILE).read_text())["files"]["segments/1.onnx"]
    result = run(edgeexit_cli, command, "pkg", cwd=package_copy.parent)
    user_error(
        result,
        "pkg/segments/1.onnx was altered",
        f"sha256 {sha256_file(segment)[:12]}",  # found
        f"manifest expects {expected[:12]}",  # expected
        "re-export",
    )
    assert result.stdout == ""  # refused before printing any table


@pytest.mark.parametrize("command", ["verify", "inspect"])
def test_package_with_a_missing_file(edgeexit_cli: list[str], package_copy: Path, command: str) -> None:
    (package_copy / "reference.npz").unlink()
    result = run(edgeexit_cli, command, "pkg", cwd=package_copy.parent)
    user_error(result, "pkg/reference.npz is missing", "the manifest lists it")


@pytest.mark.parametrize("command", ["verify", "inspect"])
def test_manifest_of_an_unknown_format_version(edgeexit_cli: list[str], package_copy: Path, command: str) -> None:
    raw = json.loads((package_copy / MANIFEST_FILE).read_text())
    raw["format_version"] = 99
    (package_copy / MANIFEST_FILE).write_text(json.dumps(raw))
    result = run(edgeexit_cli, command, "pkg", cwd=package_copy.parent)
    user_error(result, "pkg/manifest.json", "format_version 99 is not supported", "reads version 1", "re-export")


def test_manifest_that_is_not_json(edgeexit_cli: list[str], package_copy: Path) -> None:
    (package_copy / MANIFEST_FILE).write_text('{"format": "edgeexit-package", ')
    result = run(edgeexit_cli, "inspect", "pkg", cwd=package_copy.parent)
    user_error(result, "pkg/manifest.json is not valid JSON", "expected an edgeexit manifest")


def test_manifest_with_a_wrong_type(edgeexit_cli: list[str], package_copy: Path) -> None:
    raw = json.loads((package_copy / MANIFEST_FILE).read_text())
    raw["segments"][2]["flops"] = "a lot"
    (package_copy / MANIFEST_FILE).write_text(json.dumps(raw))
    result = run(edgeexit_cli, "inspect", "pkg", cwd=package_copy.parent)
    user_error(result, "pkg/manifest.json", "segments[2].flops", "expected an integer", "str 'a lot'")


@pytest.mark.parametrize("command", ["verify", "inspect"])
def test_package_that_does_not_exist(edgeexit_cli: list[str], tmp_path: Path, command: str) -> None:
    result = run(edgeexit_cli, command, "nowhere", cwd=tmp_path)
    user_error(result, "package nowhere does not exist", "edgeexit export")


def test_verify_reports_outputs_that_differ_from_the_reference(edgeexit_cli: list[str], package_copy: Path) -> None:
    reference = package_copy / "reference.npz"
    with np.load(reference) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["1/exit_1_logits"] = arrays["1/exit_1_logits"] + 1.0
    np.savez(reference, **arrays)
    raw = json.loads((package_copy / MANIFEST_FILE).read_text())
    raw["files"]["reference.npz"] = sha256_file(reference)  # the hashes pass; the numbers do not
    (package_copy / MANIFEST_FILE).write_text(json.dumps(raw))

    result = run(edgeexit_cli, "verify", "pkg", cwd=package_copy.parent)
    user_error(
        result,
        "pkg: outputs differ from the stored reference beyond atol=0.0001, rtol=0.001",
        "segment 1 exit_1_logits (1)",
        "monolithic exit_1_logits (1)",
    )
    assert "NO" in result.stdout  # the parity table is printed, with the failing rows marked
    assert "ok: pkg" not in result.stdout
