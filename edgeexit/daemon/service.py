"""The device's local API: KServe v2 ``inference.GRPCInferenceService`` for the *full* model.

(A decoder package is served text in, text out: ``edgeexit.daemon.generation`` says how.)

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

The calls every edgeexit server answers alike (health, ServerMetadata, the handler table) and the
request parsing are ``edgeexit.kserve``'s, which needs grpc and protobuf only (``[device]`` has no
grpc-health); what is here is the daemon's own contract: one model, its one
input checked against the manifest, and the answer as the columns above.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
import numpy as np

from edgeexit.daemon import generation
from edgeexit.daemon.generation import GenerationRuntime
from edgeexit.errors import InputError, RequestError, UsageError
from edgeexit.kserve.request import MessageLimit, parse_request, requested_outputs
from edgeexit.kserve.response import add_output, set_parameter
from edgeexit.kserve.service import SERVICE, KServeService
from edgeexit.kserve.status import abort, failed_precondition, invalid, not_found
from edgeexit.runtime.engine import Result
from edgeexit.transport.generated import grpc_service_pb2 as pb

if TYPE_CHECKING:  # the service only calls what ``current()`` hands it; app.py builds the Runtimes
    from edgeexit.daemon.runner import Runtime as ClassifierRuntime

    Runtime = ClassifierRuntime | GenerationRuntime

__all__ = ["MODEL_VERSION", "OUTPUTS", "SERVICE", "DeviceService"]

log = logging.getLogger("edgeexit.daemon")

MODEL_VERSION = "1"
OUTPUTS = {
    "probabilities": "FP32",
    "prediction": "INT64",
    "exit": "INT64",
    "offloaded": "BOOL",
    "fallback": "BOOL",
    "latency_ms": "FP64",
}
#: The request parameter a client may send to check it talks to the package it was built for.
PACKAGE_ID = "package_id"


class DeviceService(KServeService["Runtime"]):
    """The v2 calls over whatever ``current()`` returns (the live Runtime; SIGHUP swaps it).

    ``on_request(code_name, samples, seconds, results)`` is called once per ModelInfer."""

    SERVER_NAME = "edgeexit-device"
    DRAIN_NAME = "the device daemon"
    EXTENSIONS = ("parameters",)

    def __init__(
        self,
        current: Callable[[], Runtime],
        *,
        max_message_bytes: int,
        on_request: Callable[[str, int, float, list[Result]], None] | None = None,
    ) -> None:
        super().__init__()
        self.current = current
        self.limit = MessageLimit(max_message_bytes, "this device")
        self.on_request = on_request or (lambda code, n, s, r: None)

    # -- the model as the wire sees it --------------------------------------------------------------------------

    def find_model(self, name: str, version: str) -> Runtime:
        runtime = self.current()
        manifest = runtime.manifest
        if name not in ("", manifest.model_name):
            raise not_found(f"unknown model {name!r}; this device serves model {manifest.model_name!r}")
        if version not in ("", MODEL_VERSION):
            raise not_found(
                f"model {manifest.model_name!r} has no version {version!r}; expected {MODEL_VERSION!r} or none"
            )
        return runtime

    # -- calls -----------------------------------------------------------------------------------------------------

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        runtime = await self.model_or_abort(request.name, request.version, context)
        if isinstance(runtime, GenerationRuntime):
            return generation.metadata(runtime, MODEL_VERSION)
        manifest = runtime.manifest
        response = pb.ModelMetadataResponse(name=manifest.model_name, versions=[MODEL_VERSION], platform="edgeexit")
        dims = [-1 if d is None else int(d) for d in _input_dims(runtime)]
        response.inputs.add(name=manifest.input.name, datatype="FP32", shape=[-1, *dims])
        for name, datatype in OUTPUTS.items():
            shape = [-1, manifest.num_classes] if name == "probabilities" else [-1]
            response.outputs.add(name=name, datatype=datatype, shape=shape)
        return response

    def refused(self, error: RequestError) -> None:
        self.on_request(error.code.name, 0, 0.0, [])

    async def infer(self, data: bytes, context: grpc.aio.ServicerContext, started: float) -> pb.ModelInferResponse:
        samples = 0
        try:
            request = parse_request(data, self.limit)
            runtime = self.find_model(request.model_name, request.model_version)
            if isinstance(runtime, GenerationRuntime):  # a decoder package: text in, text out
                prompt, options = generation.decode_request(request, runtime)
                samples = 1
                result = await runtime.generate(prompt, options)
                latency = (time.perf_counter() - started) * 1e3
                self.on_request(grpc.StatusCode.OK.name, 1, latency / 1e3, [])
                return generation.response(request, runtime, result, latency, MODEL_VERSION)
            xs, outputs = _decode(request, runtime)
            samples = xs.shape[0]
            results = await runtime.infer(xs)
            response = _response(request, runtime, outputs, results, (time.perf_counter() - started) * 1e3)
        except (InputError, UsageError) as err:  # an input or option the engine refused: the client's to fix
            self.on_request(grpc.StatusCode.INVALID_ARGUMENT.name, samples, time.perf_counter() - started, [])
            await abort(context, invalid(str(err)))
        except RequestError as err:
            self.on_request(err.code.name, samples, time.perf_counter() - started, [])
            await abort(context, err)
        except asyncio.CancelledError:
            self.on_request(grpc.StatusCode.CANCELLED.name, samples, time.perf_counter() - started, [])
            raise
        except Exception as err:  # a bug: say so, log it, keep serving
            log.exception("ModelInfer failed")
            self.on_request(grpc.StatusCode.INTERNAL.name, samples, time.perf_counter() - started, [])
            await abort(context, RequestError(grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}: {err}"))
        self.on_request(grpc.StatusCode.OK.name, samples, time.perf_counter() - started, results)
        return response


def _input_dims(runtime: Runtime) -> tuple[int | None, ...]:
    return tuple(runtime.manifest.input.shape[1:])


def _decode(request: pb.ModelInferRequest, runtime: Runtime) -> tuple[np.ndarray, tuple[str, ...]]:
    """The request's one input as a finite float32 ``[N, ...]`` batch, and the outputs it asks for."""
    manifest = runtime.manifest
    max_batch = runtime.config.max_batch
    dims = _input_dims(runtime)
    name = manifest.input.name
    expected = (
        f"Model {manifest.model_name!r} expects one input {name} FP32 "
        f"[{', '.join(['N', *('?' if d is None else str(d) for d in dims)])}] with 1 <= N <= {max_batch}, "
        "as raw_input_contents (little-endian, row-major)"
    )
    if PACKAGE_ID in request.parameters:
        given = request.parameters[PACKAGE_ID].string_param
        if given != manifest.package_id:
            raise failed_precondition(
                f"the request names package_id {given!r} but this device runs package_id {manifest.package_id!r}"
            )
    outputs = requested_outputs(request, tuple(OUTPUTS), "expected any of")
    if len(request.inputs) != 1:
        raise invalid(f"the request has {len(request.inputs)} inputs. {expected}")
    tensor = request.inputs[0]
    if tensor.name != name:
        raise invalid(f"unexpected input {tensor.name!r}. {expected}")
    if tensor.HasField("contents"):
        raise invalid(f"input {name!r} carries typed contents; expected its bytes in raw_input_contents")
    if tensor.datatype != "FP32":
        raise invalid(f"input {name!r} has datatype {tensor.datatype!r}. {expected}")
    shape = tuple(int(d) for d in tensor.shape)
    if len(shape) != len(dims) + 1 or any(d is not None and d != s for d, s in zip(dims, shape[1:], strict=False)):
        raise invalid(f"input {name!r} has shape {list(shape)}. {expected}")
    if not 1 <= shape[0] <= max_batch or any(s < 1 for s in shape[1:]):
        raise invalid(f"input {name!r} has shape {list(shape)}; expected 1 <= N <= {max_batch}. {expected}")
    if len(request.raw_input_contents) != 1:
        raise invalid(f"the request has {len(request.raw_input_contents)} raw_input_contents; expected 1. {expected}")
    raw = request.raw_input_contents[0]
    want = math.prod(shape) * 4
    if len(raw) != want:
        raise invalid(
            f"raw_input_contents[0] ({name!r}) holds {len(raw)} bytes; expected {want} = "
            f"{math.prod(shape)} FP32 elements of shape {list(shape)}"
        )
    xs = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32, copy=True)
    if not np.isfinite(xs).all():
        raise invalid(f"input {name!r} holds NaN or infinite values; expected finite model-ready values")
    return xs, outputs


def _response(
    request: pb.ModelInferRequest, runtime: Runtime, outputs: tuple[str, ...], results: list[Result], latency_ms: float
) -> pb.ModelInferResponse:
    """The outputs asked for, one row per sample; for one sample its values as parameters too."""
    manifest = runtime.manifest
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
        add_output(response, name, OUTPUTS[name], columns[name])
    set_parameter(response.parameters, "batch_size", len(results))
    set_parameter(response.parameters, "latency_ms", float(latency_ms))
    if len(results) == 1:
        set_parameter(response.parameters, "prediction", int(columns["prediction"][0]))
        set_parameter(response.parameters, "exit", int(columns["exit"][0]))
        set_parameter(response.parameters, "offloaded", bool(columns["offloaded"][0]))
        set_parameter(response.parameters, "fallback", bool(columns["fallback"][0]))
    return response
