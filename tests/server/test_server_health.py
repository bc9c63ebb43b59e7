"""Health and metadata: the v2 Live/Ready/Metadata/Config calls, grpc.health.v1 and reflection."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from edgeexit import __version__
from edgeexit.server import TailServer
from edgeexit.transport.generated import grpc_service_pb2 as pb


def test_server_live_ready_and_metadata(client) -> None:
    assert client.stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    assert client.stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    metadata = client.stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10)
    assert metadata.name == "edgeexit"
    assert metadata.version == __version__
    assert "model_configuration" in metadata.extensions


def test_model_ready(client, wire) -> None:
    assert client.stub.ModelReady(pb.ModelReadyRequest(name=wire.tail("int8")), timeout=10).ready
    assert client.stub.ModelReady(pb.ModelReadyRequest(name=wire.tail("int8"), version="1"), timeout=10).ready
    assert not client.stub.ModelReady(pb.ModelReadyRequest(name=wire.tail("int8"), version="2"), timeout=10).ready
    assert not client.stub.ModelReady(pb.ModelReadyRequest(name="nothing"), timeout=10).ready


def test_model_metadata_lists_the_wire_inputs(client, wire) -> None:
    metadata = client.stub.ModelMetadata(pb.ModelMetadataRequest(name=wire.tail("int8")), timeout=10)
    assert metadata.name == wire.tail("int8")
    assert list(metadata.versions) == ["1"]
    assert metadata.platform == "onnxruntime_onnx"
    inputs = [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs]
    assert inputs == [("hidden", "UINT8", [-1, 2, 3]), ("scale", "FP32", [-1, 1]), ("zero_point", "UINT8", [-1, 1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [("logits", "FP32", [-1, wire.classes])]


@pytest.mark.parametrize("call", ["ModelMetadata", "ModelConfig"])
def test_model_calls_on_an_unknown_model_are_not_found(client, call: str) -> None:
    request = getattr(pb, f"{call}Request")(name="nothing")
    with pytest.raises(grpc.RpcError) as caught:
        getattr(client.stub, call)(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "unknown model 'nothing'" in caught.value.details()


def test_model_config_is_the_effective_one(start_server: Callable[..., TailServer], connect, wire) -> None:
    """Flags override config.pbtxt, and ModelConfig says what the server really does."""
    server = start_server(max_batch_size=3, max_queue_delay_us=250)
    config = connect(server).stub.ModelConfig(pb.ModelConfigRequest(name=wire.tail("fp16")), timeout=10).config
    assert config.max_batch_size == 3
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    assert config.parameters["package_id"].string_value == wire.package_id
    assert config.parameters["codec"].string_value == "fp16"


def test_grpc_health_v1(server: TailServer, connect) -> None:
    health = health_pb2_grpc.HealthStub(connect(server).channel)
    for service in ("", "inference.GRPCInferenceService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as caught:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def reflect(channel: grpc.Channel, **request: str) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    return next(iter(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(**request)]), timeout=10)))


def test_reflection_lists_and_describes_every_service(server: TailServer, connect) -> None:
    channel = connect(server).channel
    listed = {s.name for s in reflect(channel, list_services="").list_services_response.service}
    assert listed == {
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    for symbol, file in [
        ("inference.GRPCInferenceService", "grpc_service.proto"),  # edgeexit's private pool
        ("inference.ModelConfig", "model_config.proto"),
        ("grpc.health.v1.Health", "grpc_health/v1/health.proto"),  # protobuf's default pool
    ]:
        response = reflect(channel, file_containing_symbol=symbol)
        assert response.WhichOneof("message_response") == "file_descriptor_response", symbol
        names = [
            descriptor_pb2.FileDescriptorProto.FromString(raw).name
            for raw in response.file_descriptor_response.file_descriptor_proto
        ]
        assert file in names
    assert reflect(channel, file_containing_symbol="no.Such").WhichOneof("message_response") == "error_response"
