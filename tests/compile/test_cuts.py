"""`edgeexit cuts`: the candidate cut points of a traced model, with what crosses each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from edgeexit.compile.cuts import candidate_cuts
from edgeexit.compile.zoo_graphs import UNetClassifier


def test_a_cut_in_the_unet_carries_its_skips_and_counts_their_bytes() -> None:
    found = {c.name: c for c in candidate_cuts(UNetClassifier(), (torch.randn(2, 1, 28, 28),))}
    bottom = found["down3"]  # the bottleneck (32x7x7) with both skips (16x14x14, 8x28x28) in flight
    assert bottom.tensors == 3
    assert bottom.bytes_per_sample == 4 * (32 * 7 * 7 + 16 * 14 * 14 + 8 * 28 * 28)
    assert found["up2"].tensors == 2  # one skip left
    assert found["down1"].tensors == 1  # the skip is the cut's own output
    assert "pool" not in found  # called twice: no one output to cut after
    shares = [c.share_before for c in found.values()]
    assert shares == sorted(shares)
    assert shares[-1] == 1.0


def test_the_command_prints_the_table_and_writes_the_plot(tmp_path: Path) -> None:
    png = tmp_path / "cuts.png"
    result = subprocess.run(
        [sys.executable, "-m", "edgeexit", "cuts", "edgeexit.compile.zoo_graphs:UNetClassifier",
         "--input-shape", "1,1,28,28", "--png", str(png)],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if "│ down3 " in line)
    assert "│                3 │" in row
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    refused = subprocess.run(
        [sys.executable, "-m", "edgeexit", "cuts", "graph_unet", "--input-shape", "1,1,28,28"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "already has exits" in refused.stdout + refused.stderr
