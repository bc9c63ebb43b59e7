"""The ``[device]`` extra alone, in its own venv, can verify, inspect and run a real package.

A stray ``import torch`` in the device path would pass every in-process test on a workstation
that has torch; only a venv without it catches that. Installs from the package registry with the
pins (about 25 s), like a user setting up an edge box would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def device_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("EDGEEXIT_SKIP_INSTALL_TESTS"):
        pytest.skip("EDGEEXIT_SKIP_INSTALL_TESTS is set")
    venv = tmp_path_factory.mktemp("device") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), f"{ROOT}[device]"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    return venv


def test_device_extra_has_no_torch_or_onnx(device_venv: Path) -> None:
    python = str(device_venv / "bin" / "python")
    for module in ("torch", "onnx"):
        found = subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=60)
        assert found.returncode != 0, f"{module} is importable in the [device] venv; it must not be installed there"


def test_device_extra_verifies_and_inspects_a_package(device_venv: Path, digits_package: Path) -> None:
    edgeexit = str(device_venv / "bin" / "edgeexit")
    for command in ("verify", "inspect"):
        result = subprocess.run([edgeexit, command, str(digits_package)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
    verified = subprocess.run([edgeexit, "verify", str(digits_package)], capture_output=True, text=True, timeout=120)
    assert "ok" in verified.stdout


def test_device_extra_explains_what_is_missing_for_workstation_commands(device_venv: Path, tmp_path: Path) -> None:
    edgeexit = str(device_venv / "bin" / "edgeexit")
    result = subprocess.run(
        [edgeexit, "export", "digits_cnn", "--input-shape", "1,1,8,8", "--out", str(tmp_path / "pkg")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "edgeexit[export]" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_device_extra_runs_a_package_on_npy_and_image_inputs(
    device_venv: Path, digits_package: Path, digits, tmp_path: Path
) -> None:
    import json

    import numpy as np
    from PIL import Image

    np.save(tmp_path / "one.npy", digits.x[0])
    Image.fromarray((digits.x[1, 0] * 255).astype(np.uint8)).save(tmp_path / "one.png")
    edgeexit = str(device_venv / "bin" / "edgeexit")
    result = subprocess.run(
        [edgeexit, "run", str(digits_package), str(tmp_path / "one.npy"), str(tmp_path / "one.png"), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(result.stdout)
    assert [row["input"] for row in rows] == ["one.npy", "one.png"]
    assert all({"prediction", "label", "exit", "probabilities", "latency_ms"} <= set(row) for row in rows)


def test_device_extra_offloads_to_a_tail_server(
    device_venv: Path, digits_package: Path, digits, tmp_path: Path
) -> None:
    """[device] alone carries the offload client: `edgeexit run --server` against a real server."""
    import json

    import numpy as np

    from edgeexit.server import ServerOptions, TailServer

    np.save(tmp_path / "batch.npy", digits.x[:4])
    edgeexit = str(device_venv / "bin" / "edgeexit")
    with TailServer([digits_package], ServerOptions(listen="127.0.0.1:0")) as server:
        offload = ["--server", f"127.0.0.1:{server.port}", "--split", "0", "--codec", "int8", "--threshold", "2"]
        result = subprocess.run(
            [edgeexit, "run", str(digits_package), str(tmp_path / "batch.npy"), "--json", *offload],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
        )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == 4
    assert all(row["offload"]["offloaded"] and row["offload"]["codec"] == "int8" for row in rows), rows


def test_device_extra_runs_the_device_daemon(device_venv: Path, digits_package: Path, digits, tmp_path: Path) -> None:
    """`edgeexit device` from a [device]-only venv answers the local v2 API and drains on SIGTERM."""
    import signal

    import grpc
    import numpy as np

    from edgeexit.daemon.app import READY_PREFIX
    from edgeexit.procs import ChildProcess
    from edgeexit.runtime import Engine
    from edgeexit.transport.generated import grpc_service_pb2 as pb
    from edgeexit.transport.generated import grpc_service_pb2_grpc as pb_grpc

    config = tmp_path / "device.toml"
    config.write_text(f'package = "{digits_package}"\nlisten = "127.0.0.1:0"\n', encoding="utf-8")
    command = [str(device_venv / "bin" / "edgeexit"), "device", "--config", str(config)]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    with ChildProcess(command, env=env, name="edgeexit device") as daemon:
        address = daemon.wait_ready(READY_PREFIX)
        x = np.ascontiguousarray(digits.x[:1], dtype="<f4")
        request = pb.ModelInferRequest(model_name="")
        request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
        request.raw_input_contents.append(x.tobytes())
        with grpc.insecure_channel(address) as channel:
            reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        expected = Engine(digits_package, cache_dir=None).run(digits.x[0]).prediction
        assert reply.parameters["prediction"].int64_param == expected
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0, daemon.text()
