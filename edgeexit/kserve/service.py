"""``KServeService``: the v2 calls every edgeexit server answers alike, and its handler table.

Health (ServerLive, ServerReady, ModelReady) and ServerMetadata are the same for every model a
server could hold; ModelMetadata and inference are each server's own (a tail vs. the full
model), so a subclass supplies them (``infer``) and ``find_model``, and may add calls to
``handlers()``. ModelInfer itself is shared: it counts the call for the drain, and a draining
server refuses it here, before it is parsed.

Handlers are registered here rather than through the generated ``add_..._to_server`` because
ModelInfer takes its request as bytes (no deserializer): ``request.parse_request`` checks the
size against the server's limit and parses it (see there why). The other calls carry a model
name at most and use the generated messages as usual.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

import grpc

from edgeexit import __version__
from edgeexit.errors import RequestError
from edgeexit.kserve.drain import Drain
from edgeexit.kserve.status import abort
from edgeexit.transport.generated import grpc_service_pb2 as pb

__all__ = ["SERVICE", "KServeService", "unary"]

SERVICE = "inference.GRPCInferenceService"

Model = TypeVar("Model")


def unary(behaviour: Callable[..., Any], request: type, response: type) -> grpc.RpcMethodHandler:
    """A unary handler that (de)serializes the generated ``request`` / ``response`` messages."""
    return grpc.unary_unary_rpc_method_handler(
        behaviour, request_deserializer=request.FromString, response_serializer=response.SerializeToString
    )


class KServeService(ABC, Generic[Model]):
    """The shared v2 calls over the models ``find_model`` resolves.

    ``ready`` is False until the server listens and again once it drains; ``drain`` counts the
    calls (``edgeexit.kserve.drain``: ModelInfer enters and leaves it, the health calls mark their
    arrival); ``SERVER_NAME`` and ``EXTENSIONS`` are what ServerMetadata reports."""

    SERVER_NAME: ClassVar[str]
    #: The v2 protocol extensions the server implements beyond the core calls.
    EXTENSIONS: ClassVar[tuple[str, ...]]

    #: How a refusal names this server: "the tail server is draining (SIGTERM) ...".
    DRAIN_NAME: ClassVar[str] = "the server"

    def __init__(self) -> None:
        self.ready = False
        self.drain = Drain(self.DRAIN_NAME)

    @abstractmethod
    def find_model(self, name: str, version: str) -> Model:
        """The model a request names (``""`` as each server documents); NOT_FOUND ``RequestError`` if none."""

    @abstractmethod
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse: ...

    @abstractmethod
    async def infer(self, data: bytes, context: grpc.aio.ServicerContext, arrived: float) -> pb.ModelInferResponse:
        """One ModelInfer the drain let through. ``data`` is the serialized request: parse it with
        ``edgeexit.kserve.request.parse_request``; ``arrived``: ``time.perf_counter()`` when it came."""

    def refused(self, error: RequestError) -> None:
        """A ModelInfer refused while draining, before it was parsed (a subclass counts it)."""

    async def ModelInfer(self, data: bytes, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        arrived = time.perf_counter()
        try:
            self.drain.enter()
        except RequestError as err:
            self.refused(err)
            await abort(context, err)
        try:
            return await self.infer(data, context, arrived)
        finally:
            self.drain.leave()

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        self.drain.arrived()
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        self.drain.arrived()
        return pb.ServerReadyResponse(ready=self.ready)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        """Not ready (rather than an error) for a model this server does not have, as Triton answers."""
        self.drain.arrived()
        try:
            self.find_model(request.name, request.version)
        except RequestError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=self.SERVER_NAME, version=__version__, extensions=list(self.EXTENSIONS))

    async def model_or_abort(self, name: str, version: str, context: grpc.aio.ServicerContext) -> Model:
        """``find_model``, its NOT_FOUND ending the call (for the calls that answer about one model)."""
        try:
            return self.find_model(name, version)
        except RequestError as err:
            await abort(context, err)

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """The method table; a subclass adds its own calls to it."""
        return {
            "ServerLive": unary(self.ServerLive, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": unary(self.ServerReady, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": unary(self.ModelReady, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": unary(self.ServerMetadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
            "ModelMetadata": unary(self.ModelMetadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            # bytes in: parse_request checks the size and parses (see the module docstring)
            "ModelInfer": grpc.unary_unary_rpc_method_handler(
                self.ModelInfer, request_deserializer=None, response_serializer=pb.ModelInferResponse.SerializeToString
            ),
        }

    def register(self, server: grpc.aio.Server) -> None:
        table = self.handlers()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, table),))
        server.add_registered_method_handlers(SERVICE, table)
