"""``edgeexit serve --workers N`` as real processes, and SIGHUP reloads.

A supervisor and its workers on one port: every call answered right whichever worker takes it,
metrics summed over the workers, SIGHUP reloads every worker, a killed worker is started again,
SIGTERM drains them all and leaves no process behind. A single server reloads on SIGHUP and keeps
its old models when the new ones fail to load. No wall-clock assertions.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest

from edgeexit.procs import SERVE_READY_PREFIX, ChildProcess
from edgeexit.server.app import ServerOptions
from edgeexit.server.workers import WorkerPlan, worker_command
from edgeexit.transport.generated import grpc_service_pb2_grpc as pb_grpc

METRICS = re.compile(r"metrics on (?P<url>http://\S+/metrics)")


@pytest.fixture
def launch(edgeexit_cli: list[str], tmp_path: Path) -> Iterator[Callable[..., tuple[ChildProcess, str]]]:
    """``launch(*args)``: ``edgeexit serve *args``, ready; (process, address). Killed at teardown,
    with every worker it started."""
    started: list[ChildProcess] = []

    def start(*args: str) -> tuple[ChildProcess, str]:
        child = ChildProcess([*edgeexit_cli, "serve", *args], cwd=tmp_path, name="edgeexit serve")
        started.append(child)
        return child, child.wait_ready(SERVE_READY_PREFIX)

    yield start
    for child in started:
        try:
            family = psutil.Process(child.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        child.kill()
        for process in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def call_many(address: str, request, channels: int, calls: int) -> list[np.ndarray]:
    """``channels`` connections (the kernel spreads connections over the workers), ``calls`` each."""
    answers: list[np.ndarray] = []
    lock = threading.Lock()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            with grpc.insecure_channel(address) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                for _ in range(calls):
                    response = stub.ModelInfer(request, timeout=60)
                    with lock:
                        answers.append(np.frombuffer(response.raw_output_contents[0], np.float32))
        except BaseException as err:  # reported below, in the test's thread
            failures.append(err)

    threads = [threading.Thread(target=run) for _ in range(channels)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    return answers


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def workers_of(child: ChildProcess) -> list[psutil.Process]:
    return [p for p in psutil.Process(child.pid).children() if "serve" in " ".join(p.cmdline())]


def test_workers_share_a_port_sum_their_metrics_reload_restart_and_drain(
    launch, tiny_repo: Path, wire, hidden: np.ndarray
) -> None:
    child, address = launch(str(tiny_repo), "--listen", "127.0.0.1:0", "--workers", "2", "--metrics-port", "0")
    url = next(found["url"] for line in child.lines if (found := METRICS.search(line)))
    workers = workers_of(child)
    assert len(workers) == 2
    assert all("--reuse-port" in p.cmdline() for p in workers)
    name = wire.tail("fp32")
    payload = wire.encode("fp32", hidden[:1])
    request = wire.request(name, payload)
    expected = wire.reference(tiny_repo / name / "1" / "model.onnx", payload).ravel()
    for answer in call_many(address, request, channels=8, calls=10):
        np.testing.assert_allclose(answer, expected, rtol=1e-5, atol=1e-5)
    assert f'edgeexit_requests_total{{code="OK",model="{name}",version="1"}} 80.0' in scrape(url)

    child.send_signal(signal.SIGHUP)
    reloaded = set()
    while len(reloaded) < 2:  # in whichever order the workers finish
        line = child.wait_for(lambda text: "edgeexit serve: SIGHUP: reloaded, serving 3 models" in text, "reloads")
        reloaded.add(line.split("]")[0])
    assert reloaded == {"[worker 0", "[worker 1"}
    assert len(call_many(address, request, channels=4, calls=5)) == 20

    workers[0].kill()  # a worker that dies is started again; the port keeps answering
    child.wait_for(lambda line: "worker 0 exited" in line and "starting it again" in line, "the restart")
    child.wait_for(lambda line: line.startswith(f"[worker 0] {SERVE_READY_PREFIX}"), "the new worker's ready line")
    assert len(call_many(address, request, channels=4, calls=5)) == 20
    assert len(workers_of(child)) == 2

    survivors = workers_of(child)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) == 0
    text = child.text()
    assert "SIGTERM: draining 2 workers" in text
    assert text.count("edgeexit serve: stopped") == 3  # each worker, then the supervisor
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in survivors)


def test_sighup_reloads_a_single_server_and_keeps_the_old_models_when_the_new_ones_fail(
    launch, tiny_repo: Path, tmp_path: Path, wire, hidden: np.ndarray
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    child, address = launch(str(repo), "--listen", "127.0.0.1:0")
    name = wire.tail("fp32")
    request = wire.request(name, wire.encode("fp32", hidden[:1]))
    assert len(call_many(address, request, channels=1, calls=3)) == 3

    (repo / name / "1" / "model.onnx").write_bytes(b"not an onnx graph")
    child.send_signal(signal.SIGHUP)
    failed = child.wait_for(lambda line: "SIGHUP: reload failed" in line, "the failed reload")
    assert "still serving the old models" in failed
    assert len(call_many(address, request, channels=2, calls=3)) == 6  # the old sessions answer

    shutil.rmtree(repo / name)  # now a repository without that tail: the reload takes, the model is gone
    child.send_signal(signal.SIGHUP)
    child.wait_for(lambda line: "SIGHUP: reloaded, serving 2 models" in line, "the reload")
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) == 0


def test_a_worker_gets_every_setting_but_the_metrics_port(tiny_repo: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    options = ServerOptions(listen="[::1]:0", max_batch_size=8, max_queue_delay_us=500, max_queue=9, threads=2,
                            grace_s=3.5, shed=False, metrics_port=9090, trusted_keys=(tmp_path / "a.pem",))  # fmt: skip
    command = worker_command(WorkerPlan((tiny_repo,), options, 2, token_file), port=8123)
    joined = " ".join(command)
    for part in ("--listen [::1]:8123", "--reuse-port", "--max-batch-size 8", "--max-queue-delay-us 500",
                 "--max-queue 9", "--threads 2", "--grace-s 3.5", "--no-shed", f"--token-file {token_file}",
                 f"--trusted-key {tmp_path / 'a.pem'}"):  # fmt: skip
        assert part in joined, part
    assert "--metrics-port" not in command
    assert "--workers" not in command
