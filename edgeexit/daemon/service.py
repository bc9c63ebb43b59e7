"""The device's local API: KServe v2 ``inference.GRPCInferenceService`` for the *full* model.

Applications send the model input and get the answer; whether it exited early, was offloaded or
fell back is reported alongside. One model is served, named as the package's model
(``manifest.model_name``, version ``1``; an empty model name in a request also means it).

Request: one input, named as the manifest's input (``ModelMetadata`` says which), FP32
``[N, ...]`` of model-ready values (preprocessed as the manifest says), as
``raw_input_contents`` (little-endian, row-major). ``1 <= N <= max_batch`` (device.toml).
The optional string parameter ``package_id`` is checked against the loaded package
(FAILED_PRECONDITION on a mismatch). Anything else malformed is INVALID_ARGUMENT with a reason.

Response outputs (all, or those the request names in ``outputs``), one row per sample:

- ``probabilities`` FP32 ``[N, C]`` (``C = 0`` for a model without a classifier);
- ``prediction`` INT64 ``[N]`` (class index, -1 without a classifier);
- ``exit`` INT64 ``[N]`` (the exit that answered; the last exit for a tail's answer);
- ``offloaded`` BOOL ``[N]`` (a tail server answered), ``fallback`` BOOL ``[N]`` (an offload
  failed and this device finished it);
- ``latency_ms`` FP64 ``[N]`` (the engine's latency of that sample).

Response parameters: ``batch_size`` (int64) always, ``latency_ms`` (double: the whole request,
queueing for the worker included) always; and for ``N == 1`` the sample's ``prediction``,
``exit`` (int64), ``offloaded``, ``fallback`` (bool) too, so a batch-1 client needs no tensor
decoding. For ``N > 1`` the per-sample values are in the output tensors only.

Validation here is the daemon's own (same message style as ``edgeexit.server.validation``):
importing ``edgeexit.server`` pulls grpc-health and prometheus-client, which ``[device]`` lacks.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from edgeexit import __version__
from edgeexit.runtime.engine import Result
from edgeexit.transport.generated import grpc_service_pb2 as pb

log = logging.getLogger("edgeexit.daemon")

SERVICE = "inference.GRPCInferenceService"
SERVER_NAME = "edgeexit-device"
MODEL_VERSION = "1"
OUTPUTS = {
    "probabilities": "FP32",
    "prediction": "INT64",
    "exit": "INT64",
    "offloaded": "BOOL",
    "fallback": "BOOL",
    "latency_ms": "FP64",
}


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


class DeviceService:
    """The v2 calls over whatever ``current()`` returns (the live Runtime; SIGHUP swaps it).

    ``on_request(code_name, samples, seconds, results)`` is called once per ModelInfer."""

    def __init__(
        self,
        current: Callable[[], object],
        *,
        max_message_bytes: int,
        on_request: Callable[[str, int, float, list[Result]], None] | None = None,
    ) -> None:
        self.current = current
        self.max_message_bytes = max_message_bytes
        self.on_request = on_request or (lambda code, n, s, r: None)
        self.ready = False
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no ModelInfer is running (with ``draining`` set, none starts after)."""
        await self._idle.wait()

    # -- the model as the wire sees it --------------------------------------------------------------------------

    def _model(self, name: str, version: str) -> object:
        runtime = self.current()
        manifest = runtime.manifest  # type: ignore[attr-defined]
        if name not in ("", manifest.model_name):
            raise RequestError(
                grpc.StatusCode.NOT_FOUND,
                f"unknown model {name!r}; this device serves model {manifest.model_name!r}",
            )
        if version not in ("", MODEL_VERSION):
            raise RequestError(
                grpc.StatusCode.NOT_FOUND,
                f"model {manifest.model_name!r} has no version {version!r}; expected {MODEL_VERSION!r} or none",
            )
        return runtime

    @staticmethod
    def _input_dims(runtime: object) -> tuple[int | None, ...]:
        return tuple(runtime.manifest.input.shape[1:])  # type: ignore[attr-defined]

    # -- calls -----------------------------------------------------------------------------------------------------

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
        try:
            self._model(request.name, request.version)
        except RequestError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=["parameters"])

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        try:
            runtime = self._model(request.name, request.version)
        except RequestError as err:
            await context.abort(err.code, err.message)
        manifest = runtime.manifest  # type: ignore[attr-defined]
        response = pb.ModelMetadataResponse(name=manifest.model_name, versions=[MODEL_VERSION], platform="edgeexit")
        dims = [-1 if d is None else int(d) for d in self._input_dims(runtime)]
        response.inputs.add(name=manifest.input.name, datatype="FP32", shape=[-1, *dims])
        for name, datatype in OUTPUTS.items():
            shape = [-1, manifest.num_classes] if name == "probabilities" else [-1]
            response.outputs.add(name=name, datatype=datatype, shape=shape)
        return response

    async def ModelInfer(self, data: bytes, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        started = time.perf_counter()
        if self.draining:
            self.on_request(grpc.StatusCode.UNAVAILABLE.name, 0, 0.0, [])
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "the device daemon is draining (SIGTERM); retry once it is back"
            )
        self.in_flight += 1
        self._idle.clear()
        try:
            return await self._infer(data, context, started)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def _infer(self, data: bytes, context: grpc.aio.ServicerContext, started: float) -> pb.ModelInferResponse:
        samples = 0
        try:
            request = self._parse(data)
            runtime = self._model(request.model_name, request.model_version)
            xs, outputs = self._decode(request, runtime)
            samples = xs.shape[0]
            results = await runtime.infer(xs)  # type: ignore[attr-defined]
            response = _response(request, runtime, outputs, results, (time.perf_counter() - started) * 1e3)
        except RequestError as err:
            self.on_request(err.code.name, samples, time.perf_counter() - started, [])
            await context.abort(err.code, err.message)
        except asyncio.CancelledError:
            self.on_request(grpc.StatusCode.CANCELLED.name, samples, time.perf_counter() - started, [])
            raise
        except Exception as err:  # a bug or an input the engine refused: say so, log it, keep serving
            from edgeexit.errors import InputError

            if isinstance(err, InputError):
                self.on_request(grpc.StatusCode.INVALID_ARGUMENT.name, samples, time.perf_counter() - started, [])
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
            log.exception("ModelInfer failed")
            self.on_request(grpc.StatusCode.INTERNAL.name, samples, time.perf_counter() - started, [])
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}: {err}")
        self.on_request(grpc.StatusCode.OK.name, samples, time.perf_counter() - started, results)
        return response

    # -- validation --------------------------------------------------------------------------------------------

    def _parse(self, data: bytes) -> pb.ModelInferRequest:
        if len(data) > self.max_message_bytes:
            raise _invalid(
                f"the request is {len(data)} bytes; this device accepts at most {self.max_message_bytes} bytes "
                "per message; send fewer samples per request"
            )
        try:
            return pb.ModelInferRequest.FromString(data)
        except DecodeError as err:
            raise _invalid(
                f"the request bytes do not parse as inference.ModelInferRequest ({err}); expected a serialized "
                "KServe v2 ModelInferRequest"
            ) from None

    def _decode(self, request: pb.ModelInferRequest, runtime: object) -> tuple[np.ndarray, tuple[str, ...]]:
        manifest = runtime.manifest  # type: ignore[attr-defined]
        max_batch = runtime.config.max_batch  # type: ignore[attr-defined]
        dims = self._input_dims(runtime)
        name = manifest.input.name
        expected = (
            f"Model {manifest.model_name!r} expects one input {name} FP32 "
            f"[{', '.join(['N', *('?' if d is None else str(d) for d in dims)])}] with 1 <= N <= {max_batch}, "
            "as raw_input_contents (little-endian, row-major)"
        )
        if "package_id" in request.parameters:
            given = request.parameters["package_id"].string_param
            if given != manifest.package_id:
                raise RequestError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"the request names package_id {given!r} but this device runs package_id {manifest.package_id!r}",
                )
        unknown = [o.name for o in request.outputs if o.name not in OUTPUTS]
        if unknown:
            raise _invalid(
                f"unknown requested output {', '.join(map(repr, unknown))}; expected any of "
                f"{', '.join(map(repr, OUTPUTS))}"
            )
        outputs = tuple(dict.fromkeys(o.name for o in request.outputs)) or tuple(OUTPUTS)
        if len(request.inputs) != 1:
            raise _invalid(f"the request has {len(request.inputs)} inputs. {expected}")
        tensor = request.inputs[0]
        if tensor.name != name:
            raise _invalid(f"unexpected input {tensor.name!r}. {expected}")
        if tensor.HasField("contents"):
            raise _invalid(f"input {name!r} carries typed contents; expected its bytes in raw_input_contents")
        if tensor.datatype != "FP32":
            raise _invalid(f"input {name!r} has datatype {tensor.datatype!r}. {expected}")
        shape = tuple(int(d) for d in tensor.shape)
        if len(shape) != len(dims) + 1 or any(d is not None and d != s for d, s in zip(dims, shape[1:], strict=False)):
            raise _invalid(f"input {name!r} has shape {list(shape)}. {expected}")
        if not 1 <= shape[0] <= max_batch or any(s < 1 for s in shape[1:]):
            raise _invalid(f"input {name!r} has shape {list(shape)}; expected 1 <= N <= {max_batch}. {expected}")
        if len(request.raw_input_contents) != 1:
            raise _invalid(
                f"the request has {len(request.raw_input_contents)} raw_input_contents; expected 1. {expected}"
            )
        raw = request.raw_input_contents[0]
        want = math.prod(shape) * 4
        if len(raw) != want:
            raise _invalid(
                f"raw_input_contents[0] ({name!r}) holds {len(raw)} bytes; expected {want} = "
                f"{math.prod(shape)} FP32 elements of shape {list(shape)}"
            )
        xs = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32, copy=True)
        if not np.isfinite(xs).all():
            raise _invalid(f"input {name!r} holds NaN or infinite values; expected finite model-ready values")
        return xs, outputs


