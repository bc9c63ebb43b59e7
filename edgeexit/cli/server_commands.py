"""``edgeexit serve``: the tail server (KServe v2 gRPC over ONNX Runtime). No torch.

When it listens it prints exactly one line ``edgeexit serve: listening on HOST:PORT`` to stderr
(with the real port when ``--listen`` asked for port 0); scripts and tests wait for that line.
SIGTERM or SIGINT drains the server (see ``edgeexit.server.app``) and exits with status 0; SIGHUP
reloads its sources. ``--workers N`` runs N such processes on one port under a supervisor
(``edgeexit.server.workers``) that prints the ready line once all are ready.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgeexit.console import err_console
from edgeexit.procs import SERVE_READY_PREFIX

if TYPE_CHECKING:  # the server's modules need the [server] extra: imported when serve runs
    from edgeexit.server.app import ServerOptions, TailServer


def register(app: typer.Typer) -> None:
    app.command()(serve)


def serve(
    sources: Annotated[
        list[Path],
        typer.Argument(
            metavar="REPO_OR_PACKAGE",
            help="Package directories or tars (`edgeexit pack`): their tails/ are served, hashes verified; or Triton "
            "model repositories.",
        ),
    ],
    listen: Annotated[str, typer.Option(help="HOST:PORT to listen on; port 0 picks a free one.")] = "127.0.0.1:8001",
    max_batch_size: Annotated[
        int | None, typer.Option(min=1, help="Samples per session run, for every model (default: config.pbtxt).")
    ] = None,
    max_queue_delay_us: Annotated[
        int | None,
        typer.Option(min=0, help="How long a request may wait for others to batch with (default: config.pbtxt)."),
    ] = None,
    max_queue: Annotated[
        int, typer.Option(min=1, help="Requests waiting per model before new ones get RESOURCE_EXHAUSTED.")
    ] = 256,
    threads: Annotated[int, typer.Option(min=1, help="ONNX Runtime intra-op threads per model.")] = 1,
    tls_cert: Annotated[Path | None, typer.Option(help="Server certificate chain (PEM): enables TLS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Server private key (PEM).")] = None,
    tls_ca: Annotated[
        Path | None, typer.Option(help="CA (PEM) that signs client certificates: enables mutual TLS.")
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(help="File of bearer tokens, one per line: calls need 'authorization: Bearer <token>'."),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Serve Prometheus /metrics on this port (0: a free one).")
    ] = None,
    max_message_mb: Annotated[
        float, typer.Option(min=0.001, help="Largest ModelInfer request accepted, in MiB (larger: INVALID_ARGUMENT).")
    ] = 64.0,
    grace_s: Annotated[
        float, typer.Option(min=0.0, help="On SIGTERM/SIGINT, how long in-flight requests may take to finish.")
    ] = 10.0,
    shed: Annotated[
        bool,
        typer.Option(
            help="Answer a request RESOURCE_EXHAUSTED at once (with the expected time) when its gRPC deadline would "
            "pass before its batch ends, so the device finishes it locally without waiting; --no-shed queues it.",
        ),
    ] = True,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Server processes sharing the port (SO_REUSEPORT), each with its own event loop, sessions and "
            "queues: one process's gRPC handling caps it near one core. Metrics are summed over them; SIGTERM "
            "drains all, SIGHUP reloads all.",
        ),
    ] = 1,
    reuse_port: Annotated[bool, typer.Option(hidden=True, help="Set by --workers in each worker.")] = False,
    trusted_key: Annotated[
        list[Path] | None,
        typer.Option(
            "--trusted-key",
            help="PEM Ed25519 public key (`edgeexit keygen`); given any (repeat for several), serve only packages "
            "a trusted key signed (`edgeexit sign`), checked before any graph loads.",
        ),
    ] = None,
) -> None:
    """Serve tail models over KServe v2 gRPC with dynamic batching, health, TLS, tokens and metrics.

    SIGTERM / SIGINT drain and exit 0; SIGHUP loads the sources again (hashes and signatures checked)
    and serves them from the next request on, or keeps the old ones if they fail."""
    from edgeexit.server.app import MIB, ServerOptions
    from edgeexit.server.auth import read_tokens

    stop = threading.Event()
    hup = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        stop.set()

    def on_hup(signum: int, frame: object) -> None:
        hup.set()
        stop.set()  # wake the loop; it tells a reload from a stop by ``received``

    # before loading anything, so a SIGTERM during start-up still drains instead of killing
    handlers = {signal.SIGTERM: on_signal, signal.SIGINT: on_signal, signal.SIGHUP: on_hup}
    previous = {s: signal.signal(s, handler) for s, handler in handlers.items()}
    try:
        options = ServerOptions(
            listen=listen,
            max_batch_size=max_batch_size,
            max_queue_delay_us=max_queue_delay_us,
            max_queue=max_queue,
            threads=threads,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_ca=tls_ca,
            tokens=read_tokens(token_file) if token_file is not None else (),
            metrics_port=None if reuse_port else metrics_port,  # a worker's metrics go to its supervisor
            max_message_bytes=int(max_message_mb * MIB),
            grace_s=grace_s,
            trusted_keys=tuple(trusted_key or ()),
            shed=shed,
            reuse_port=reuse_port,
        )
        if workers > 1:
            _supervise(sources, options, workers, token_file, stop, hup, received)
        else:
            _serve(sources, options, stop, hup, received, worker=reuse_port)
        err_console.print("edgeexit serve: stopped", highlight=False)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _serve(
    sources: list[Path],
    options: ServerOptions,
    stop: threading.Event,
    hup: threading.Event,
    received: list[int],
    *,
    worker: bool,
) -> None:
    """One server process until SIGTERM/SIGINT, reloading on SIGHUP. A worker also stops when its
    supervisor is gone (it was killed without forwarding anything), so no worker outlives it."""
    from edgeexit.errors import EdgeExitError
    from edgeexit.server.app import TailServer
    from edgeexit.server.workers import WORKER_ENV

    parent = os.getppid()
    server = TailServer(sources, options).start()
    try:
        _announce(server, table=os.environ.get(WORKER_ENV, "0") == "0")  # one model table for N workers
        while not received:
            stop.wait(timeout=1.0 if worker else None)
            stop.clear()
            if worker and os.getppid() != parent:
                err_console.print("edgeexit serve: the supervisor is gone; stopping", highlight=False)
                break
            if hup.is_set() and not received:
                hup.clear()
                try:
                    models = server.reload()
                except EdgeExitError as err:
                    err_console.print(f"edgeexit serve: SIGHUP: reload failed, still serving the old models: {err}",
                                      highlight=False)  # fmt: skip
                    continue
                err_console.print(f"edgeexit serve: SIGHUP: reloaded, serving {len(models)} models", highlight=False)
        name = signal.Signals(received[0]).name if received else "a signal"
        err_console.print(f"edgeexit serve: {name}: draining (at most {options.grace_s:g} s)", highlight=False)
    finally:
        server.stop(options.grace_s)


def _supervise(
    sources: list[Path],
    options: ServerOptions,
    workers: int,
    token_file: Path | None,
    stop: threading.Event,
    hup: threading.Event,
    received: list[int],
) -> None:
    """``--workers N``: the supervisor of ``edgeexit.server.workers`` until SIGTERM/SIGINT."""
    from edgeexit.server.workers import Supervisor, WorkerPlan

    plan = WorkerPlan(tuple(sources), options, workers, token_file)
    supervisor = Supervisor(plan, say=lambda line: print(line, file=sys.stderr, flush=True)).start()
    try:
        if supervisor.metrics_port is not None:
            err_console.print(
                f"edgeexit serve: metrics on http://{supervisor.host}:{supervisor.metrics_port}/metrics "
                f"(summed over {workers} workers)",
                highlight=False,
            )
        print(f"{SERVE_READY_PREFIX}{supervisor.address}", file=sys.stderr, flush=True)
        while not received:
            stop.wait(timeout=1.0)
            stop.clear()
            if hup.is_set() and not received:
                hup.clear()
                err_console.print(f"edgeexit serve: SIGHUP: reloading {workers} workers", highlight=False)
                supervisor.forward(signal.SIGHUP)
            if not received:
                supervisor.keep_alive()
        name = signal.Signals(received[0]).name if received else "a signal"
        err_console.print(
            f"edgeexit serve: {name}: draining {workers} workers (at most {options.grace_s:g} s)", highlight=False
        )
    finally:
        supervisor.stop()


def _announce(server: TailServer, *, table: bool = True) -> None:
    from edgeexit.console import table as render

    rows = [
        (
            model.name,
            model.version,
            model.codec or "-",
            "; ".join(spec.describe() for spec in model.inputs),
            model.max_batch_size,
            model.max_queue_delay_us,
            (model.package_id or "-")[:12],
        )
        for model in server.models
    ]
    columns = ("model", "version", "codec", "inputs", "max batch", "delay µs", "package_id")
    if table:
        err_console.print(render(f"edgeexit serve: {len(rows)} models", columns, rows))
    security = ["mutual TLS" if server.options.tls_ca else "TLS" if server.tls else "plaintext"]
    if server.options.tokens:
        security.append(f"bearer token ({len(server.options.tokens)} accepted)")
    err_console.print(f"edgeexit serve: {', '.join(security)}", highlight=False)
    if server.metrics_port is not None:
        err_console.print(
            f"edgeexit serve: metrics on http://{server.host}:{server.metrics_port}/metrics", highlight=False
        )
    print(f"{SERVE_READY_PREFIX}{server.address}", file=sys.stderr, flush=True)
