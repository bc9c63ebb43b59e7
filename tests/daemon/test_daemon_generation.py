"""The daemon serving a decoder package: a BYTES prompt in, the generated text and its figures out."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from edgeexit.generation import DecoderEngine
from edgeexit.transport.generated import grpc_service_pb2 as pb


def test_tritonclient_generates_text_through_the_daemon(kit, start_daemon, tiny_with_exits: Path,
                                                          tmp_path: Path, socket_dir: Path) -> None:  # fmt: skip
    grpcclient = pytest.importorskip("tritonclient.grpc")
    daemon = start_daemon(kit.write_config(tmp_path / "device.toml", tiny_with_exits, f"unix://{socket_dir}/g.sock"))
    engine = DecoderEngine(tiny_with_exits)
    client = grpcclient.InferenceServerClient(daemon.address)
    try:
        meta = client.get_model_metadata("")
        assert [(t.name, t.datatype) for t in meta.inputs] == [("prompt", "BYTES")]
        assert [t.name for t in meta.outputs] == ["text", "tokens"]
        for mode in ("full", "speculative", "early-exit"):
            prompt = grpcclient.InferInput("prompt", [1], "BYTES")
            prompt.set_data_from_numpy(np.array([b"the quick brown fox"], dtype=object))
            result = client.infer("", [prompt], parameters={"max_new_tokens": 6, "mode": mode})
            want = engine.generate("the quick brown fox", 6, mode=mode)
            assert result.as_numpy("text")[0].decode() == want.text
            assert result.as_numpy("tokens").tolist() == list(want.tokens)
            parameters = result.get_response().parameters
            assert parameters["mode"].string_param == mode
            assert parameters["tokens"].int64_param == len(want.tokens)
            assert parameters["tokens_per_s"].double_param > 0
            assert 1.0 <= parameters["mean_layers"].double_param <= 4.0
    finally:
        client.close()


def _prompt(text: bytes) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest()
    request.inputs.add(name="prompt", datatype="BYTES", shape=[1]).contents.bytes_contents.append(text)
    return request


def _refused(stub, request: pb.ModelInferRequest) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return caught.value


def test_a_bad_generation_request_is_refused_and_the_daemon_serves_on(kit, start_daemon, tiny_decoder: Path,
                                                                        tmp_path: Path) -> None:  # fmt: skip
    daemon = start_daemon(kit.write_config(tmp_path / "device.toml", tiny_decoder, "127.0.0.1:0"))
    with kit.client(daemon.address) as stub:
        wrong = kit.infer_request(np.zeros((1, 4), np.float32), name="prompt")
        assert "expects one input 'prompt' BYTES [1]" in _refused(stub, wrong).details()
        assert "the prompt is empty" in _refused(stub, _prompt(b"   ")).details()
        early = _prompt(b"to be")
        early.parameters["mode"].string_param = "early-exit"
        assert "needs exit adapters" in _refused(stub, early).details()
        fine = _prompt(b"to be")
        fine.parameters["max_new_tokens"].int64_param = 3
        answer = stub.ModelInfer(fine)
        assert answer.parameters["tokens"].int64_param <= 3
        assert answer.parameters["mode"].string_param == "full"
