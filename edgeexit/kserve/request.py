"""A ModelInfer request as bytes → a parsed ``ModelInferRequest``, and the parts every model reads alike.

Both servers register ModelInfer without a deserializer and parse here: that lets them answer an
oversize or unparsable message with INVALID_ARGUMENT and a reason, where grpc's own handling
would give RESOURCE_EXHAUSTED or UNKNOWN with none. What a request's tensors must look like is
each server's contract (its messages name its model), so that stays with the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from edgeexit.kserve.status import invalid
from edgeexit.transport.generated import grpc_service_pb2 as pb

__all__ = ["MessageLimit", "parse_request", "requested_outputs", "string_parameter"]


@dataclass(frozen=True)
class MessageLimit:
    """The largest request a server takes, and how its message names that server and the setting.

    ``holder`` ("this server", "this device") and ``setting`` (" (edgeexit serve --max-message-mb)"
    or "") only word the refusal; ``max_bytes`` is the limit."""

    max_bytes: int
    holder: str = "this server"
    setting: str = ""


def parse_request(data: bytes, limit: MessageLimit) -> pb.ModelInferRequest:
    """Refuse a message over ``limit`` or one that is no ModelInferRequest (INVALID_ARGUMENT), else parse it."""
    if len(data) > limit.max_bytes:
        raise invalid(
            f"the request is {len(data)} bytes; {limit.holder} accepts at most {limit.max_bytes} bytes per message"
            f"{limit.setting}; send fewer samples per request"
        )
    try:
        return pb.ModelInferRequest.FromString(data)
    except DecodeError as err:
        raise invalid(
            f"the request bytes do not parse as inference.ModelInferRequest ({err}); expected a serialized "
            "KServe v2 ModelInferRequest"
        ) from None


def string_parameter(request: pb.ModelInferRequest, key: str) -> str | None:
    """Request parameter ``key`` as a string; None when absent, INVALID_ARGUMENT when not a string_param."""
    if key not in request.parameters:
        return None
    parameter = request.parameters[key]
    if parameter.WhichOneof("parameter_choice") != "string_param":
        raise invalid(f"request parameter {key!r} must be a string_param")
    return parameter.string_param


def requested_outputs(request: pb.ModelInferRequest, known: Sequence[str], known_as: str) -> tuple[str, ...]:
    """The outputs ``request`` names (each once, in its order), or all of ``known`` when it names none.

    An unknown name is INVALID_ARGUMENT; ``known_as`` introduces the list of the ones that exist
    (e.g. "model 'm' returns", "expected any of")."""
    asked = [output.name for output in request.outputs]
    unknown = [name for name in asked if name not in known]
    if unknown:
        raise invalid(
            f"unknown requested output {', '.join(map(repr, unknown))}; {known_as} {', '.join(map(repr, known))}"
        )
    return tuple(dict.fromkeys(asked)) or tuple(known)
