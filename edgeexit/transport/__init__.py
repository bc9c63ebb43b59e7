"""The wire to tail servers: KServe v2 gRPC stubs (``generated``) and the device's tail client.

``from edgeexit.transport import TailClient`` loads grpc; importing this package alone does not
(``edgeexit.repository`` reads Triton configs through ``generated`` and must stay light).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeexit.transport.breaker import CircuitBreaker
    from edgeexit.transport.client import TailClient, TailReply, TlsConfig

__all__ = ["CircuitBreaker", "TailClient", "TailReply", "TlsConfig"]


def __getattr__(name: str) -> Any:
    if name == "CircuitBreaker":
        from edgeexit.transport.breaker import CircuitBreaker

        return CircuitBreaker
    if name in ("TailClient", "TailReply", "TlsConfig"):
        from edgeexit.transport import client

        return getattr(client, name)
    raise AttributeError(f"module 'edgeexit.transport' has no attribute {name!r}")
