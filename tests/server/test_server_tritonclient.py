"""A v2 client written elsewhere drives our server: ``tritonclient[grpc]`` in its own process
(so nothing of edgeexit's stubs is shared with it), on the digits package's real tails.

It checks ServerLive/Ready, ModelMetadata and ModelInfer, the way Triton users call a server:
input tensors only (int8's scale and zero point as tensors), no package_id, and an error case.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgeexit.server import TailServer

CLIENT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

url, fp32_model, int8_model, data, out = sys.argv[1:]
arrays = np.load(data)
client = grpcclient.InferenceServerClient(url)
report = {
    "live": client.is_server_live(),
    "ready": client.is_server_ready(),
    "model_ready": client.is_model_ready(fp32_model),
    "server": client.get_server_metadata(as_json=True),
}
meta = client.get_model_metadata(int8_model, as_json=True)
report["metadata"] = meta

def infer(model, named):
    inputs = []
    for name, array in named.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer(model, inputs, outputs=[grpcclient.InferRequestedOutput("logits")])
    parameters = result.get_response().parameters
    return result.as_numpy("logits"), {k: parameters[k].double_param for k in ("queue_ms", "compute_ms")}

fp32_logits, report["fp32_parameters"] = infer(fp32_model, {"hidden": arrays["fp32_hidden"]})
int8_logits, _ = infer(
    int8_model,
    {"hidden": arrays["int8_hidden"], "scale": arrays["int8_scale"], "zero_point": arrays["int8_zero_point"]},
)
try:
    infer(fp32_model, {"hidden": arrays["fp32_hidden"].astype(np.float64)})
    report["error"] = None
except InferenceServerException as err:
    report["error"] = [err.status(), err.message()]
np.savez(out, fp32_logits=fp32_logits, int8_logits=int8_logits)
client.close()
print("REPORT " + json.dumps(report))
"""


def test_tritonclient_drives_the_server(digits_server: TailServer, digits_local, wire, tmp_path: Path) -> None:
    fp32_model = wire.tail_name(digits_local.model, 1, "fp32")
    int8_model = wire.tail_name(digits_local.model, 0, "int8")
    int8 = wire.encode("int8", digits_local.hidden[0]).tensors()
    data, out = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(
        data,
        fp32_hidden=digits_local.hidden[1],
        int8_hidden=int8["hidden"],
        int8_scale=int8["scale"],
        int8_zero_point=int8["zero_point"],
    )
    result = subprocess.run(
        [sys.executable, "-c", CLIENT, f"127.0.0.1:{digits_server.port}", fp32_model, int8_model, str(data), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(next(x for x in result.stdout.splitlines() if x.startswith("REPORT ")).removeprefix("REPORT "))
    assert (report["live"], report["ready"], report["model_ready"]) == (True, True, True)
    assert report["server"]["name"] == "edgeexit"
    meta = report["metadata"]
    assert meta["name"] == int8_model
    assert meta["versions"] == ["1"]
    dims = [str(d) for d in digits_local.hidden[0].shape[1:]]
    assert meta["inputs"] == [
        {"name": "hidden", "datatype": "UINT8", "shape": ["-1", *dims]},
        {"name": "scale", "datatype": "FP32", "shape": ["-1", "1"]},
        {"name": "zero_point", "datatype": "UINT8", "shape": ["-1", "1"]},
    ]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": ["-1", "10"]}]
    logits = np.load(out)
    np.testing.assert_allclose(logits["fp32_logits"], digits_local.logits, rtol=1e-4, atol=1e-4)
    int8_tail = digits_local.package / "tails" / int8_model / "1" / "model.onnx"
    np.testing.assert_allclose(
        logits["int8_logits"],
        wire.reference(int8_tail, wire.encode("int8", digits_local.hidden[0])),
        rtol=1e-5,
        atol=1e-5,
    )
    assert report["fp32_parameters"]["compute_ms"] >= 0
    status, message = report["error"]
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert "datatype 'FP64'; expected 'FP32'" in message
