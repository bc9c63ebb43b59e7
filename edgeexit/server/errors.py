"""The server's errors live in ``edgeexit.errors``; these helpers build the two most common requests errors.

``RequestError`` carries the gRPC status code the client receives, so validation, batching and
the service agree on one mapping (docs/offload.md, "Status codes") without a table in between.
"""

from __future__ import annotations

import grpc

from edgeexit.errors import RequestError, ServerError

__all__ = ["RequestError", "ServerError", "invalid", "not_found"]


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.NOT_FOUND, message)
