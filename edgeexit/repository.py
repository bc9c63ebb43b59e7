"""Triton-layout model repositories: the ``tails/`` of a package, and any repository a user points
``edgeexit serve`` at.

    tails/
      <model>__from_<k>/config.pbtxt        Triton's model configuration, protobuf text format
      <model>__from_<k>/1/model.onnx        version 1 of the tail graph
      <model>__from_input/...               the whole model, from the (encoded) model input

The export writes ``config.pbtxt`` with ``tail_config``; the server reads it with ``read_config``.
Both go through the checked-in ``model_config.proto`` subset (Triton's field names and numbers),
so Triton reads what we write and we read what Triton users write. Fields outside the subset are
skipped when written as ``field { ... }`` or ``field: value``; protobuf's text parser cannot skip an
unknown field in list form (``model_warmup [ ... ]``), and that file is refused with a message
saying so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from edgeexit.codecs import LOGITS, create_codec
from edgeexit.errors import PackageError
from edgeexit.fileio import atomic_write_text
from edgeexit.transport.generated import model_config_pb2 as pb

CONFIG_FILE = "config.pbtxt"
PLATFORM = "onnxruntime_onnx"
DEFAULT_MAX_BATCH = 64
DEFAULT_QUEUE_DELAY_US = 0  # Triton's default: batch what queued while the last batch ran, never wait

# config.pbtxt parameters edgeexit writes and reads (Triton passes them through untouched).
PARAM_PACKAGE_ID = "package_id"
PARAM_CODEC = "codec"
PARAM_BOUNDARY = "boundary"
#: The boundary of the tail that takes the model input itself ("offload at the input").
INPUT_BOUNDARY = -1


def tail_model_name(model: str, boundary: int, codec: str) -> str:
    """``<model>__from_<k>`` for fp32, ``<model>__from_<k>__<codec>`` for the other codecs; boundary
    ``INPUT_BOUNDARY`` (-1, the model input: the whole model runs on the server) is spelled ``input``."""
    base = f"{model}__from_{'input' if boundary == INPUT_BOUNDARY else boundary}"
    return base if codec == "fp32" else f"{base}__{codec}"


def tail_config(
    *,
    name: str,
    codec: str,
    boundary: int,
    hidden_dims: tuple[int, ...],
    num_classes: int,
    package_id: str,
    max_batch_size: int = DEFAULT_MAX_BATCH,
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    more_dims: tuple[tuple[int, ...], ...] = (),
) -> pb.ModelConfig:
    """The configuration of one tail model: its codec's inputs, the logits output, batching.

    ``more_dims``: the per-sample shapes of the boundary's further tensors (``hidden_1``, ...)."""
    config = pb.ModelConfig(
        name=name,
        platform=PLATFORM,
        backend="onnxruntime",
        max_batch_size=max_batch_size,
        default_model_filename="model.onnx",
    )
    for wire in create_codec(codec).boundary_wire_inputs((hidden_dims, *more_dims)):
        config.input.add(name=wire.name, data_type=pb.DataType.Value(f"TYPE_{wire.datatype}"), dims=list(wire.dims))
    config.output.add(name=LOGITS, data_type=pb.TYPE_FP32, dims=[num_classes])
    config.dynamic_batching.SetInParent()  # present even when every field is 0: batching is on
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    config.instance_group.add(kind=pb.ModelInstanceGroup.KIND_CPU, count=1)
    config.parameters[PARAM_PACKAGE_ID].string_value = package_id
    config.parameters[PARAM_CODEC].string_value = codec
    config.parameters[PARAM_BOUNDARY].string_value = str(boundary)
    return config


def write_config(directory: Path, config: pb.ModelConfig) -> Path:
    path = Path(directory) / CONFIG_FILE
    atomic_write_text(path, text_format.MessageToString(config))
    return path


def read_config(path: Path) -> pb.ModelConfig:
    """Parse a config.pbtxt; a malformed file is a PackageError naming the file and the problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PackageError(f"cannot read {path}: {exc.strerror or exc}; expected a Triton config.pbtxt") from exc
    config = pb.ModelConfig()
    try:
        text_format.Parse(text, config, allow_unknown_field=True)
    except text_format.ParseError as exc:
        hint = ""
        if "[" in str(exc):
            hint = (
                "; edgeexit reads the fields in protos/model_config.proto and skips others only when they are "
                "written as 'field { ... }': rewrite the list form or remove that field"
            )
        raise PackageError(f"{path} is not a valid Triton model configuration: {exc}{hint}") from exc
    return config


@dataclass(frozen=True)
class RepositoryModel:
    """One model directory: its name, configuration, and version directories by number."""

    name: str
    directory: Path
    config: pb.ModelConfig
    versions: dict[int, Path]


def scan_repository(root: Path) -> list[RepositoryModel]:
    """Every model directory under ``root`` that holds a config.pbtxt and a numbered version."""
    root = Path(root)
    if not root.is_dir():
        raise PackageError(f"{root} is not a directory; expected a Triton model repository")
    models = []
    for directory in sorted(p for p in root.iterdir() if (p / CONFIG_FILE).is_file()):
        config = read_config(directory / CONFIG_FILE)
        if config.name and config.name != directory.name:
            raise PackageError(
                f"{directory / CONFIG_FILE} names the model {config.name!r}; Triton requires the directory "
                f"name {directory.name!r}"
            )
        filename = config.default_model_filename or "model.onnx"
        versions = {
            int(v.name): v / filename for v in directory.iterdir() if v.name.isdigit() and (v / filename).is_file()
        }
        if not versions:
            raise PackageError(
                f"{directory} has no version directory with {filename} (expected {directory}/1/{filename})"
            )
        models.append(RepositoryModel(directory.name, directory, config, versions))
    return models
