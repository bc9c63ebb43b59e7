"""The daemon is device code: it loads no torch/onnx/edgeexit.compile, and not edgeexit.server.

``[device]`` installs grpc and protobuf but not grpc-health, and the daemon imports
prometheus-client only when ``metrics_port`` is set, so the daemon and the v2 protocol module it
shares with ``edgeexit serve`` (``edgeexit.kserve``) must import with those unimportable.
grpc itself probes for grpc_health (and grpc_reflection) when installed and carries on without
them, so a fresh interpreter blocks them outright rather than only looking at ``sys.modules``
afterwards.
"""

from __future__ import annotations

#: Not in [device] (grpc-health, grpc-reflection), or needed only for metrics_port (prometheus-client).
MISSING = ("grpc_health", "grpc_reflection", "prometheus_client")
SCRIPT = r"""
import edgeexit.kserve, edgeexit.kserve.request, edgeexit.kserve.response, edgeexit.kserve.service
import edgeexit.kserve.status
import edgeexit.daemon, edgeexit.daemon.app, edgeexit.daemon.service, edgeexit.daemon.runner
import edgeexit.daemon.logs, edgeexit.daemon.metrics
import edgeexit.cli.daemon_commands
print(json.dumps({"attempts": attempts, "loaded": sorted(
    m for m in sys.modules
    if m.split(".")[0] in ("torch", "onnx", "onnxscript", *BLOCKED)
    or m.split(".")[:2] in (["edgeexit", "compile"], ["edgeexit", "server"])
)}))
"""


def test_the_daemon_and_kserve_import_only_device_modules(python_without) -> None:
    assert python_without(SCRIPT, MISSING) == {"attempts": [], "loaded": []}
