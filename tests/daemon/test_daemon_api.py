"""The local API's contract (edgeexit.daemon.service) against a real daemon on 127.0.0.1:0:
metadata, batch-1 parameters, batch-N tensors, malformed requests (INVALID_ARGUMENT, still serving)."""

from __future__ import annotations

import signal
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from edgeexit.data import LabelledData
from edgeexit.runtime.engine import Engine
from edgeexit.transport.generated import grpc_service_pb2 as pb


def test_local_api(kit, start_daemon, digits_package: Path, digits: LabelledData, tmp_path: Path) -> None:
    xs = np.ascontiguousarray(digits.x[:6], dtype=np.float32)
    engine = Engine(digits_package, cache_dir=None)
    want = engine.run_batch(xs)
    config = kit.write_config(tmp_path / "device.toml", digits_package, "127.0.0.1:0", extra="metrics_port = 0\n")
    daemon = start_daemon(config)
    metrics_port = daemon.wait_event("listening")["metrics_port"]
    with kit.client(daemon.address) as stub:
        assert stub.ServerLive(pb.ServerLiveRequest()).live
        assert stub.ServerReady(pb.ServerReadyRequest()).ready
        name = engine.manifest.model_name
        assert stub.ModelReady(pb.ModelReadyRequest(name=name)).ready
        assert not stub.ModelReady(pb.ModelReadyRequest(name="other")).ready
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=name))
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("input", "FP32", [-1, 1, 8, 8])]
        assert {t.name for t in meta.outputs} == {"probabilities", "prediction", "exit", "offloaded", "fallback",
                                                   "latency_ms"}  # fmt: skip

        one = stub.ModelInfer(kit.infer_request(xs[:1], package_id=engine.manifest.package_id))
        params = one.parameters
        assert params["prediction"].int64_param == want[0].prediction
        assert params["exit"].int64_param == want[0].exit
        assert params["offloaded"].bool_param is False
        assert params["fallback"].bool_param is False
        assert params["latency_ms"].double_param >= 0.0
        np.testing.assert_allclose(kit.output(one, "probabilities")[0], want[0].probabilities, rtol=1e-5, atol=1e-6)

        many = stub.ModelInfer(kit.infer_request(xs))
        assert many.parameters["batch_size"].int64_param == len(xs)
        assert "prediction" not in many.parameters  # per-sample values travel as tensors for N > 1
        assert kit.output(many, "prediction").tolist() == [r.prediction for r in want]
        assert kit.output(many, "exit").tolist() == [r.exit for r in want]
        assert kit.output(many, "offloaded").tolist() == [False] * len(xs)

        only = kit.infer_request(xs[:2])
        only.outputs.add(name="exit")
        reply = stub.ModelInfer(only)
        assert [t.name for t in reply.outputs] == ["exit"]

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as page:
        text = page.read().decode()
    assert 'edgeexit_device_requests_total{code="OK"} 3.0' in text
    assert "edgeexit_device_samples_total" in text


BAD = {
    "wrong input name": lambda kit, x: kit.infer_request(x, name="pixels"),
    "wrong shape": lambda kit, x: kit.infer_request(x.reshape(1, 1, 4, 16)),
    "too many samples": lambda kit, x: kit.infer_request(np.repeat(x, 17, axis=0)),
    "wrong datatype": lambda kit, x: _retyped(kit.infer_request(x), "FP16"),
    "short raw bytes": lambda kit, x: _truncated(kit.infer_request(x)),
    "unknown output": lambda kit, x: _asking(kit.infer_request(x), "logits"),
    "NaN": lambda kit, x: kit.infer_request(np.full_like(x, np.nan)),
}


def _retyped(request: pb.ModelInferRequest, datatype: str) -> pb.ModelInferRequest:
    request.inputs[0].datatype = datatype
    return request


def _truncated(request: pb.ModelInferRequest) -> pb.ModelInferRequest:
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    return request


def _asking(request: pb.ModelInferRequest, name: str) -> pb.ModelInferRequest:
    request.outputs.add(name=name)
    return request


def test_malformed_requests_are_invalid_argument_and_the_daemon_keeps_serving(
    kit, start_daemon, digits_package: Path, digits: LabelledData, tmp_path: Path
) -> None:
    x = np.ascontiguousarray(digits.x[:1], dtype=np.float32)
    daemon = start_daemon(kit.write_config(tmp_path / "device.toml", digits_package, "127.0.0.1:0"))
    with kit.client(daemon.address) as stub:
        for what, build in BAD.items():
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(build(kit, x))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
            assert "expect" in caught.value.details(), (what, caught.value.details())
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(kit.infer_request(x, package_id="0" * 64))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with grpc.insecure_channel(daemon.address) as channel:  # bytes that are no ModelInferRequest
            raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            with pytest.raises(grpc.RpcError) as caught:
                raw(b"\xff\xff\xff")
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert stub.ModelInfer(kit.infer_request(x)).parameters["batch_size"].int64_param == 1
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0


def test_tritonclient_over_the_unix_socket(
    kit, start_daemon, digits_package: Path, digits: LabelledData, tmp_path: Path, socket_dir: Path
) -> None:
    """The README's example, with a v2 client written elsewhere."""
    grpcclient = pytest.importorskip("tritonclient.grpc")
    x = np.ascontiguousarray(digits.x[:1], dtype=np.float32)
    want = Engine(digits_package, cache_dir=None).run(x)
    daemon = start_daemon(kit.write_config(tmp_path / "device.toml", digits_package, f"unix://{socket_dir}/d.sock"))
    client = grpcclient.InferenceServerClient(daemon.address)
    try:
        meta = client.get_model_metadata("")
        infer_input = grpcclient.InferInput(meta.inputs[0].name, list(x.shape), "FP32")
        infer_input.set_data_from_numpy(x)
        result = client.infer(meta.name, [infer_input])
        assert result.as_numpy("prediction").tolist() == [want.prediction]
        assert result.get_response().parameters["exit"].int64_param == want.exit
        assert result.as_numpy("offloaded").tolist() == [False]
    finally:
        client.close()
