"""The device layer on a device: no torch, no onnx, no edgeexit.compile, even while it offloads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import importlib.abc, json, socket, sys

class Block(importlib.abc.MetaPathFinder):  # a device has no torch or onnx: importing them fails
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "onnx", "onnxscript"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Block())
import numpy as np
from edgeexit.device import OffloadRunner, TailClient
from edgeexit.runtime import Engine

with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    dead = f"127.0.0.1:{sock.getsockname()[1]}"
engine = Engine(sys.argv[1], cache_dir=None)
with TailClient(dead, timeout_s=2) as client:
    result = OffloadRunner(engine, client, split=0, early_exit=False).run(np.zeros((1, 8, 8), np.float32))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "onnxscript")
                or m.startswith("edgeexit.compile"))
print("LAYERS " + json.dumps({"loaded": loaded, "fallback": result.offload.fallback, "grpc": "grpc" in sys.modules}))
"""


def test_offloading_loads_no_torch_onnx_or_compile(digits_package: Path) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(digits_package)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("LAYERS "))
    assert json.loads(line.removeprefix("LAYERS ")) == {"loaded": [], "fallback": True, "grpc": True}
