"""What the tail server raises: a setup problem the operator fixes, or a request the client fixes.

``RequestError`` carries the gRPC status code the client receives, so validation, batching and
the service agree on one mapping (docs/offload.md, "Status codes") without a table in between.
"""

from __future__ import annotations

import grpc

from edgeexit.errors import EdgeExitError


class ServerError(EdgeExitError):
    """The server cannot start as configured: a port, a certificate, a token file, a model."""


class RequestError(EdgeExitError):
    """One request cannot be served; ``code`` goes on the wire, ``message`` says what was expected."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.NOT_FOUND, message)
