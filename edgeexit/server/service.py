"""The KServe v2 ``inference.GRPCInferenceService`` over the loaded tails (grpc.aio).

Handlers are registered here rather than through the generated ``add_..._to_server`` because
ModelInfer takes its request as bytes (no deserializer): ``validation.parse_request`` checks the
size against the server's limit and parses it, so an oversize or unparsable message gets
INVALID_ARGUMENT with a reason (grpc itself would answer RESOURCE_EXHAUSTED or UNKNOWN). The
other calls carry a model name at most and use the generated messages as usual.

Every ModelInfer ends in exactly one ``requests_total`` sample, whatever its status code.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
import numpy as np

from edgeexit import __version__
from edgeexit.server.batching import Batcher, BatchResult
from edgeexit.server.errors import RequestError
from edgeexit.server.metrics import ServerMetrics
from edgeexit.server.models import ModelSet, TailModel
from edgeexit.server.validation import decode, parse_request
from edgeexit.transport.generated import grpc_service_pb2 as pb

_log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
SERVER_NAME = "edgeexit"
#: The v2 protocol extensions this server implements beyond the core calls.
EXTENSIONS = ("model_configuration", "parameters")
#: Response parameters (docs/offload.md): the request's wait for its batch, the batch's run, its size.
QUEUE_MS = "queue_ms"
COMPUTE_MS = "compute_ms"
BATCH_SIZE = "batch_size"


class InferenceService:
    """The v2 calls; ``ready`` is False until the server listens and again once it drains."""

    def __init__(
        self, models: ModelSet, batchers: dict[str, Batcher], metrics: ServerMetrics, *, max_message_bytes: int
    ) -> None:
        self.models = models
        self.batchers = batchers
        self.metrics = metrics
        self.max_message_bytes = max_message_bytes
        self.ready = False

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        """Not ready (rather than an error) for a model this server does not have, as Triton answers."""
        try:
            self.models.get(request.name, request.version)
        except RequestError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=list(EXTENSIONS))

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        model = await self._model(request.name, request.version, context)
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
        model = await self._model(request.name, request.version, context)
        response = pb.ModelConfigResponse()
        response.config.CopyFrom(model.config)
        return response

    async def ModelInfer(self, data: bytes, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        labels = ("", "")
        try:
            request = parse_request(data, self.max_message_bytes)
            model = self.models.get(request.model_name, request.model_version)
            labels = (model.name, str(model.version))
            decoded = decode(request, model)
            result = await self.batchers[model.key].submit(decoded.feeds, decoded.batch)
            response = _response(request, model, decoded.outputs, result)
        except RequestError as err:
            self.metrics.request(*labels, err.code.name)
            await context.abort(err.code, err.message)
        except asyncio.CancelledError:  # deadline passed or the client went away
            self.metrics.request(*labels, grpc.StatusCode.CANCELLED.name)
            raise
        except Exception as err:  # a bug, not the client's fault: say so, log it, keep serving
            _log.exception("ModelInfer failed")
            self.metrics.request(*labels, grpc.StatusCode.INTERNAL.name)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal server error: {type(err).__name__}: {err}")
        self.metrics.request(*labels, grpc.StatusCode.OK.name)
        return response

    async def _model(self, name: str, version: str, context: grpc.aio.ServicerContext) -> TailModel:
        try:
            return self.models.get(name, version)
        except RequestError as err:
            await context.abort(err.code, err.message)
            raise  # unreachable: abort raises; keeps type checkers sure a model is returned

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        def unary(behaviour: object, request: type, response: type) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                behaviour, request_deserializer=request.FromString, response_serializer=response.SerializeToString
            )

        return {
            "ServerLive": unary(self.ServerLive, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": unary(self.ServerReady, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": unary(self.ModelReady, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": unary(self.ServerMetadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
            "ModelMetadata": unary(self.ModelMetadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            "ModelConfig": unary(self.ModelConfig, pb.ModelConfigRequest, pb.ModelConfigResponse),
            # bytes in: parse_request checks the size and parses (see the module docstring)
            "ModelInfer": grpc.unary_unary_rpc_method_handler(
                self.ModelInfer, request_deserializer=None, response_serializer=pb.ModelInferResponse.SerializeToString
            ),
        }

    def register(self, server: grpc.aio.Server) -> None:
        handlers = self.handlers()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        server.add_registered_method_handlers(SERVICE, handlers)


def _response(
    request: pb.ModelInferRequest, model: TailModel, outputs: tuple[str, ...], result: BatchResult
) -> pb.ModelInferResponse:
    """Outputs as raw little-endian bytes, and the times the adaptive policy reads."""
    response = pb.ModelInferResponse(model_name=model.name, model_version=str(model.version), id=request.id)
    for name in outputs:
        spec = next(s for s in model.outputs if s.name == name)
        array = np.ascontiguousarray(result.outputs[name], dtype=spec.dtype)
        response.outputs.add(name=name, datatype=spec.datatype, shape=list(array.shape))
        response.raw_output_contents.append(array.tobytes())
    response.parameters[QUEUE_MS].double_param = result.queue_ms
    response.parameters[COMPUTE_MS].double_param = result.compute_ms
    response.parameters[BATCH_SIZE].int64_param = result.batch_size
    return response
