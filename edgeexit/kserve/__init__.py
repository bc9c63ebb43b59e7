"""The KServe v2 gRPC protocol (``inference.GRPCInferenceService``) as both edgeexit servers speak it.

``edgeexit serve`` (``edgeexit.server``: tails behind a batching queue) and the device daemon
(``edgeexit.daemon``: the full model behind its Runtime) serve the same calls; what they share
lives here, once:

- ``status``: the ``RequestError`` for each status code a request can end in, and ``abort``;
- ``request``: the ModelInfer bytes → a parsed request (size limit, parse errors), its string
  parameters and the outputs it asks for;
- ``response``: output tensors as raw little-endian bytes, typed response parameters;
- ``service``: ``KServeService``, the health and metadata calls and the handler table both
  services extend with their own ModelInfer and ModelMetadata.

It needs grpc, protobuf and numpy only (plus ``edgeexit.errors`` and the generated stubs): the
daemon runs it under the ``[device]`` extra, which has no grpc-health, and imports
prometheus-client only when metrics are asked for.
"""

from edgeexit.kserve.request import MessageLimit, parse_request, requested_outputs, string_parameter
from edgeexit.kserve.response import add_output, set_parameter
from edgeexit.kserve.service import SERVICE, KServeService
from edgeexit.kserve.status import abort, failed_precondition, invalid, not_found, unavailable

__all__ = [
    "SERVICE",
    "KServeService",
    "MessageLimit",
    "abort",
    "add_output",
    "failed_precondition",
    "invalid",
    "not_found",
    "parse_request",
    "requested_outputs",
    "set_parameter",
    "string_parameter",
    "unavailable",
]
