"""Bearer-token authentication: metadata ``authorization: Bearer <token>`` on every call.

One interceptor for the whole server, so no handler can forget the check. A missing or wrong
token gets UNAUTHENTICATED before the handler runs (nothing is parsed or queued for it).

``grpc.health.v1.Health`` stays open on purpose: load balancers, Kubernetes probes and
``grpc_health_probe`` check liveness without credentials, and the answer (SERVING or not)
reveals nothing a port scan does not. Everything else, the v2 calls (ServerLive included) and
reflection, needs the token.

The token file holds one token per line (blank lines and ``#`` comments ignored), so a token can
be rotated by adding the new one, moving the devices over, then removing the old one. Tokens are
compared with ``hmac.compare_digest`` against every configured token, so the time taken says
nothing about how much of a guess was right or which token it resembled.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import grpc

from edgeexit.errors import ServerError

HEALTH_SERVICE = "grpc.health.v1.Health"
_SCHEME = "bearer"


def read_tokens(path: Path) -> tuple[str, ...]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ServerError(
            f"cannot read the token file {path}: {err}; expected a text file, one token per line"
        ) from None
    tokens = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))
    if not tokens:
        raise ServerError(f"the token file {path} holds no token; expected one token per line")
    if any(any(c.isspace() for c in token) for token in tokens):
        raise ServerError(f"a token in {path} contains whitespace; expected one token per line, no spaces")
    return tokens


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuse every call (outside ``exempt`` services) without one of ``tokens``."""

    def __init__(
        self,
        tokens: Sequence[str],
        *,
        exempt: Collection[str] = (HEALTH_SERVICE,),
        on_denied: Callable[[str], None] | None = None,
    ) -> None:
        if not tokens:
            raise ServerError("bearer-token authentication needs at least one token")
        self._tokens = tuple(token.encode() for token in tokens)
        self._exempt = frozenset(exempt)
        self._on_denied = on_denied or (lambda method: None)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method  # "/package.Service/Method"
        handler = await continuation(handler_call_details)
        if handler is None or method.split("/")[1 if method.startswith("/") else 0] in self._exempt:
            return handler
        problem = self._problem(handler_call_details.invocation_metadata or ())
        if problem is None:
            return handler
        self._on_denied(method)
        return _deny(handler, problem)

    def _problem(self, metadata: Sequence[tuple[str, Any]]) -> str | None:
        values = [value for key, value in metadata if key == "authorization"]
        if not values:
            return "this server requires a bearer token: send metadata 'authorization: Bearer <token>'"
        value = values[0] if isinstance(values[0], str) else bytes(values[0]).decode("latin-1")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != _SCHEME or not token.strip():
            return "the authorization metadata is not a bearer token; expected 'authorization: Bearer <token>'"
        given = token.strip().encode()
        accepted = False
        for known in self._tokens:  # no early exit: every token is compared
            accepted |= hmac.compare_digest(given, known)
        return None if accepted else "the bearer token is not accepted by this server"


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that answers UNAUTHENTICATED and reads nothing."""

    async def abort(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)
