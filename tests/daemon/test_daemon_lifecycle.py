"""The daemon as a real process: a request stream across a SIGHUP reload and a SIGTERM drain.

Every request sent gets a correct answer (the prediction Engine.run gives on the same input) or,
once draining started, a clean UNAVAILABLE; the daemon's own count of answers equals the
client's, so none was lost between its worker and the client. No wall-clock assertions.
"""

from __future__ import annotations

import shutil
import signal
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from edgeexit.data import LabelledData
from edgeexit.runtime.engine import Engine

SAMPLES = 24
CLIENTS = 3


@pytest.fixture(scope="module")
def expected(digits_package: Path, digits: LabelledData) -> tuple[np.ndarray, list[int]]:
    xs = np.ascontiguousarray(digits.x[:SAMPLES], dtype=np.float32)
    engine = Engine(digits_package, cache_dir=None)
    return xs, [int(engine.run(x[None]).prediction) for x in xs]


class Stream:
    """CLIENTS threads sending batch-1 requests until their first failure."""

    def __init__(self, kit, address: str, xs: np.ndarray) -> None:
        self.kit, self.address, self.xs = kit, address, xs
        self.lock = threading.Lock()
        self.answered = threading.Condition(self.lock)
        self.ok: list[tuple[int, int]] = []  # (sample, prediction)
        self.failures: list[tuple[grpc.StatusCode, str, bool]] = []  # code, details, ended after SIGTERM
        self.term_sent = False
        self.threads = [threading.Thread(target=self._loop, args=(n,), daemon=True) for n in range(CLIENTS)]

    def start(self) -> Stream:
        for thread in self.threads:
            thread.start()
        return self

    def _loop(self, worker: int) -> None:
        with self.kit.client(self.address) as stub:
            i = worker
            while True:
                sample = i % len(self.xs)
                try:
                    response = stub.ModelInfer(self.kit.infer_request(self.xs[sample : sample + 1]), timeout=60)
                except grpc.RpcError as err:
                    with self.lock:
                        self.failures.append((err.code(), err.details() or "", self.term_sent))
                        self.answered.notify_all()
                    return
                with self.answered:
                    self.ok.append((sample, response.parameters["prediction"].int64_param))
                    self.answered.notify_all()
                i += CLIENTS

    def wait_for(self, count: int) -> None:
        with self.answered:
            assert self.answered.wait_for(lambda: len(self.ok) >= count or self.failures, timeout=120)
            assert not self.failures, self.failures

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=120)
            assert not thread.is_alive()


def test_stream_survives_reload_and_drains_on_sigterm(
    kit, start_daemon, digits_package: Path, tmp_path: Path, socket_dir: Path, expected
) -> None:
    xs, predictions = expected
    listen = f"unix://{socket_dir}/device.sock"
    config = kit.write_config(tmp_path / "device.toml", digits_package, listen)
    daemon = start_daemon(config)
    assert daemon.address == f"unix:{socket_dir}/device.sock"
    stream = Stream(kit, daemon.address, xs).start()
    stream.wait_for(20)

    # SIGHUP mid-stream: another thread count and a copy of the package (hashes verified again)
    copy = tmp_path / "pkg-v2"
    shutil.copytree(digits_package, copy)
    kit.write_config(config, copy, listen, threads=2)
    daemon.signal(signal.SIGHUP)
    reloaded = daemon.wait_event("reloaded")
    assert reloaded["threads"] == 2
    assert reloaded["package"] == str(copy)
    with stream.lock:
        before = len(stream.ok)
    stream.wait_for(before + 20)  # answered by the new runtime, with no failure in between
    daemon.wait_event("retired")

    with stream.lock:
        stream.term_sent = True
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    stream.join()

    assert len(stream.failures) == CLIENTS  # each client stopped at its first failure ...
    for code, details, after_term in stream.failures:  # ... a refusal, once draining started
        # UNAVAILABLE "draining" from the daemon (every client meets it: grpc's shutdown waits until none
        # is sending, edgeexit.kserve.drain), never a bare CANCELLED a client could not tell from its own
        assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
        assert "draining (SIGTERM)" in details
        assert after_term
    wrong = [(s, p, predictions[s]) for s, p in stream.ok if p != predictions[s]]
    assert not wrong
    stopped = daemon.events("stopped")[-1]
    assert stopped["answered"] == len(stream.ok)  # every answer computed reached its client
    assert daemon.events("draining")[0]["signal"] == "SIGTERM"
    assert not Path(f"{socket_dir}/device.sock").exists()  # the socket is removed on exit


def test_bad_reload_keeps_the_old_runtime_serving(kit, start_daemon, digits_package: Path, tmp_path: Path, expected):
    xs, predictions = expected
    config = kit.write_config(tmp_path / "device.toml", digits_package, "127.0.0.1:0")
    daemon = start_daemon(config)
    host, _, port = daemon.address.rpartition(":")
    assert host == "127.0.0.1"
    assert int(port) > 0
    with kit.client(daemon.address) as stub:
        assert stub.ModelInfer(kit.infer_request(xs[:1])).parameters["prediction"].int64_param == predictions[0]

        config.write_text(config.read_text() + 'threads = "two"\n', encoding="utf-8")  # TOML: a duplicate key
        daemon.signal(signal.SIGHUP)
        assert "not valid TOML" in daemon.wait_event("reload_failed")["reason"]

        kit.write_config(config, digits_package, "127.0.0.1:0", extra='log_format = "yaml"\n')
        daemon.signal(signal.SIGHUP)
        reason = daemon.wait_event("reload_failed")["reason"]
        assert "log_format" in reason
        assert "'json'" in reason

        tampered = tmp_path / "tampered"
        shutil.copytree(digits_package, tampered)
        segment = tampered / "segments" / "0.onnx"
        segment.write_bytes(segment.read_bytes() + b"\0")
        kit.write_config(config, tampered, "127.0.0.1:0")
        daemon.signal(signal.SIGHUP)
        assert "0.onnx" in daemon.wait_event("reload_failed")["reason"]

        for i in range(4):  # still the old runtime, still right
            response = stub.ModelInfer(kit.infer_request(xs[i : i + 1]))
            assert response.parameters["prediction"].int64_param == predictions[i]
    assert not daemon.events("reloaded")
    kit.write_config(config, digits_package, "127.0.0.1:0")
    daemon.signal(signal.SIGHUP)
    assert daemon.wait_event("reloaded")["generation"] == 2  # the three failed reloads took no number
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
