"""``tools/bench_gates.py`` as a real subprocess: every criterion and method on unseen halves, and the
wall time of each calibrated package through the runtime (the digits package, so it runs anywhere)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_gates_compares_every_criterion_on_unseen_halves(digits_package: Path, tmp_path: Path) -> None:
    command = [sys.executable, str(REPO / "tools" / "bench_gates.py"), str(digits_package), "--data", "digits",
               "--splits", "3", "--max-drop", "0.03", "--wall"]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "3 splits of" in out
    for criterion in ("max_prob", "margin", "entropy", "patience", "learned"):
        for method in ("margin 1 s.e.", "LTT vs final, delta 0.1", "LTT vs labels, delta 0.1"):
            assert f"| {criterion} | {method} |" in out, out
    assert "wall time through Engine.run" in out
    assert out.count("x | ") >= 15  # a speedup in every wall-time row
    assert list(digits_package.iterdir())  # read, never changed: the package is still there
