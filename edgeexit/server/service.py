"""The tail server's ``inference.GRPCInferenceService`` over the loaded tails (grpc.aio).

The calls every edgeexit server answers alike (health, ServerMetadata, the handler table) are
``edgeexit.kserve``'s; this module adds what a tail server has of its own: models found by name
and version in a ``ModelSet``, ModelConfig, and ModelInfer through each model's batching queue
with the queue and compute times in the response.

Every ModelInfer ends in exactly one ``requests_total`` sample, whatever its status code.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import grpc
import numpy as np

from edgeexit.errors import RequestError
from edgeexit.kserve.request import MessageLimit, parse_request
from edgeexit.kserve.response import add_output, set_parameter
from edgeexit.kserve.service import SERVICE, KServeService, unary
from edgeexit.kserve.status import abort
from edgeexit.server.models import ModelSet, TailModel
from edgeexit.server.validation import decode
from edgeexit.transport.generated import grpc_service_pb2 as pb
from edgeexit.transport.wire import EXPECTED_SERVER_KEY, PARAM_EXPECTED_SERVER_MS

if TYPE_CHECKING:  # the metrics module needs prometheus-client; the service only calls what it is given
    from edgeexit.server.batching import Batcher, BatchResult
    from edgeexit.server.metrics import ServerMetrics

__all__ = ["BATCH_SIZE", "COMPUTE_MS", "EXPECTED_SERVER_MS", "QUEUE_MS", "SERVER_MS", "SERVICE", "InferenceService"]

_log = logging.getLogger(__name__)

#: Response parameters (docs/offload.md): the request's wait for its batch, the batch's run, its size,
#: and the request's whole time in this server (parsing, queue, compute, the reply). A device takes
#: ``server_ms`` out of its measured round trip before it reads the link from it: the server's own
#: handling (~1-1.5 ms in this Python server, measured) is not the link's, and folded into a
#: bandwidth sample it made a 500 Mbit/s link read as ~6 Mbit/s (docs/benchmarks.md, issue 14).
QUEUE_MS = "queue_ms"
COMPUTE_MS = "compute_ms"
BATCH_SIZE = "batch_size"
SERVER_MS = "server_ms"
#: The time a request of this model arriving as the reply leaves would spend here, its wait for a
#: batch and the batch (``Batcher.expected_server_s``): what a device charges its next offload.
#: Probes (ServerLive) carry the largest over the models as trailing metadata under
#: ``EXPECTED_SERVER_KEY``, as does a shed request's RESOURCE_EXHAUSTED.
EXPECTED_SERVER_MS = PARAM_EXPECTED_SERVER_MS


class InferenceService(KServeService[TailModel]):
    """The v2 calls of ``edgeexit serve``; ``ready`` is False until the server listens and again once it drains."""

    SERVER_NAME = "edgeexit"
    EXTENSIONS = ("model_configuration", "parameters")
    DRAIN_NAME = "the tail server"

    def __init__(
        self, models: ModelSet, batchers: dict[str, Batcher], metrics: ServerMetrics, *, max_message_bytes: int
    ) -> None:
        super().__init__()
        self.models = models
        self.batchers = batchers
        self.metrics = metrics
        self.limit = MessageLimit(max_message_bytes, "this server", " (edgeexit serve --max-message-mb)")

    def find_model(self, name: str, version: str) -> TailModel:
        return self.models.get(name, version)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        model = await self.model_or_abort(request.name, request.version, context)
        response = pb.ModelMetadataResponse(
            name=model.name,
            versions=[str(v) for v in self.models.versions(model.name)],
            platform=model.config.platform,
        )
        for spec in model.inputs:
            response.inputs.add(name=spec.name, datatype=spec.datatype, shape=[-1, *spec.dims])
        for spec in model.outputs:
            response.outputs.add(name=spec.name, datatype=spec.datatype, shape=[-1, *spec.dims])
        return response

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        """The effective configuration: config.pbtxt with the server's flags applied."""
        model = await self.model_or_abort(request.name, request.version, context)
        response = pb.ModelConfigResponse()
        response.config.CopyFrom(model.config)
        return response

    def refused(self, error: RequestError) -> None:
        self.metrics.request("", "", error.code.name)

    async def infer(self, data: bytes, context: grpc.aio.ServicerContext, arrived: float) -> pb.ModelInferResponse:
        labels = ("", "")
        try:
            request = parse_request(data, self.limit)
            model = self.models.get(request.model_name, request.model_version)
            labels = (model.name, str(model.version))
            decoded = decode(request, model)
            batcher = self.batchers[model.key]
            result = await batcher.submit(decoded.feeds, decoded.batch, context.time_remaining())
            expected_s = batcher.expected_server_s
            self.metrics.expected(*labels, expected_s)
            response = _response(request, model, decoded.outputs, result, arrived, expected_s * 1e3)
        except RequestError as err:
            self.metrics.request(*labels, err.code.name)
            await abort(context, err)
        except asyncio.CancelledError:  # deadline passed or the client went away
            self.metrics.request(*labels, grpc.StatusCode.CANCELLED.name)
            raise
        except Exception as err:  # a bug, not the client's fault: say so, log it, keep serving
            _log.exception("ModelInfer failed")
            self.metrics.request(*labels, grpc.StatusCode.INTERNAL.name)
            internal = RequestError(grpc.StatusCode.INTERNAL, f"internal server error: {type(err).__name__}: {err}")
            await abort(context, internal)
        self.metrics.request(*labels, grpc.StatusCode.OK.name)
        return response

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        """Live, and the largest expected time over the models as trailing metadata: a device's
        probe reads the server's load without sending a tensor."""
        expected_s = max((batcher.expected_server_s for batcher in self.batchers.values()), default=0.0)
        context.set_trailing_metadata(((EXPECTED_SERVER_KEY, f"{expected_s * 1e3:.3f}"),))
        return await super().ServerLive(request, context)

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        return super().handlers() | {
            "ModelConfig": unary(self.ModelConfig, pb.ModelConfigRequest, pb.ModelConfigResponse)
        }


def _response(
    request: pb.ModelInferRequest,
    model: TailModel,
    outputs: tuple[str, ...],
    result: BatchResult,
    arrived: float,
    expected_server_ms: float,
) -> pb.ModelInferResponse:
    """Outputs as raw little-endian bytes, and the times the adaptive policy reads (``arrived``:
    when the request reached the servicer, ``time.perf_counter``)."""
    response = pb.ModelInferResponse(model_name=model.name, model_version=str(model.version), id=request.id)
    for name in outputs:
        spec = next(s for s in model.outputs if s.name == name)
        add_output(response, name, spec.datatype, np.asarray(result.outputs[name], dtype=spec.dtype))
    set_parameter(response.parameters, QUEUE_MS, float(result.queue_ms))
    set_parameter(response.parameters, COMPUTE_MS, float(result.compute_ms))
    set_parameter(response.parameters, BATCH_SIZE, int(result.batch_size))
    set_parameter(response.parameters, EXPECTED_SERVER_MS, float(expected_server_ms))
    set_parameter(response.parameters, SERVER_MS, (time.perf_counter() - arrived) * 1e3)  # last: all of it
    return response
