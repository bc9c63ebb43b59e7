"""``edgeexit serve`` as a real subprocess: the ready line, the model table, tokens, clean errors,
and SIGTERM while requests are in flight (they finish; the process exits 0)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from edgeexit.procs import SERVE_READY_PREFIX, ChildProcess
from edgeexit.transport.generated import grpc_service_pb2 as pb
from edgeexit.transport.generated import grpc_service_pb2_grpc as pb_grpc

READY = re.compile(rf"^{re.escape(SERVE_READY_PREFIX)}(?P<host>[^\s]+):(?P<port>\d+)$")
METRICS = re.compile(r"edgeexit serve: metrics on http://[^:]+:(?P<port>\d+)/metrics")


class Served(ChildProcess):
    """One ``edgeexit serve`` process; ``port`` (and ``metrics_port``) once its ready line came."""

    port: int = 0
    metrics_port: int | None = None

    @property
    def process(self) -> subprocess.Popen[str]:
        return self.proc

    @property
    def stderr(self) -> list[str]:
        return self.lines

    def read_until(self, pattern: re.Pattern[str], timeout: float = 60) -> re.Match[str]:
        line = self.wait_for(lambda text: pattern.search(text) is not None, repr(pattern.pattern), timeout_s=timeout)
        found = pattern.search(line)
        assert found is not None
        return found

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        """Wait for exit; return the status and all of stderr."""
        code = self.wait(timeout=timeout)
        return code, self.text()


@pytest.fixture
def serve(edgeexit_cli: list[str], tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """``serve(*args, ready=True)``: start ``edgeexit serve``; killed at teardown if still running."""
    started: list[Served] = []

    def start(*args: str, ready: bool = True) -> Served:
        served = Served([*edgeexit_cli, "serve", *args], cwd=tmp_path, name="edgeexit serve")
        started.append(served)
        if ready:
            if "--metrics-port" in args:
                served.metrics_port = int(served.read_until(METRICS).group("port"))
            served.port = int(served.read_until(READY).group("port"))
        return served

    yield start
    for served in started:
        served.kill()


def stub_for(port: int) -> tuple[grpc.Channel, pb_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return channel, pb_grpc.GRPCInferenceServiceStub(channel)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def test_sigterm_finishes_in_flight_requests_and_exits_0(
    serve: Callable[..., Served], tiny_repo: Path, wire, hidden: np.ndarray
) -> None:
    """Requests wait for a batching delay far longer than the test; SIGTERM must run them now."""
    served = serve(
        str(tiny_repo), "--listen", "127.0.0.1:0", "--metrics-port", "0", "--max-queue-delay-us", "600000000"
    )
    name = wire.tail("int8")
    payloads = [wire.encode("int8", hidden[:1]), wire.encode("int8", hidden[1:3]), wire.encode("int8", hidden[3:4])]
    channel, stub = stub_for(served.port)
    try:
        futures = [stub.ModelInfer.future(wire.request(name, p), timeout=60) for p in payloads]
        depth = f'edgeexit_queue_depth{{model="{name}",version="1"}} 3.0'
        wire.wait_until(lambda: depth in scrape(served.metrics_port), what="three queued requests")
        served.process.send_signal(signal.SIGTERM)
        model_path = tiny_repo / name / "1" / "model.onnx"
        for payload, future in zip(payloads, futures, strict=True):
            response = future.result()
            np.testing.assert_allclose(wire.logits(response), wire.reference(model_path, payload), rtol=1e-6, atol=1e-6)
            assert response.parameters["batch_size"].int64_param == 4
    finally:
        channel.close()
    code, stderr = served.finish()
    assert code == 0, stderr
    assert "SIGTERM: draining" in stderr
    assert "edgeexit serve: stopped" in stderr
    assert "Traceback" not in stderr


def test_sigterm_under_load_answers_every_call_or_refuses_it_with_the_reason(
    serve: Callable[..., Served], tiny_repo: Path, wire, hidden: np.ndarray
) -> None:
    """32 closed-loop clients, each stopping at its first failure, and SIGTERM while they send: every
    call is answered right or refused UNAVAILABLE (the server's "draining", or the transport's once the
    port closed), never a bare CANCELLED a client cannot tell from its own cancel (grpc's own shutdown
    cancels calls that reach it; edgeexit.kserve.drain waits until none is sent)."""
    served = serve(str(tiny_repo), "--listen", "127.0.0.1:0", "--max-batch-size", "8", "--grace-s", "20")
    name = wire.tail("fp32")
    payload = wire.encode("fp32", hidden[:1])
    expected = wire.reference(tiny_repo / name / "1" / "model.onnx", payload)
    request = wire.request(name, payload)
    lock = threading.Lock()
    answers = threading.Condition(lock)
    answered: list[np.ndarray] = []
    failures: list[tuple[grpc.StatusCode, str]] = []

    def client() -> None:
        channel, stub = stub_for(served.port)
        with channel:
            while True:
                try:
                    response = stub.ModelInfer(request, timeout=60)
                except grpc.RpcError as err:
                    with lock:
                        failures.append((err.code(), err.details() or ""))
                    return
                with answers:
                    answered.append(wire.logits(response))
                    answers.notify_all()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(32)]
    for thread in threads:
        thread.start()
    with answers:
        assert answers.wait_for(lambda: len(answered) >= 200 or failures, timeout=120)
    served.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive()
    code, stderr = served.finish()
    assert code == 0, stderr
    assert len(failures) == 32
    for status, details in failures:
        assert status == grpc.StatusCode.UNAVAILABLE, (status, details)
    assert any("the tail server is draining" in details for _, details in failures)
    for logits in answered:
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_serve_prints_the_models_and_checks_tokens(
    serve: Callable[..., Served], tiny_repo: Path, tmp_path: Path, wire, hidden: np.ndarray
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("device-token\n", encoding="utf-8")
    served = serve(str(tiny_repo), "--listen", "127.0.0.1:0", "--token-file", str(token_file), "--max-batch-size", "4")
    banner = "".join(served.stderr)
    for codec in ("fp32", "fp16", "int8"):
        assert wire.tail(codec) in banner
    assert "bearer token" in banner
    assert [line for line in served.stderr if READY.match(line.rstrip("\n"))] == [served.stderr[-1]]
    channel, stub = stub_for(served.port)
    try:
        request = wire.request(wire.tail("fp32"), wire.encode("fp32", hidden[:4]))
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, timeout=20)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        metadata = [("authorization", "Bearer device-token")]
        assert wire.logits(stub.ModelInfer(request, timeout=20, metadata=metadata)).shape == (4, wire.classes)
        config = stub.ModelConfig(pb.ModelConfigRequest(name=wire.tail("fp32")), timeout=20, metadata=metadata).config
        assert config.max_batch_size == 4
    finally:
        channel.close()
    served.process.send_signal(signal.SIGINT)
    code, stderr = served.finish()
    assert code == 0, stderr
    assert "SIGINT: draining" in stderr


def error_line(served: Served) -> str:
    code, stderr = served.finish()
    assert code == 1, stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_a_missing_repository_is_one_error_line(serve: Callable[..., Served], tmp_path: Path) -> None:
    line = error_line(serve(str(tmp_path / "nothing"), "--listen", "127.0.0.1:0", ready=False))
    assert "nothing is not a directory" in line
    assert "Triton model repository" in line


def test_a_taken_port_is_one_error_line(serve: Callable[..., Served], tiny_repo: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = error_line(serve(str(tiny_repo), "--listen", f"127.0.0.1:{port}", ready=False))
    assert f"cannot listen on 127.0.0.1:{port}" in line


def test_a_bad_listen_address_is_one_error_line(serve: Callable[..., Served], tiny_repo: Path) -> None:
    line = error_line(serve(str(tiny_repo), "--listen", "localhost", ready=False))
    assert "is not HOST:PORT" in line
