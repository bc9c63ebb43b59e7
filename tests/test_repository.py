"""config.pbtxt: what the export writes parses back, Triton's own files parse, bad ones are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeexit.errors import PackageError
from edgeexit.repository import read_config, scan_repository, tail_config, tail_model_name, write_config
from edgeexit.transport.generated import model_config_pb2 as pb


def test_tail_names() -> None:
    assert tail_model_name("digits", 1, "fp32") == "digits__from_1"
    assert tail_model_name("digits", 0, "int8") == "digits__from_0__int8"


def test_a_written_config_reads_back(tmp_path: Path) -> None:
    config = tail_config(
        name="m__from_0__int8", codec="int8", boundary=0, hidden_dims=(8, 4, 4), num_classes=10, package_id="p1"
    )
    write_config(tmp_path, config)
    back = read_config(tmp_path / "config.pbtxt")
    assert back == config
    assert back.platform == "onnxruntime_onnx"
    assert back.max_batch_size > 0
    assert [(i.name, pb.DataType.Name(i.data_type), list(i.dims)) for i in back.input] == [
        ("hidden", "TYPE_UINT8", [8, 4, 4]),
        ("scale", "TYPE_FP32", [1]),
        ("zero_point", "TYPE_UINT8", [1]),
    ]
    assert back.HasField("dynamic_batching")
    assert {k: v.string_value for k, v in back.parameters.items()} == {
        "package_id": "p1",
        "codec": "int8",
        "boundary": "0",
    }


TRITON_STYLE = """
name: "resnet"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1000 ] } ]
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100 }
model_warmup { name: "w" batch_size: 1 }
optimization { execution_accelerators { cpu_execution_accelerator: [ { name: "openvino" } ] } }
"""


def test_tritons_own_files_parse_and_fields_beyond_the_subset_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "resnet" / "1").mkdir(parents=True)
    (tmp_path / "resnet" / "config.pbtxt").write_text(TRITON_STYLE)
    (tmp_path / "resnet" / "1" / "model.onnx").write_bytes(b"")
    [model] = scan_repository(tmp_path)
    assert model.name == "resnet"
    assert model.config.max_batch_size == 8
    assert list(model.config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert model.versions == {1: tmp_path / "resnet" / "1" / "model.onnx"}


def test_an_unknown_field_in_list_form_is_refused_with_the_way_out(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_text('name: "m"\nmodel_warmup [ { name: "w" } ]\n')
    with pytest.raises(PackageError, match=r"skips others only when they are written as 'field \{ ... \}'"):
        read_config(tmp_path / "config.pbtxt")


def test_errors_name_the_file_and_what_was_expected(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.pbtxt").write_text("max_batch_size: lots\n")
    with pytest.raises(PackageError, match=r"bad/config.pbtxt is not a valid Triton model configuration"):
        scan_repository(tmp_path)
    (tmp_path / "bad" / "config.pbtxt").write_text('name: "other"\n')
    with pytest.raises(PackageError, match="names the model 'other'; Triton requires the directory name 'bad'"):
        scan_repository(tmp_path)
    (tmp_path / "bad" / "config.pbtxt").write_text('name: "bad"\n')
    with pytest.raises(PackageError, match=r"no version directory with model.onnx"):
        scan_repository(tmp_path)
    with pytest.raises(PackageError, match="is not a directory; expected a Triton model repository"):
        scan_repository(tmp_path / "missing")
