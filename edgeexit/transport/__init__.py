"""The wire to tail servers: KServe v2 gRPC stubs (``generated``), the device's tail client, and
the transports it sends through (``rpc``: the real call; ``link_emulation``: an emulated link).

``from edgeexit.transport import TailClient`` loads grpc; importing this package alone does not
(``edgeexit.repository`` reads Triton configs through ``generated`` and must stay light).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeexit.transport.breaker import CircuitBreaker
    from edgeexit.transport.client import TailClient, TailReply
    from edgeexit.transport.rpc import GrpcTransport, Transport
    from edgeexit.transport.tls import TlsSettings

__all__ = ["CircuitBreaker", "GrpcTransport", "TailClient", "TailReply", "TlsSettings", "Transport"]


def __getattr__(name: str) -> Any:
    if name == "CircuitBreaker":
        from edgeexit.transport.breaker import CircuitBreaker

        return CircuitBreaker
    if name == "TlsSettings":
        from edgeexit.transport.tls import TlsSettings

        return TlsSettings
    if name in ("TailClient", "TailReply"):
        from edgeexit.transport import client

        return getattr(client, name)
    if name in ("GrpcTransport", "Transport"):
        from edgeexit.transport import rpc

        return getattr(rpc, name)
    raise AttributeError(f"module 'edgeexit.transport' has no attribute {name!r}")
