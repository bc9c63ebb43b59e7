"""The checked-in stubs are what protos/ generates, and protos/ is the published v2 protocol on
the wire: every field we declare has the number and type of tritonclient's own copy (a client
written elsewhere, from Triton's grpc_service.proto and model_config.proto)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgeexit.transport.generated import grpc_service_pb2, model_config_pb2

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "edgeexit" / "transport" / "generated"


def test_checked_in_stubs_are_what_protos_generate(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "generate_protos.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    fresh = {p.name: p.read_text(encoding="utf-8") for p in out.iterdir() if p.is_file()}
    checked_in = {p.name: p.read_text(encoding="utf-8") for p in GENERATED.iterdir() if p.suffix in (".py", ".pyi")}
    assert sorted(fresh) == sorted(checked_in)
    stale = [name for name in fresh if fresh[name] != checked_in[name]]
    assert not stale, f"stale stubs {stale}: run python tools/generate_protos.py and commit the result"


def _fields(descriptor) -> dict[str, tuple[int, int, bool, str]]:
    return {
        f.name: (f.number, f.type, f.is_repeated, f.message_type.full_name if f.message_type else "")
        for f in descriptor.fields
    }


def _messages(file_descriptor) -> dict[str, object]:
    found = {}

    def walk(descriptor) -> None:
        found[descriptor.full_name] = descriptor
        for nested in descriptor.nested_types:
            walk(nested)

    for descriptor in file_descriptor.message_types_by_name.values():
        walk(descriptor)
    return found


@pytest.fixture(scope="module")
def triton_descriptors():
    tritonclient = pytest.importorskip("tritonclient.grpc")
    del tritonclient
    from tritonclient.grpc import model_config_pb2 as their_config
    from tritonclient.grpc import service_pb2 as their_service

    return their_service.DESCRIPTOR, their_config.DESCRIPTOR


@pytest.mark.parametrize("ours", [grpc_service_pb2.DESCRIPTOR, model_config_pb2.DESCRIPTOR], ids=["service", "config"])
def test_every_field_matches_tritons(ours, triton_descriptors) -> None:
    theirs: dict[str, object] = {}
    for file_descriptor in triton_descriptors:
        theirs.update(_messages(file_descriptor))
    for name, descriptor in _messages(ours).items():
        assert name in theirs, f"{name} is not in Triton's protocol"
        their_fields = _fields(theirs[name])
        for field, spec in _fields(descriptor).items():
            assert their_fields.get(field) == spec, f"{name}.{field}: ours {spec}, Triton's {their_fields.get(field)}"
    for enum in ours.enum_types_by_name.values():
        their_enum = triton_descriptors[1].enum_types_by_name[enum.name]
        assert {v.name: v.number for v in enum.values}.items() <= {v.name: v.number for v in their_enum.values}.items()


def test_every_method_matches_tritons(triton_descriptors) -> None:
    ours = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_descriptors[0].services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"
    for method in ours.methods:
        their = theirs.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            their.input_type.full_name,
            their.output_type.full_name,
        )
    required = {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"}
    assert required <= {m.name for m in ours.methods}


def test_tritonclient_and_edgeexit_import_together_and_agree_on_bytes() -> None:
    """Our stubs live in a private descriptor pool, so both load in one process; a request built
    with tritonclient's classes parses with ours field for field."""
    script = """
import tritonclient.grpc
from tritonclient.grpc import service_pb2 as theirs
from edgeexit.transport.generated import grpc_service_pb2 as ours
request = theirs.ModelInferRequest(model_name="m__from_1__int8", model_version="1", id="7")
tensor = request.inputs.add(name="hidden", datatype="UINT8", shape=[2, 3])
request.raw_input_contents.append(bytes(range(6)))
request.parameters["scale"].double_param = 0.25
request.parameters["zero_point"].int64_param = 3
request.parameters["package_id"].string_param = "abc"
parsed = ours.ModelInferRequest.FromString(request.SerializeToString())
assert parsed.model_name == "m__from_1__int8" and parsed.id == "7"
assert list(parsed.inputs[0].shape) == [2, 3] and parsed.inputs[0].datatype == "UINT8"
assert parsed.raw_input_contents[0] == bytes(range(6))
assert parsed.parameters["scale"].double_param == 0.25 and parsed.parameters["zero_point"].int64_param == 3
back = theirs.ModelInferRequest.FromString(parsed.SerializeToString())
assert back == request
print("OK")
"""
    pytest.importorskip("tritonclient.grpc")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "OK"
