"""The tail server behind ``edgeexit serve``: KServe v2 gRPC over ONNX Runtime, no torch.

    from edgeexit.server import ServerOptions, TailServer

    with TailServer(["pkg/"], ServerOptions(listen="127.0.0.1:0")) as server:
        ...  # server.port is bound; v2 clients call it; leaving the block drains it

One module per job: ``models`` (repositories and packages → sessions), ``validation`` (request →
arrays or a status code with a reason), ``batching`` (dynamic batching, bounded queue),
``service`` (the v2 calls, on ``edgeexit.kserve``), ``auth`` (bearer tokens), ``tls``,
``metrics`` (Prometheus), ``reflection``, ``app`` (start/stop). docs/offload.md is the contract
they implement.

The names below are imported on first use (PEP 562): ``app`` needs grpc-health and ``metrics``
prometheus-client, so importing ``edgeexit.server.models`` or ``.validation`` must not pull them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeexit.errors import RequestError, ServerError
    from edgeexit.server.app import ServerOptions, TailServer
    from edgeexit.server.models import ModelSet, TailModel, load_models

#: Each public name and the module that defines it.
_EXPORTS = {
    "ModelSet": "edgeexit.server.models",
    "RequestError": "edgeexit.errors",
    "ServerError": "edgeexit.errors",
    "ServerOptions": "edgeexit.server.app",
    "TailModel": "edgeexit.server.models",
    "TailServer": "edgeexit.server.app",
    "load_models": "edgeexit.server.models",
}

__all__ = ["ModelSet", "RequestError", "ServerError", "ServerOptions", "TailModel", "TailServer", "load_models"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup skips this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
