"""The tail request and reply on the wire, exactly as docs/offload.md says; protobuf and numpy only.

Kept apart from the channel code so the contract can be tested byte for byte without a server,
and so a reply that does not decode is one clear ``OffloadError`` (a failure like any other: the
device falls back) rather than a numpy error deep inside the runtime.

Request: ``model_name`` the tail, ``inputs[0]`` = ``hidden`` (codec datatype, shape ``[N, *dims]``)
with its bytes in ``raw_input_contents[0]`` (little-endian, row-major); parameters ``package_id``,
``codec`` and, for int8, ``scale`` (double) and ``zero_point`` (int64). A boundary of several
tensors adds ``hidden_1``, ``hidden_2``, ... (and ``scale_j`` / ``zero_point_j``), in its order. Reply: ``logits`` FP32
``[N, classes]`` in ``raw_output_contents``; parameters ``queue_ms``, ``compute_ms`` and ``server_ms``
(double; ``server_ms`` is the request's whole time inside the server, when it says).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgeexit.codecs import (
    DATATYPES,
    HIDDEN,
    LOGITS,
    SCALE,
    ZERO_POINT,
    Codec,
    Encoded,
    create_codec,
    datatype_of,
    wire_name,
)
from edgeexit.errors import InputError, OffloadError, UsageError
from edgeexit.transport.generated import grpc_service_pb2 as pb

PARAM_PACKAGE_ID = "package_id"
PARAM_CODEC = "codec"
PARAM_SCALE = "scale"
PARAM_ZERO_POINT = "zero_point"
PARAM_QUEUE_MS = "queue_ms"
PARAM_COMPUTE_MS = "compute_ms"
PARAM_SERVER_MS = "server_ms"
#: The time the server expects a request of this model arriving as the reply left to take in it, its
#: wait for a batch and the batch (edgeexit serve only; Triton does not say): what a device charges
#: its next offload.
PARAM_EXPECTED_SERVER_MS = "expected_server_ms"
#: The same number as trailing metadata (a decimal string, ms), where a call has no parameters: a
#: ServerLive probe (the largest over the server's models) and a shed request's RESOURCE_EXHAUSTED.
EXPECTED_SERVER_KEY = "edgeexit-expected-server-ms"


@dataclass(frozen=True, eq=False)
class TailAnswer:
    """A decoded tail reply: the final logits ``(N, classes)`` float32 and the server's own timings
    (None where it did not report them): ``server_ms`` is the whole time the request spent in the
    server (parsing, queue, compute, reply), of which ``queue_ms`` and ``compute_ms`` are parts;
    ``expected_server_ms`` the time the server expected the next request to take in it as it replied."""

    logits: np.ndarray
    queue_ms: float | None
    compute_ms: float | None
    server_ms: float | None = None
    expected_server_ms: float | None = None


SIDE_INPUTS = ("parameters", "tensors")


def build_request(
    model: str, encoded: Encoded, *, package_id: str, version: str = "", side_inputs: str = "parameters"
) -> pb.ModelInferRequest:
    """One ModelInfer request carrying a whole encoded batch.

    ``side_inputs``: how an affine codec's scale and zero point travel. ``"parameters"`` (edgeexit's
    server) puts them in request parameters; ``"tensors"`` sends them as the ``[N, 1]`` input
    tensors the tail's config.pbtxt lists, which is what Triton and KServe need (they do not map
    parameters to inputs). edgeexit's server takes either."""
    if side_inputs not in SIDE_INPUTS:
        raise UsageError(f"side_inputs is {side_inputs!r}; expected one of {', '.join(SIDE_INPUTS)}")
    codec = create_codec(encoded.codec)
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request.parameters[PARAM_PACKAGE_ID].string_param = package_id
    request.parameters[PARAM_CODEC].string_param = encoded.codec
    for j, part in enumerate(encoded.parts):  # a boundary of several tensors: hidden, hidden_1, ...
        _add_part(request, codec, j, part, side_inputs)
    return request


def _add_part(request: pb.ModelInferRequest, codec: Codec, j: int, part: Encoded, side_inputs: str) -> None:
    data = np.asarray(part.data)
    wire_dtype = DATATYPES[codec.datatype]
    if data.dtype != wire_dtype:
        if data.dtype.kind != wire_dtype.kind or data.dtype.itemsize != wire_dtype.itemsize:
            raise OffloadError(
                f"the {part.codec} payload holds {data.dtype} values; expected {codec.datatype} ({wire_dtype}): "
                "encode the hidden tensor with the codec's encode()"
            )
        data = data.astype(wire_dtype)  # the same type in the other byte order: little-endian on the wire
    if data.ndim < 1 or data.shape[0] < 1:
        raise OffloadError(f"the payload has shape {tuple(data.shape)}; expected [N, *dims] with N >= 1")
    tensor = request.inputs.add(name=wire_name(HIDDEN, j), datatype=codec.datatype)
    tensor.shape.extend(int(d) for d in data.shape)
    request.raw_input_contents.append(np.ascontiguousarray(data).tobytes())
    if part.scale is None and part.zero_point is None:
        return
    if part.scale is None or part.zero_point is None:
        raise OffloadError(f"the {part.codec} payload has a scale or a zero point but not both; expected both")
    if side_inputs == "tensors":
        n = data.shape[0]
        for name, array in ((SCALE, np.full((n, 1), part.scale, np.float32)),
                            (ZERO_POINT, np.full((n, 1), part.zero_point, np.uint8))):  # fmt: skip
            side = request.inputs.add(name=wire_name(name, j), datatype=datatype_of(array))
            side.shape.extend(int(d) for d in array.shape)
            request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    else:
        request.parameters[wire_name(PARAM_SCALE, j)].double_param = float(part.scale)
        request.parameters[wire_name(PARAM_ZERO_POINT, j)].int64_param = int(part.zero_point)


