"""The daemon is device code: it loads no torch/onnx/edgeexit.compile, and not edgeexit.server.

``[device]`` installs grpc and protobuf but neither grpc-health nor prometheus-client, so the
daemon and the v2 protocol module it shares with ``edgeexit serve`` (``edgeexit.kserve``) must
import with those two unimportable. grpc itself probes for grpc_health (and grpc_reflection)
when installed and carries on without them, so a fresh interpreter blocks them outright rather
than only looking at ``sys.modules`` afterwards.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import importlib.abc, json, sys

MISSING = ("grpc_health", "grpc_reflection", "prometheus_client")
attempts = []

class Block(importlib.abc.MetaPathFinder):
    # what [device] does not install: importing it fails, and the attempt is recorded
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in MISSING:
            attempts.append(name)
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Block())
import grpc  # its own optional probe for grpc_health is not the daemon's doing
attempts.clear()

import edgeexit.kserve, edgeexit.kserve.request, edgeexit.kserve.response, edgeexit.kserve.service
import edgeexit.kserve.status
import edgeexit.daemon, edgeexit.daemon.app, edgeexit.daemon.service, edgeexit.daemon.runner
import edgeexit.daemon.logs, edgeexit.daemon.metrics
import edgeexit.cli.daemon_commands
print(json.dumps({"attempts": attempts, "loaded": sorted(
    m for m in sys.modules
    if m.split(".")[0] in ("torch", "onnx", "onnxscript", *MISSING)
    or m.split(".")[:2] in (["edgeexit", "compile"], ["edgeexit", "server"])
)}))
"""


def test_the_daemon_and_kserve_import_only_device_modules() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"attempts": [], "loaded": []}


KSERVE_DIR = Path(__file__).resolve().parents[2] / "edgeexit" / "kserve"
#: What edgeexit.kserve may import when it is imported (besides the standard library).
KSERVE_ALLOWED = (
    "grpc",
    "google.protobuf",
    "numpy",
    "edgeexit.__version__",
    "edgeexit.errors",
    "edgeexit.kserve",
    "edgeexit.transport.generated",
)


def _imports(tree: ast.Module) -> list[str]:
    """Modules imported at module level (function bodies are lazy; none is under TYPE_CHECKING here)."""
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module == "edgeexit":  # the package's own names
            names.extend(f"edgeexit.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


def test_kserve_imports_only_grpc_protobuf_numpy_and_edgeexit_errors() -> None:
    """Statically, so an import the dynamic check above does not reach is caught too."""
    files = sorted(KSERVE_DIR.glob("*.py"))
    assert files
    offences = []
    for file in files:
        for name in _imports(ast.parse(file.read_text(encoding="utf-8"))):
            root = name.split(".")[0]
            allowed = any(name == a or name.startswith(f"{a}.") for a in KSERVE_ALLOWED)
            if root in sys.stdlib_module_names or root == "__future__" or allowed:
                continue
            offences.append(f"{file.name} imports {name}")
    assert offences == []
