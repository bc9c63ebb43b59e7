"""The status codes a request can end in, as ``RequestError``s, and how one reaches the client.

``RequestError`` (``edgeexit.errors``) carries the gRPC status code the client receives, so
validation, batching and the handlers agree on one mapping (docs/offload.md, "Status codes")
without a table in between: whoever finds the problem picks the code.
"""

from __future__ import annotations

from typing import NoReturn

import grpc

from edgeexit.errors import RequestError

__all__ = ["RequestError", "abort", "failed_precondition", "invalid", "not_found", "unavailable"]


def invalid(message: str) -> RequestError:
    """The request does not match the model: the client must change it."""
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> RequestError:
    """No such model or version here."""
    return RequestError(grpc.StatusCode.NOT_FOUND, message)


def failed_precondition(message: str) -> RequestError:
    """A well-formed request for weights other than the ones loaded (a ``package_id`` mismatch)."""
    return RequestError(grpc.StatusCode.FAILED_PRECONDITION, message)


def unavailable(message: str) -> RequestError:
    """This server cannot take the request now (shutting down, draining): another may."""
    return RequestError(grpc.StatusCode.UNAVAILABLE, message)


async def abort(context: grpc.aio.ServicerContext, error: RequestError) -> NoReturn:
    """End the call with ``error``'s code and message (``context.abort`` raises; this says so to type checkers)."""
    await context.abort(error.code, error.message, trailing_metadata=error.trailing)
    raise AssertionError("grpc's context.abort returned")  # pragma: no cover
