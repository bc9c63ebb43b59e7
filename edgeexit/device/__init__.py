"""The device side of split inference: run the first segments here, offload the tail.

from edgeexit.device import OffloadRunner, TailClient
from edgeexit.runtime import Engine

engine = Engine("pkg/")
with TailClient(["10.0.0.5:8001", "10.0.0.6:8001"], timeout_s=0.2) as client:
    runner = OffloadRunner(engine, client, split=1, codec="fp16")
    result = runner.run(x)            # result.offload: server, bytes_sent, transfer_ms, fallback, reason
    results = runner.run_batch(xs)    # the survivors at the split travel in one request

Policies decide per sample at each boundary (edgeexit.policy: local, split@K, best-static, adaptive):

    runner = PolicyRunner(engine, client, create_policy("adaptive", costs), decision_log="decisions.jsonl")
    result = runner.run(x)            # result.decisions: every Decision taken, with its inputs

Or from settings, as ``edgeexit run``, the device daemon and ``edgeexit bench`` build theirs:

    settings = OffloadSettings(servers=("10.0.0.5:8001",), policy=PolicySettings("adaptive", profile=path))
    with build_runner(engine, settings) as device:   # opens the TailClient, closes it with the runner
        result = device.run(x)

Never imports torch, onnx or edgeexit.compile.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeexit.device.factory import DeviceRunner, build_runner
    from edgeexit.device.offload import OffloadRunner, offload_or_resume
    from edgeexit.device.policy_runner import PolicyRunner
    from edgeexit.device.settings import OffloadSettings, PolicySettings
    from edgeexit.device.tails import default_codec, select_tail
    from edgeexit.errors import OffloadError
    from edgeexit.runtime.engine import OffloadInfo
    from edgeexit.transport.client import TailClient, TailReply
    from edgeexit.transport.tls import TlsSettings

#: Where each name lives. Imported on first use, so reading settings (``edgeexit run`` without
#: offloading, a device.toml) loads no grpc: only the runners and the client need it.
_HOMES = {
    "DeviceRunner": "edgeexit.device.factory",
    "build_runner": "edgeexit.device.factory",
    "OffloadRunner": "edgeexit.device.offload",
    "offload_or_resume": "edgeexit.device.offload",
    "PolicyRunner": "edgeexit.device.policy_runner",
    "OffloadSettings": "edgeexit.device.settings",
    "PolicySettings": "edgeexit.device.settings",
    "TlsSettings": "edgeexit.transport.tls",
    "default_codec": "edgeexit.device.tails",
    "select_tail": "edgeexit.device.tails",
    "OffloadError": "edgeexit.errors",
    "OffloadInfo": "edgeexit.runtime.engine",
    "TailClient": "edgeexit.transport.client",
    "TailReply": "edgeexit.transport.client",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'edgeexit.device' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])


__all__ = [
    "DeviceRunner",
    "OffloadError",
    "OffloadInfo",
    "OffloadRunner",
    "OffloadSettings",
    "PolicyRunner",
    "PolicySettings",
    "TailClient",
    "TailReply",
    "TlsSettings",
    "build_runner",
    "default_codec",
    "offload_or_resume",
    "select_tail",
]
