"""The device-side extras resolve, fully pinned, for the boards' platforms and Pythons.

Runs tools/platform_matrix.py as a real subprocess: pip (pinned, with each target's marker
environment) resolves ``[device]``, ``[server]`` and ``[tflite]`` with constraints.txt for
linux aarch64 and x86-64 on Python 3.10, 3.11 and 3.12, binary wheels only. A constraints edit
that leaves a board without a wheel, or a dependency without a pin, fails here rather than on
the board. Needs the package registry (about a minute); it skips when the registry is
unreachable and fails when the registry answers but a cell does not resolve.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "platform_matrix.py"
UNREACHABLE = 3  # tools/platform_matrix.py's exit status when the registry does not answer

pytestmark = pytest.mark.slow


@pytest.mark.timeout(600)
def test_device_extras_resolve_on_every_board_platform_and_python(tmp_path: Path) -> None:
    if os.environ.get("EDGEEXIT_SKIP_INSTALL_TESTS"):
        pytest.skip("EDGEEXIT_SKIP_INSTALL_TESTS is set")
    cells_file = tmp_path / "matrix.json"
    result = subprocess.run(
        [sys.executable, str(TOOL), "--json", str(cells_file)], capture_output=True, text=True, timeout=570
    )
    output = result.stdout + result.stderr
    if result.returncode == UNREACHABLE:
        pytest.skip(f"the package registry is unreachable: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, output
    cells = json.loads(cells_file.read_text())
    wanted = set(itertools.product(("device", "server", "tflite"), ("aarch64", "x86_64"), ("3.10", "3.11", "3.12")))
    assert {(c["extra"], c["machine"], c["python"]) for c in cells} == wanted
    assert all(c["ok"] and not c["unpinned"] for c in cells), output
    for cell in cells:
        packages = cell["packages"]
        assert not {"torch", "onnx"} & set(packages), cell  # the board extras stay light
        wanted_here = {"ai-edge-litert"} if cell["extra"] == "tflite" else {"onnxruntime", "grpcio"}
        assert wanted_here <= set(packages), cell  # the runtimes themselves (LiteRT on aarch64 too)