def _response(
    request: pb.ModelInferRequest, runtime: object, outputs: tuple[str, ...], results: list[Result], latency_ms: float
) -> pb.ModelInferResponse:
    manifest = runtime.manifest  # type: ignore[attr-defined]
    classes = manifest.num_classes
    columns: dict[str, np.ndarray] = {
        "probabilities": np.stack(
            [r.probabilities if r.probabilities is not None else np.zeros(classes) for r in results]
        ).astype("<f4")
        if classes
        else np.zeros((len(results), 0), "<f4"),
        "prediction": np.array([-1 if r.prediction is None else r.prediction for r in results], "<i8"),
        "exit": np.array([r.exit for r in results], "<i8"),
        "offloaded": np.array([r.offload is not None and r.offload.offloaded for r in results], np.bool_),
        "fallback": np.array([r.offload is not None and r.offload.fallback for r in results], np.bool_),
        "latency_ms": np.array([r.latency_ms for r in results], "<f8"),
    }
    response = pb.ModelInferResponse(model_name=manifest.model_name, model_version=MODEL_VERSION, id=request.id)
    for name in outputs:
        array = np.ascontiguousarray(columns[name])
        response.outputs.add(name=name, datatype=OUTPUTS[name], shape=list(array.shape))
        response.raw_output_contents.append(array.tobytes())
    params = response.parameters
    params["batch_size"].int64_param = len(results)
    params["latency_ms"].double_param = latency_ms
    if len(results) == 1:
        params["prediction"].int64_param = int(columns["prediction"][0])
        params["exit"].int64_param = int(columns["exit"][0])
        params["offloaded"].bool_param = bool(columns["offloaded"][0])
        params["fallback"].bool_param = bool(columns["fallback"][0])
    return response


def handlers(service: DeviceService) -> dict[str, grpc.RpcMethodHandler]:
    def unary(behaviour: object, request: type, response: type) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            behaviour, request_deserializer=request.FromString, response_serializer=response.SerializeToString
        )

    return {
        "ServerLive": unary(service.ServerLive, pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ServerReady": unary(service.ServerReady, pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ModelReady": unary(service.ModelReady, pb.ModelReadyRequest, pb.ModelReadyResponse),
        "ServerMetadata": unary(service.ServerMetadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
        "ModelMetadata": unary(service.ModelMetadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
        "ModelInfer": grpc.unary_unary_rpc_method_handler(
            service.ModelInfer, request_deserializer=None, response_serializer=pb.ModelInferResponse.SerializeToString
        ),
    }


def register(service: DeviceService, server: grpc.aio.Server) -> None:
    table = handlers(service)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, table),))
    server.add_registered_method_handlers(SERVICE, table)
