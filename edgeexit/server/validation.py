"""A ModelInfer request → the numpy arrays a tail's session takes, or a ``RequestError``.

Every check names what the model expected, so a client author can fix the request from the
message alone (docs/offload.md, "Status codes"). Nothing here touches the session: a request
that passes is guaranteed to concatenate with others into one batch and run. Parsing the bytes,
string parameters and the requested outputs are ``edgeexit.kserve.request``'s; what is a tail
server's own is here: several inputs per the model's config.pbtxt, the ``package_id`` and codec
a hidden tensor must match, and the int8 scale / zero point sent as request parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgeexit.codecs import SCALE, ZERO_POINT, base_name
from edgeexit.kserve.request import requested_outputs, string_parameter
from edgeexit.kserve.status import failed_precondition, invalid
from edgeexit.repository import PARAM_CODEC, PARAM_PACKAGE_ID
from edgeexit.server.models import TailModel, TensorSpec
from edgeexit.transport.generated import grpc_service_pb2 as pb

#: Inputs a client may send as one request parameter for the whole request instead of a tensor
#: (the int8 codec's scale and zero point, and ``scale_j`` / ``zero_point_j`` of a boundary's
#: further tensors); the server expands them to ``[N, 1]``.
PARAMETER_INPUTS = (SCALE, ZERO_POINT)


def _parameter_input(name: str) -> bool:
    return base_name(name) in PARAMETER_INPUTS


@dataclass(frozen=True, eq=False)
class Decoded:
    """A validated request: one array per model input, all with the same batch size ``batch``."""

    feeds: dict[str, np.ndarray]
    batch: int
    outputs: tuple[str, ...]


def decode(request: pb.ModelInferRequest, model: TailModel) -> Decoded:
    """Check ``request`` against ``model`` (parameters, inputs, shapes, bytes) and build its arrays."""
    _check_identity(request, model)
    outputs = requested_outputs(request, [spec.name for spec in model.outputs], f"model {model.name!r} returns")
    if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
        raise invalid(
            f"the request has {len(request.inputs)} inputs but {len(request.raw_input_contents)} "
            f"raw_input_contents; expected one raw entry per input, in order. {_expected(model)}"
        )
    feeds: dict[str, np.ndarray] = {}
    batch: int | None = None
    for position, tensor in enumerate(request.inputs):
        spec = model.input(tensor.name)
        if spec is None:
            raise invalid(f"unexpected input {tensor.name!r}. {_expected(model)}")
        if tensor.name in feeds:
            raise invalid(f"input {tensor.name!r} appears twice; expected each input once. {_expected(model)}")
        array = _array(request, position, tensor, spec, model)
        if batch is not None and array.shape[0] != batch:
            raise invalid(
                f"input {tensor.name!r} has batch size {array.shape[0]} but an earlier input has {batch}; "
                "expected the same first dimension N for every input"
            )
        batch = array.shape[0]
        feeds[tensor.name] = array
    if batch is None:
        raise invalid(f"the request has no inputs. {_expected(model)}")
    _parameter_inputs(request, model, feeds, batch)
    missing = [spec.name for spec in model.inputs if spec.name not in feeds]
    if missing:
        noun = "input" if len(missing) == 1 else "inputs"
        raise invalid(f"missing {noun} {', '.join(map(repr, missing))}. {_expected(model)}")
    return Decoded(feeds, batch, outputs)


def _expected(model: TailModel) -> str:
    inputs = []
    for spec in model.inputs:
        text = spec.describe()
        if _parameter_input(spec.name) and spec.dims == (1,):
            text += f" (or request parameter {spec.name!r})"
        inputs.append(text)
    return (
        f"Model {model.name!r} version {model.version} expects inputs {'; '.join(inputs)}, "
        f"with 1 <= N <= {model.max_batch_size}, as raw_input_contents (little-endian, row-major)"
    )


def _check_identity(request: pb.ModelInferRequest, model: TailModel) -> None:
    """The package the tensor came from, then its codec: absent means not checked."""
    package_id = string_parameter(request, PARAM_PACKAGE_ID)
    if package_id is not None and model.package_id is not None and package_id != model.package_id:
        raise failed_precondition(
            f"the tensor comes from package_id {package_id!r} but model {model.name!r} belongs to package_id "
            f"{model.package_id!r}; a hidden tensor only fits the weights it came from: deploy the same "
            "package on the device and the server"
        )
    codec = string_parameter(request, PARAM_CODEC)
    if codec is not None and model.codec is not None and codec != model.codec:
        raise invalid(f"the request's codec is {codec!r} but model {model.name!r} takes codec {model.codec!r}")


def _array(
    request: pb.ModelInferRequest,
    position: int,
    tensor: pb.ModelInferRequest.InferInputTensor,
    spec: TensorSpec,
    model: TailModel,
) -> np.ndarray:
    name = tensor.name
    if tensor.HasField("contents"):
        raise invalid(
            f"input {name!r} carries typed contents; this server takes tensor data only in raw_input_contents "
            "(little-endian, row-major bytes, one entry per input)"
        )
    if tensor.datatype != spec.datatype:
        raise invalid(
            f"input {name!r} has datatype {tensor.datatype!r}; expected {spec.datatype!r} ({spec.describe()})"
        )
    shape = tuple(int(d) for d in tensor.shape)
    if len(shape) != len(spec.dims) + 1 or shape[1:] != spec.dims:
        raise invalid(f"input {name!r} has shape {list(shape)}; expected {spec.describe()}")
    if not 1 <= shape[0] <= model.max_batch_size:
        raise invalid(
            f"input {name!r} has batch size {shape[0]}; expected 1 <= N <= {model.max_batch_size} "
            f"(max_batch_size of model {model.name!r})"
        )
    if not request.raw_input_contents:
        raise invalid(f"input {name!r} has no data; expected its bytes in raw_input_contents[{position}]")
    raw = request.raw_input_contents[position]
    expected = shape[0] * spec.sample_bytes
    if len(raw) != expected:
        raise invalid(
            f"raw_input_contents[{position}] ({name!r}) holds {len(raw)} bytes; expected {expected} "
            f"= {shape[0]} x {math.prod(spec.dims)} elements x {spec.dtype.itemsize} bytes of {spec.datatype}"
        )
    return np.frombuffer(raw, dtype=spec.dtype).reshape(shape)


def _parameter_inputs(
    request: pb.ModelInferRequest, model: TailModel, feeds: dict[str, np.ndarray], batch: int
) -> None:
    """Expand request parameters ``scale`` / ``zero_point`` (``_j``) into ``[N, 1]`` inputs (one pair per
    request and boundary tensor)."""
    for key in request.parameters:
        if not _parameter_input(key):
            continue
        spec = model.input(key)
        if spec is None or spec.dims != (1,):
            codec = f" (codec {model.codec})" if model.codec else ""
            raise invalid(
                f"request parameter {key!r} has no input to go to: model {model.name!r}{codec} takes none. "
                f"{_expected(model)}"
            )
        if key in feeds:
            raise invalid(f"{key!r} is both a request parameter and an input tensor; expected one of the two")
        feeds[key] = np.full((batch, 1), _parameter_value(request.parameters[key], key, spec), dtype=spec.dtype)


def _parameter_value(parameter: pb.InferParameter, key: str, spec: TensorSpec) -> float | int:
    kind = parameter.WhichOneof("parameter_choice")
    if spec.dtype.kind == "f":
        if kind != "double_param" or not math.isfinite(parameter.double_param):
            raise invalid(f"request parameter {key!r} must be a finite double_param (it feeds {spec.describe()})")
        return parameter.double_param
    value = parameter.int64_param if kind == "int64_param" else parameter.uint64_param
    info = np.iinfo(spec.dtype)
    if kind not in ("int64_param", "uint64_param") or not info.min <= value <= info.max:
        raise invalid(
            f"request parameter {key!r} must be an int64_param in [{info.min}, {info.max}] (it feeds {spec.describe()})"
        )
    return value
