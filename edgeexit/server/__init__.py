"""The tail server behind ``edgeexit serve``: KServe v2 gRPC over ONNX Runtime, no torch.

    from edgeexit.server import ServerOptions, TailServer

    with TailServer(["pkg/"], ServerOptions(listen="127.0.0.1:0")) as server:
        ...  # server.port is bound; v2 clients call it; leaving the block drains it

One module per job: ``models`` (repositories and packages → sessions), ``validation`` (request →
arrays or a status code with a reason), ``batching`` (dynamic batching, bounded queue),
``service`` (the v2 calls), ``auth`` (bearer tokens), ``tls``, ``metrics`` (Prometheus),
``reflection``, ``app`` (start/stop). docs/offload.md is the contract they implement.
"""

from edgeexit.server.app import ServerOptions, TailServer
from edgeexit.server.errors import RequestError, ServerError
from edgeexit.server.models import ModelSet, TailModel, load_models

__all__ = ["ModelSet", "RequestError", "ServerError", "ServerOptions", "TailModel", "TailServer", "load_models"]