def read_request(request: pb.ModelInferRequest) -> tuple[str, Encoded]:
    """The inverse of ``build_request`` for edgeexit's own requests: (package_id, payload).

    For tests and stand-in servers; a real server validates far more (docs/offload.md)."""
    if not request.inputs or len(request.raw_input_contents) != len(request.inputs):
        raise InputError("expected input tensors hidden (, hidden_1, ...) with their bytes in raw_input_contents")
    params = request.parameters
    codec = params[PARAM_CODEC].string_param if PARAM_CODEC in params else ""
    parts: list[Encoded] = []
    for j, (tensor, raw) in enumerate(zip(request.inputs, request.raw_input_contents, strict=True)):
        if tensor.name != wire_name(HIDDEN, j):
            raise InputError(f"input {j} is {tensor.name!r}; expected {wire_name(HIDDEN, j)!r}")
        data = np.frombuffer(raw, dtype=DATATYPES[tensor.datatype]).reshape(tuple(tensor.shape))
        scale_key, zero_key = wire_name(PARAM_SCALE, j), wire_name(PARAM_ZERO_POINT, j)
        scale = params[scale_key].double_param if scale_key in params else None
        zero_point = params[zero_key].int64_param if zero_key in params else None
        parts.append(Encoded(codec, data, scale=scale, zero_point=zero_point))
    package_id = params[PARAM_PACKAGE_ID].string_param if PARAM_PACKAGE_ID in params else ""
    return package_id, dataclasses.replace(parts[0], more=tuple(parts[1:]))


def parse_reply(reply: pb.ModelInferResponse, *, samples: int, classes: int | None = None) -> TailAnswer:
    """The logits of a tail reply, checked against what was asked: a reply that does not match
    (no logits, another datatype or shape, a byte count that disagrees, non-finite values) is an
    OffloadError saying what was expected."""
    want = f"FP32 [{samples}, {classes if classes else 'classes'}]"
    position = next((i for i, out in enumerate(reply.outputs) if out.name == LOGITS), None)
    if position is None and len(reply.outputs) == 1:
        position = 0  # a single unnamed-as-expected output: Triton echoes the config's name, others may not
    if position is None:
        names = [out.name for out in reply.outputs] or "none"
        raise OffloadError(f"the reply has outputs {names}; expected {LOGITS!r} {want}")
    tensor = reply.outputs[position]
    shape = tuple(int(d) for d in tensor.shape)
    if tensor.datatype != "FP32":
        raise OffloadError(f"the reply's {tensor.name!r} is {tensor.datatype or '(no datatype)'}; expected {want}")
    if len(shape) != 2 or shape[0] != samples or (classes and shape[1] != classes):
        raise OffloadError(f"the reply's {tensor.name!r} has shape {list(shape)}; expected {want}")
    expected_bytes = shape[0] * shape[1] * 4
    if position < len(reply.raw_output_contents):
        raw = reply.raw_output_contents[position]
        if len(raw) != expected_bytes:
            raise OffloadError(
                f"the reply's {tensor.name!r} carries {len(raw)} bytes; expected {expected_bytes} for {want}"
            )
        logits = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
    elif len(tensor.contents.fp32_contents) == shape[0] * shape[1]:  # typed contents: accepted, never sent
        logits = np.asarray(tensor.contents.fp32_contents, dtype=np.float32).reshape(shape)
    else:
        raise OffloadError(f"the reply's {tensor.name!r} has no data; expected {want} in raw_output_contents")
    if not np.isfinite(logits).all():
        raise OffloadError(f"the reply's {tensor.name!r} holds NaN or infinite values; expected finite logits")
    return TailAnswer(
        logits,
        _double(reply, PARAM_QUEUE_MS),
        _double(reply, PARAM_COMPUTE_MS),
        _double(reply, PARAM_SERVER_MS),
        _double(reply, PARAM_EXPECTED_SERVER_MS),
    )


def trailing_expected_server_ms(trailing: Sequence[tuple[str, str | bytes]] | None) -> float | None:
    """``EXPECTED_SERVER_KEY`` from a call's trailing metadata: ms, or None when absent or not a finite
    number >= 0 (another server's metadata is not trusted to be ours)."""
    for key, value in trailing or ():
        if key == EXPECTED_SERVER_KEY:
            try:
                found = float(value)
            except (TypeError, ValueError):
                return None
            return found if math.isfinite(found) and found >= 0 else None
    return None


def _double(reply: pb.ModelInferResponse, name: str) -> float | None:
    if name not in reply.parameters:
        return None
    value = reply.parameters[name]
    kind = value.WhichOneof("parameter_choice")
    if kind in ("double_param", "int64_param", "uint64_param"):
        return float(getattr(value, kind))
    return None
