"""The device daemon as a real subprocess, and a v2 client for its local API."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from edgeexit.daemon.app import READY_PREFIX
from edgeexit.procs import ChildProcess
from edgeexit.transport.generated import grpc_service_pb2 as pb
from edgeexit.transport.generated import grpc_service_pb2_grpc as pb_grpc


def write_config(path: Path, package: Path, listen: str, *, threads: int = 1, extra: str = "") -> Path:
    path.write_text(
        f'package = "{package}"\nlisten = "{listen}"\nthreads = {threads}\nmax_batch = 16\ngrace_s = 30\n{extra}',
        encoding="utf-8",
    )
    return path


class DaemonProcess(ChildProcess):
    """``edgeexit device --config CONFIG``; its stderr read by a thread into ``lines``, with the
    daemon's JSON events picked out of them."""

    def __init__(self, config: Path) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        super().__init__(
            [sys.executable, "-m", "edgeexit", "device", "--config", str(config)], env=env, name="the daemon"
        )
        self.address = ""

    def wait_ready(self) -> str:  # type: ignore[override]
        self.address = super().wait_ready(READY_PREFIX)
        return self.address

    def wait_event(self, name: str) -> dict[str, object]:
        line = self.wait_for(lambda text: _is_event(text, name), f"{name!r} event")
        entry = _event(line)
        assert entry is not None
        return entry

    def events(self, name: str) -> list[dict[str, object]]:
        return [e for e in map(_event, self.lines) if e is not None and e.get("event") == name]

    def signal(self, signum: int) -> None:
        self.send_signal(signum)

    def wait(self, timeout: float | None = 60.0) -> int:
        return super().wait(timeout)


def _is_event(line: str, name: str) -> bool:
    entry = _event(line)
    return entry is not None and entry.get("event") == name


def _event(line: str) -> dict[str, object] | None:
    if not line.startswith("{"):
        return None
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory for unix sockets (sun_path holds ~107 bytes; tmp_path can be longer)."""
    path = Path(tempfile.mkdtemp(prefix="eed-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_daemon() -> Iterator:
    started: list[DaemonProcess] = []

    def start(config: Path) -> DaemonProcess:
        daemon = DaemonProcess(config)
        started.append(daemon)
        daemon.wait_ready()
        return daemon

    yield start
    for daemon in started:
        daemon.stop(grace_s=30)


def infer_request(x: np.ndarray, name: str = "input", **parameters: object) -> pb.ModelInferRequest:
    x = np.ascontiguousarray(x, dtype="<f4")
    request = pb.ModelInferRequest(model_name="")
    request.inputs.add(name=name, datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    for key, value in parameters.items():
        request.parameters[key].string_param = str(value)
    return request


def output(response: pb.ModelInferResponse, name: str) -> np.ndarray:
    dtypes = {"FP32": "<f4", "INT64": "<i8", "BOOL": np.bool_, "FP64": "<f8"}
    for position, tensor in enumerate(response.outputs):
        if tensor.name == name:
            array = np.frombuffer(response.raw_output_contents[position], dtype=dtypes[tensor.datatype])
            return array.reshape(tuple(tensor.shape))
    raise KeyError(name)


@contextlib.contextmanager
def client(address: str) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    """The helpers above, for test modules (importlib mode: conftest is not importable by name)."""
    return SimpleNamespace(
        write_config=write_config,
        infer_request=infer_request,
        output=output,
        client=client,
        DaemonProcess=DaemonProcess,
    )
