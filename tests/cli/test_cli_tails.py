"""Tails on the command line: ``export --codecs``, and ``inspect`` / ``verify`` listing and checking them.
Real subprocesses of ``python -m edgeexit``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from edgeexit.package import open_package


def run(cli: list[str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*cli, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, edgeexit_cli: list[str]) -> tuple[Path, str]:
    """``edgeexit export --codecs fp16,int8`` of the built-in digits model (its initial weights)."""
    cwd = tmp_path_factory.mktemp("cli-tails")
    args = ("export", "digits_cnn", "--input-shape", "1,1,8,8", "--out", "pkg", "--codecs", "fp16,int8")
    return cwd / "pkg", succeeded(run(edgeexit_cli, *args, cwd=cwd))


def test_export_writes_the_tails_of_the_codecs_asked_for(exported: tuple[Path, str]) -> None:
    package, _ = exported
    manifest = open_package(package).manifest
    assert sorted((t.model, t.codec) for t in manifest.tails) == [
        ("digits_cnn__from_0__fp16", "fp16"),
        ("digits_cnn__from_0__int8", "int8"),
        ("digits_cnn__from_1__fp16", "fp16"),
        ("digits_cnn__from_1__int8", "int8"),
        ("digits_cnn__from_input__fp16", "fp16"),  # offload at the input: the whole model
        ("digits_cnn__from_input__int8", "int8"),
    ]
    assert sorted(p.name for p in (package / "tails").iterdir()) == [t.model for t in manifest.tails]


def test_export_prints_every_tails_parity(exported: tuple[Path, str]) -> None:
    _, out = exported
    for name in ("digits_cnn__from_0__fp16", "digits_cnn__from_1__int8"):
        assert f"tail {name}" in out  # ONNX Runtime vs PyTorch, same encoded input
        assert f"chain via {name}" in out  # vs the full local run
    assert "tails/: 6 Triton model(s)" in out
    assert "top-1 agreement >= 90%" in out
    assert " NO " not in out


def test_export_help_mentions_the_codecs(edgeexit_cli: list[str], tmp_path: Path) -> None:
    out = succeeded(run(edgeexit_cli, "export", "--help", cwd=tmp_path))
    assert "--codecs" in out
    for codec in ("fp32", "fp16", "int8"):
        assert codec in out


def test_an_unknown_codec_is_one_error_line(edgeexit_cli: list[str], tmp_path: Path) -> None:
    args = ("export", "digits_cnn", "--input-shape", "1,1,8,8", "--out", "pkg", "--codecs", "fp32,fp8")
    result = run(edgeexit_cli, *args, cwd=tmp_path)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: unknown codec(s) 'fp8'; expected some of fp16, fp32, int8 (e.g. --codecs fp32,fp16,int8)"]
    assert os.listdir(tmp_path) == []


def test_inspect_lists_the_tails(edgeexit_cli: list[str], digits_package: Path) -> None:
    out = succeeded(run(edgeexit_cli, "inspect", str(digits_package), cwd=digits_package.parent))
    assert "tails/: 9 Triton model(s)" in out
    manifest = open_package(digits_package).manifest
    for tail in manifest.tails:
        row = next(line for line in out.splitlines() if f" {tail.model} " in line)
        assert f" {tail.codec} " in row
        assert f" {tail.encoded_bytes} " in row
    int8_row = next(line for line in out.splitlines() if " digits_cnn__from_0__int8 " in line)
    assert " 0.25 " in int8_row  # a quarter of the fp32 bytes
    assert "100.0%" in int8_row


def test_verify_checks_the_tails(edgeexit_cli: list[str], digits_package: Path) -> None:
    out = succeeded(run(edgeexit_cli, "verify", str(digits_package), cwd=digits_package.parent))
    assert "9 tail(s): config.pbtxt matches the manifest and the graph's inputs/outputs" in out
    for tail in open_package(digits_package).manifest.tails:
        assert f"tail {tail.model}" in out
    assert " NO " not in out
