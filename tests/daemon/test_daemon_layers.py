"""The daemon is device code: it loads no torch/onnx/edgeexit.compile, and not edgeexit.server
(whose grpc-health and prometheus-client [device] does not install; grpc itself probes
for grpc_health when installed, so only prometheus_client is checked among those two)."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import json, sys
import edgeexit.daemon, edgeexit.daemon.app, edgeexit.daemon.service, edgeexit.daemon.runner
import edgeexit.cli.daemon_commands
print(json.dumps(sorted(
    m for m in sys.modules
    if m.split(".")[0] in ("torch", "onnx", "onnxscript", "prometheus_client")
    or m.split(".")[:2] in (["edgeexit", "compile"], ["edgeexit", "server"])
)))
"""


def test_the_daemon_imports_only_device_modules() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
