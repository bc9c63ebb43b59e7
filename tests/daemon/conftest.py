"""The device daemon as a real subprocess, and a v2 client for its local API."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from edgeexit.transport.generated import grpc_service_pb2 as pb
from edgeexit.transport.generated import grpc_service_pb2_grpc as pb_grpc

READY_PREFIX = "edgeexit device: listening on "
START_TIMEOUT_S = 120.0


def write_config(path: Path, package: Path, listen: str, *, threads: int = 1, extra: str = "") -> Path:
    path.write_text(
        f'package = "{package}"\nlisten = "{listen}"\nthreads = {threads}\nmax_batch = 16\ngrace_s = 30\n{extra}',
        encoding="utf-8",
    )
    return path


class DaemonProcess:
    """``edgeexit device --config CONFIG``; stderr read by a thread into ``lines`` and ``events``."""

    def __init__(self, config: Path) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeexit", "device", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.address = ""

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line.rstrip("\n"))
        self._new.put(None)

    def _next(self, what: str) -> str:
        try:
            line = self._new.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            raise AssertionError(f"no {what} from the daemon; stderr:\n" + "\n".join(self.lines)) from None
        if line is None:
            raise AssertionError(f"the daemon ended before {what}; stderr:\n" + "\n".join(self.lines))
        return line

    def wait_ready(self) -> str:
        while True:
            line = self._next("ready line")
            if line.startswith(READY_PREFIX):
                self.address = line.removeprefix(READY_PREFIX).strip()
                return self.address

    def wait_event(self, name: str) -> dict[str, object]:
        while True:
            line = self._next(f"{name!r} event")
            entry = _event(line)
            if entry is not None and entry.get("event") == name:
                return entry

    def events(self, name: str) -> list[dict[str, object]]:
        return [e for e in map(_event, list(self.lines)) if e is not None and e.get("event") == name]

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._reader.join(timeout=10)


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
        with contextlib.suppress(Exception):
            if daemon.proc.poll() is None:
                daemon.signal(signal.SIGTERM)
                daemon.wait(timeout=30)
        daemon.kill()


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
