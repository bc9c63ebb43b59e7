"""The real tail server as a subprocess (``python -m edgeexit serve``) on 127.0.0.1, for end-to-end
and fault tests: SIGKILL it, SIGSTOP it (it still accepts TCP but never answers), restart it on
the same port. Every process started here is killed on teardown, continued first if stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgeexit.procs import SERVE_READY_PREFIX, ChildProcess
from edgeexit.runtime import Engine, Result

START_TIMEOUT_S = 60


@dataclass
class ServeProcess:
    """One ``edgeexit serve`` process; ``address`` is HOST:PORT with the real port."""

    child: ChildProcess
    address: str = ""

    @property
    def process(self) -> subprocess.Popen[str]:
        return self.child.proc

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye; connections die with the process."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)  # a stopped process dies only once continued
            self.process.kill()
        self.process.wait(timeout=30)

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections and buffers requests; nothing answers.
        Returns once the process is stopped: the signal is delivered asynchronously, and on a
        loaded machine the server answered one more request after kill() returned."""
        import psutil

        os.kill(self.process.pid, signal.SIGSTOP)
        process = psutil.Process(self.process.pid)
        deadline = time.monotonic() + 10
        while process.status() != psutil.STATUS_STOPPED and time.monotonic() < deadline:
            time.sleep(0.001)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)


def start_server(package: Path, cache: Path, started: list[ServeProcess], *args: str, port: int = 0) -> ServeProcess:
    """Start ``edgeexit serve`` for ``package`` and wait for its ready line (registered in ``started``
    first, so teardown kills it even when it never gets ready)."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "COLUMNS": "200"}
    command = [sys.executable, "-m", "edgeexit", "serve", str(package), "--listen", f"127.0.0.1:{port}", *args]
    server = ServeProcess(ChildProcess(command, env=env, name="edgeexit serve"))
    started.append(server)
    server.address = server.child.wait_ready(SERVE_READY_PREFIX, timeout_s=START_TIMEOUT_S)
    return server


@pytest.fixture
def serve(digits_package: Path, tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """``serve(*args, port=0)``: a tail server of its own for one test (to kill, stop or restart)."""
    started: list[ServeProcess] = []

    def start(*args: str, port: int = 0) -> ServeProcess:
        return start_server(digits_package, tmp_path / "serve-cache", started, *args, port=port)

    yield start
    for server in started:
        server.kill()


@pytest.fixture(scope="module")
def healthy(digits_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One tail server shared by a module's tests that leave it running and untouched."""
    started: list[ServeProcess] = []
    try:
        yield start_server(digits_package, tmp_path_factory.mktemp("serve-cache"), started)
    finally:
        for server in started:
            server.kill()


@pytest.fixture(scope="session")
def local_answers(digits_package: Path, digits) -> dict[str, list[Result]]:
    """What the device alone answers for the first 200 digits: with its early exits, and at full depth."""
    xs = digits.x[:200]
    early = Engine(digits_package, cache_dir=None)
    full = Engine(digits_package, cache_dir=None, threshold=1.01)
    return {"early": [early.run(x) for x in xs], "full": [full.run(x) for x in xs]}


@pytest.fixture(scope="module")
def engine(digits_package: Path) -> Engine:
    """The digits package's engine at its own thresholds, one per test module (a module may define its own)."""
    return Engine(digits_package, cache_dir=None)


@pytest.fixture(scope="module")
def server(digits_package: Path) -> Iterator[str]:
    """An in-process tail server for the digits package on an ephemeral loopback port, one per module."""
    from edgeexit.server import ServerOptions, TailServer

    with TailServer([digits_package], ServerOptions(listen="127.0.0.1:0")) as running:
        yield f"127.0.0.1:{running.port}"
