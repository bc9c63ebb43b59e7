"""The seam between the tail client and the network: one RPC over one channel, with a deadline.

``TailClient`` decides where and when to send (addresses, channels, the request's budget,
breakers, failover); a ``Transport`` carries one call and says how it failed. ``GrpcTransport``
is the real one: the generated stub's call, its ``grpc.RpcError`` turned into the ``OffloadError``
that says what a caller can do (timeout, unavailable, rejected). A transport may wrap another:
``EmulatedLink`` (``edgeexit.transport.link_emulation``) adds a link's delays and losses around
the real call, so the client never knows whether a link is emulated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import grpc

from edgeexit.errors import OffloadError, OffloadRejected, OffloadShed, OffloadTimeout, ServerUnavailable
from edgeexit.transport.generated import grpc_service_pb2 as pb
from edgeexit.transport.generated import grpc_service_pb2_grpc as pb_grpc
from edgeexit.transport.wire import trailing_expected_server_ms

#: gRPC call metadata (``authorization`` for a bearer token), or None.
Metadata = Sequence[tuple[str, str]] | None


class Transport(Protocol):
    """One call to a tail server through ``stub`` (the address's channel), within ``timeout_s``.

    A failure raises an ``OffloadError``: ``OffloadTimeout`` when no reply came in time,
    ``ServerUnavailable`` when the server could not be reached, ``OffloadRejected`` (with the
    status ``code``) when it answered with an error, ``OffloadShed`` when it answered it is too
    loaded for the deadline. ``server_live`` returns the server's expected time in ms when it says
    (``wire.EXPECTED_SERVER_KEY``), else None."""

    def model_infer(
        self,
        stub: pb_grpc.GRPCInferenceServiceStub,
        request: pb.ModelInferRequest,
        *,
        timeout_s: float,
        metadata: Metadata,
    ) -> pb.ModelInferResponse: ...

    def server_live(
        self, stub: pb_grpc.GRPCInferenceServiceStub, *, timeout_s: float, metadata: Metadata
    ) -> float | None: ...


class GrpcTransport:
    """The real call: the stub's unary RPC with gRPC's own deadline."""

    def model_infer(
        self,
        stub: pb_grpc.GRPCInferenceServiceStub,
        request: pb.ModelInferRequest,
        *,
        timeout_s: float,
        metadata: Metadata,
    ) -> pb.ModelInferResponse:
        try:
            return stub.ModelInfer(request, timeout=timeout_s, metadata=metadata)
        except grpc.RpcError as err:
            raise offload_error(err, timeout_s) from None

    def server_live(
        self, stub: pb_grpc.GRPCInferenceServiceStub, *, timeout_s: float, metadata: Metadata
    ) -> float | None:
        try:
            _, call = stub.ServerLive.with_call(pb.ServerLiveRequest(), timeout=timeout_s, metadata=metadata)
        except grpc.RpcError as err:
            raise offload_error(err, timeout_s) from None
        return trailing_expected_server_ms(call.trailing_metadata())

    def __repr__(self) -> str:
        return "GrpcTransport()"


def offload_error(err: grpc.RpcError, timeout_s: float) -> OffloadError:
    """A failed call as the OffloadError a caller can act on; the message is ``CODE: details``
    with a hint for the codes an operator can fix."""
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    name = code.name if code is not None else "UNKNOWN"
    if name == "DEADLINE_EXCEEDED":
        return OffloadTimeout(f"{name}: no reply within {timeout_s * 1e3:.0f} ms")
    message = f"{name}: {details}{_HINTS.get(name, '')}"
    if name == "UNAVAILABLE":
        return ServerUnavailable(message)
    if name == "RESOURCE_EXHAUSTED":  # the server is full for this deadline (a full queue, a wait past it)
        trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
        return OffloadShed(message, code=code, expected_server_ms=trailing_expected_server_ms(trailing))
    return OffloadRejected(message, code=code)


_HINTS = {
    "UNAVAILABLE": " (is the server running and reachable at that address?)",
    "UNAUTHENTICATED": " (pass the server's bearer token: --token-file)",
    "NOT_FOUND": " (the server does not serve this tail: serve the same package's tails/)",
    "FAILED_PRECONDITION": " (the server's tails come from other weights: serve this package)",
}

__all__ = ["GrpcTransport", "Metadata", "Transport", "offload_error"]
