"""``edgeexit serve --workers N``: N server processes on one port, and the process that keeps them.

Why processes: grpc.aio costs about 0.5 ms of server CPU per request in Python (measured,
docs/benchmarks.md), all of it under one GIL, so one process caps a box at a couple of thousand
requests/s however many cores it has. Each worker is a whole ``edgeexit serve`` (its own event
loop, ONNX Runtime sessions and batching queues) bound to the same port with SO_REUSEPORT; the
kernel spreads incoming connections over them. A connection stays with its worker (a device's
channel is one connection), so the spread comes from many devices, as a fleet has.

The supervisor (this module, in the process ``edgeexit serve`` started in):

- holds the port: a bound SO_REUSEPORT socket that never listens, so port 0 resolves once, no
  other program can take the port between workers, and a restarted worker gets it back;
- starts the workers (``python -m edgeexit serve ... --reuse-port``), forwards their stderr with a
  ``[worker i]`` prefix, and prints the one ready line once every worker is ready;
- serves ``/metrics`` for all of them: each worker writes its series to files in a private
  directory (prometheus-client's multiprocess mode), summed here (queue depth: the live workers'
  sum; expected time: their largest);
- forwards SIGTERM (every worker drains, as one server does) and SIGHUP (every worker reloads);
- restarts a worker that dies, at most ``MAX_RESTARTS`` in ``RESTART_WINDOW_S``; past that it
  stops the others and fails, since a package that crashes every worker will not get better.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from edgeexit.errors import ServerError
from edgeexit.procs import SERVE_READY_PREFIX, START_TIMEOUT_S, ChildProcess
from edgeexit.server.app import MIB, ServerOptions, parse_listen

#: A worker that dies is started again, at most this often in this window.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
#: Set in each worker's environment: its index (the model table is printed by worker 0 only).
WORKER_ENV = "EDGEEXIT_SERVE_WORKER"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True)
class WorkerPlan:
    """What every worker serves and how: the sources, the options, and the token file (passed as
    a path, never as tokens on a command line that ``ps`` shows)."""

    sources: tuple[Path, ...]
    options: ServerOptions
    workers: int
    token_file: Path | None = None


def worker_command(plan: WorkerPlan, port: int) -> list[str]:
    """The ``edgeexit serve`` command of one worker: the plan's options, the supervisor's port."""
    options = plan.options
    host, _ = parse_listen(options.listen)
    command = [sys.executable, "-m", "edgeexit", "serve", *map(str, plan.sources), "--listen", f"{host}:{port}"]
    command += ["--reuse-port", "--max-queue", str(options.max_queue), "--threads", str(options.threads)]
    command += ["--max-message-mb", repr(options.max_message_bytes / MIB), "--grace-s", repr(options.grace_s)]
    command += ["--shed" if options.shed else "--no-shed"]
    if options.max_batch_size is not None:
        command += ["--max-batch-size", str(options.max_batch_size)]
    if options.max_queue_delay_us is not None:
        command += ["--max-queue-delay-us", str(options.max_queue_delay_us)]
    for flag, path in (("--tls-cert", options.tls_cert), ("--tls-key", options.tls_key), ("--tls-ca", options.tls_ca),
                       ("--token-file", plan.token_file)):  # fmt: skip
        if path is not None:
            command += [flag, str(path)]
    for key in options.trusted_keys:
        command += ["--trusted-key", str(key)]
    return command


class Supervisor:
    """N ``edgeexit serve`` workers on one port; see the module docstring. ``say`` prints a line.
    Driven from one thread (the CLI's loop); only ``say`` is called from the workers' reader threads."""

    def __init__(self, plan: WorkerPlan, say: Callable[[str], None]) -> None:
        if plan.workers < 2:
            raise ServerError(f"--workers {plan.workers}: a supervisor runs 2 or more workers; 1 is plain serve")
        self.plan = plan
        self.say = say
        self.host, self._requested_port = parse_listen(plan.options.listen)
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.workers: list[ChildProcess | None] = [None] * plan.workers
        self._holder: socket.socket | None = None
        self._metrics_dir: Path | None = None
        self._http: WSGIServer | None = None
        self._restarts: list[float] = []
        self._stopping = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port if self.port is not None else self._requested_port}"

    # ---------------------------------------------------------------- start

    def start(self) -> Supervisor:
        try:
            self.port = self._hold_port()
            if self.plan.options.metrics_port is not None:
                self._metrics_dir = Path(tempfile.mkdtemp(prefix="edgeexit-serve-metrics-"))
            for index in range(self.plan.workers):  # one at a time: a package that fails to load fails
                self.workers[index] = self._spawn(index)  # the first worker, before the others load it
                self._wait_ready(index)
            if self._metrics_dir is not None:
                self.metrics_port = self._serve_metrics(self.plan.options.metrics_port or 0)
        except BaseException:
            self.stop(grace_s=0)
            raise
        return self

    def _hold_port(self) -> int:
        bare = self.host.strip("[]")
        family = socket.AF_INET6 if ":" in bare else socket.AF_INET
        holder = socket.socket(family, socket.SOCK_STREAM)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            holder.bind((bare, self._requested_port))
        except OSError as err:
            holder.close()
            raise ServerError(
                f"cannot hold {self.plan.options.listen} for the workers ({err.strerror}); the port is in use or the "
                "address is not this machine's: pick another --listen"
            ) from None
        self._holder = holder
        return int(holder.getsockname()[1])

    def _spawn(self, index: int) -> ChildProcess:
        env = {**os.environ, WORKER_ENV: str(index)}
        if self._metrics_dir is not None:
            env[MULTIPROC_ENV] = str(self._metrics_dir)
        assert self.port is not None
        return ChildProcess(
            worker_command(self.plan, self.port),
            env=env,
            name=f"edgeexit serve worker {index}",
            keep_lines=200,
            on_line=lambda line, index=index: self.say(f"[worker {index}] {line}"),
        )

    def _wait_ready(self, index: int) -> None:
        worker = self.workers[index]
        assert worker is not None
        worker.wait_ready(SERVE_READY_PREFIX, timeout_s=START_TIMEOUT_S)

    def _serve_metrics(self, port: int) -> int:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self._metrics_dir))
        server, _ = start_http_server(port, addr=self.host.strip("[]"), registry=registry)
        self._http = server
        return int(server.server_port)

    # ---------------------------------------------------------------- running

    def forward(self, signum: int) -> None:
        """Send ``signum`` to every live worker (SIGHUP: each reloads; SIGTERM: each drains)."""
        for worker in self.workers:
            if worker is not None and worker.poll() is None:
                worker.send_signal(signum)

    def keep_alive(self) -> None:
        """Start again any worker that died; ServerError once they die faster than MAX_RESTARTS a window."""
        if self._stopping:
            return
        for index, worker in enumerate(self.workers):
            if worker is None or worker.poll() is None:
                continue
            code = worker.wait(timeout=5)
            self._mark_dead(worker.pid)
            now = time.monotonic()
            self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW_S] + [now]
            if len(self._restarts) > MAX_RESTARTS:
                raise ServerError(
                    f"worker {index} exited ({code}); workers died {len(self._restarts)} times in "
                    f"{RESTART_WINDOW_S:g} s, so edgeexit serve stops: see the [worker] lines above"
                )
            self.say(f"edgeexit serve: worker {index} exited ({code}); starting it again")
            self.workers[index] = self._spawn(index)
            self._wait_ready(index)

    # ---------------------------------------------------------------- stop

    def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM every worker (each drains within the grace), SIGKILL what is left after it."""
        self._stopping = True
        grace = self.plan.options.grace_s if grace_s is None else grace_s
        self.forward(signal.SIGTERM)
        deadline = time.monotonic() + grace + 5.0  # each worker's own grace, and its exit
        for worker in self.workers:
            if worker is None:
                continue
            try:
                worker.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except Exception:  # still running past its grace: no more waiting
                worker.kill()
            self._mark_dead(worker.pid)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._holder is not None:
            self._holder.close()
            self._holder = None
        if self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
            self._metrics_dir = None

    def _mark_dead(self, pid: int) -> None:
        if self._metrics_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, str(self._metrics_dir))
