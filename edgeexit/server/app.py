"""``TailServer``: build, start and stop a tail server; what ``edgeexit serve`` and tests run.

The server is ``grpc.aio`` on an event loop in a thread of its own, so the same object serves
a CLI process, a test or an application with sync code: ``start()`` returns once the port is
bound (``listen`` port 0 picks an ephemeral one, exposed as ``.port``) and ``stop(grace)``
returns once it has drained. Draining, in order: readiness and grpc.health.v1 turn NOT_SERVING,
new calls are refused with UNAVAILABLE and the reason while queued and running ones finish, the
server waits for a quiet moment (``edgeexit.kserve.drain``: grpc's own shutdown would answer a call
arriving then with a bare CANCELLED), and only then stops grpc; calls still running after
``grace`` seconds are cancelled.

Message sizes: a ModelInfer request larger than ``max_message_bytes`` is answered
INVALID_ARGUMENT with the limit in the message. grpc's own receive limit sits above that
(``transport_limit``: twice the limit, at least 4 MiB more), so that answer is possible; a message
beyond it is refused by grpc itself with RESOURCE_EXHAUSTED before any edgeexit code runs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from edgeexit.errors import ServerError
from edgeexit.server.auth import BearerTokenInterceptor
from edgeexit.server.batching import Batcher
from edgeexit.server.metrics import ServerMetrics
from edgeexit.server.models import ModelSet, load_models
from edgeexit.server.reflection import enable_reflection
from edgeexit.server.service import SERVICE, InferenceService
from edgeexit.server.tls import server_credentials
from edgeexit.signing import TrustedKeys

MIB = 1 << 20
DEFAULT_LISTEN = "127.0.0.1:8001"
DEFAULT_MAX_MESSAGE_BYTES = 64 * MIB
DEFAULT_MAX_QUEUE = 256
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


@dataclass(frozen=True)
class ServerOptions:
    """Everything ``edgeexit serve`` takes besides the repositories; None keeps config.pbtxt's value."""

    listen: str = DEFAULT_LISTEN
    max_batch_size: int | None = None
    max_queue_delay_us: int | None = None
    max_queue: int = DEFAULT_MAX_QUEUE  # waiting requests per model before RESOURCE_EXHAUSTED
    threads: int = 1  # ONNX Runtime intra-op threads per session
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None  # given: mutual TLS, clients must present a certificate it signed
    tokens: tuple[str, ...] = ()  # given: bearer-token auth (see edgeexit.server.auth)
    metrics_port: int | None = None  # given: Prometheus /metrics on the listen host (0: ephemeral)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    grace_s: float = 10.0
    trusted_keys: tuple[Path, ...] = ()  # given: serve signed packages only (edgeexit.signing)
    shed: bool = True  # answer RESOURCE_EXHAUSTED at once when the expected time would pass a request's deadline
    reuse_port: bool = False  # SO_REUSEPORT: one of ``serve --workers N``'s processes (edgeexit.server.workers)


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8001`` for IPv6) → (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ServerError(f"--listen {listen!r} is not HOST:PORT; expected e.g. 127.0.0.1:8001 or [::1]:8001")
    return host, int(port)


def transport_limit(max_message_bytes: int) -> int:
    return min(max_message_bytes + max(max_message_bytes, 4 * MIB), 2**31 - 1)


def grpc_options(max_message_bytes: int, *, reuse_port: bool = False) -> list[tuple[str, int]]:
    return [
        # a taken port is an error, not a silently shared one; but --workers N share theirs on purpose
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.max_receive_message_length", transport_limit(max_message_bytes)),
        ("grpc.max_send_message_length", transport_limit(max_message_bytes)),
        # devices keep channels open between offloads: ping idle ones, let them ping us every 10 s
        ("grpc.keepalive_time_ms", 120_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 2),
    ]


class TailServer:
    """A tail server over the given packages / repositories; see the module docstring."""

    def __init__(
        self,
        sources: Sequence[str | Path] = (),
        options: ServerOptions | None = None,
        *,
        models: ModelSet | None = None,
    ) -> None:
        self.options = options or ServerOptions()
        self.host, requested_port = parse_listen(self.options.listen)
        self._requested_port = requested_port
        if self.options.max_queue < 1 or self.options.max_message_bytes < 1 or self.options.threads < 1:
            raise ServerError("max_queue, max_message_bytes and threads must be >= 1")
        self._credentials = server_credentials(self.options.tls_cert, self.options.tls_key, self.options.tls_ca)
        self.sources = tuple(Path(s) for s in sources)
        self.models = models or self._load()
        self.metrics = ServerMetrics()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.batchers: dict[str, Batcher] = {}
        self._service: InferenceService | None = None
        self._health: HealthServicer | None = None
        self._server: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _load(self) -> ModelSet:
        """Every source's models, packages verified (and their signatures, given trusted keys)."""
        return load_models(
            self.sources,
            threads=self.options.threads,
            max_batch_size=self.options.max_batch_size,
            max_queue_delay_us=self.options.max_queue_delay_us,
            trusted_keys=TrustedKeys.load(self.options.trusted_keys) if self.options.trusted_keys else None,
        )

    def reload(self) -> ModelSet:
        """Load the sources again (SIGHUP) and serve the new models from the next request on; the old
        ones finish what they queued. Loading happens here, before anything changes: a package that
        fails its hashes, signature or warm-up raises, and the old models keep serving."""
        if self._loop is None or self._service is None:
            raise ServerError("reload() needs a started TailServer")
        models = self._load()
        asyncio.run_coroutine_threadsafe(self._swap(models), self._loop).result()
        return models

    async def _swap(self, models: ModelSet) -> None:
        """On the loop, between two requests: handlers look up a model and its batcher without
        yielding in between, so each request meets either the old pair or the new one."""
        assert self._service is not None
        old = self.batchers
        fresh = self._batchers(models)
        for batcher in fresh.values():
            batcher.start()
        self.models, self.batchers = models, fresh
        self._service.models, self._service.batchers = models, fresh
        for batcher in old.values():
            batcher.hurry()
        await asyncio.gather(*(batcher.close(timeout=self.options.grace_s) for batcher in old.values()))

    def _batchers(self, models: ModelSet) -> dict[str, Batcher]:
        return {
            model.key: Batcher(
                model.name,
                model.run,
                version=str(model.version),
                max_batch_size=model.max_batch_size,
                max_queue_delay_us=model.max_queue_delay_us,
                max_queue=self.options.max_queue,
                instances=model.instances,
                on_batch=self.metrics.batch,
                on_depth=self.metrics.depth,
                on_shed=self.metrics.shed_one,
                shed_late=self.options.shed,
            )
            for model in models
        }

    @property
    def address(self) -> str:
        """``HOST:PORT`` as bound (the real port when 0 was asked for)."""
        return f"{self.host}:{self.port if self.port is not None else self._requested_port}"

    @property
    def tls(self) -> bool:
        return self._credentials is not None

    def start(self) -> TailServer:
        if self._loop is not None:
            raise ServerError("this TailServer was already started; create a new one")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="edgeexit-serve", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()
            if self.options.metrics_port is not None:
                self.metrics_port = self.metrics.start_http(self.host.strip("[]"), self.options.metrics_port)
        except BaseException:
            self.stop(grace=0)
            raise
        return self

    def stop(self, grace: float | None = None) -> None:
        """Drain (see the module docstring) for at most ``grace`` seconds (default: options.grace_s)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        grace = self.options.grace_s if grace is None else grace
        try:
            asyncio.run_coroutine_threadsafe(self._stop(grace), loop).result()
        finally:
            asyncio.run_coroutine_threadsafe(_cancel_leftovers(), loop).result()
            self.metrics.stop_http()
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    def __enter__(self) -> TailServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    async def _start(self) -> None:
        interceptors = []
        if self.options.tokens:
            interceptors.append(
                BearerTokenInterceptor(
                    self.options.tokens, on_denied=lambda method: self.metrics.errors.labels("UNAUTHENTICATED").inc()
                )
            )
        server = grpc.aio.server(
            options=grpc_options(self.options.max_message_bytes, reuse_port=self.options.reuse_port),
            interceptors=interceptors,
        )
        self.batchers = self._batchers(self.models)
        self._service = InferenceService(
            self.models, self.batchers, self.metrics, max_message_bytes=self.options.max_message_bytes
        )
        self._service.register(server)
        self._health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        enable_reflection(server, [SERVICE, HEALTH_SERVICE])
        address = f"{self.host}:{self._requested_port}"
        try:
            if self._credentials is not None:
                port = server.add_secure_port(address, self._credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError:
            port = 0
        if not port:
            raise ServerError(
                f"cannot listen on {address}: the port is in use or the address is not one of this machine's; "
                "pick another --listen"
            )
        self._server = server
        for batcher in self.batchers.values():
            batcher.start()
        await server.start()
        self.port = port
        for service in ("", SERVICE):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._service.ready = True

    async def _stop(self, grace: float) -> None:
        """The drain of the module docstring, within ``grace`` seconds in all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace

        def remaining() -> float:
            return max(deadline - loop.time(), 0.0)

        if self._service is not None:
            self._service.ready = False
            self._service.drain.begin("shutting down")
        for batcher in self.batchers.values():
            batcher.hurry()
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._service is not None:  # running calls finish through the open batchers; new ones are told why
            await self._service.drain.settle(remaining())
        await asyncio.gather(*(batcher.close(timeout=remaining()) for batcher in self.batchers.values()))
        if self._server is not None:  # idle by now unless grace ran out: grpc cancels what is left
            await self._server.stop(remaining())


async def _cancel_leftovers() -> None:
    """What ``asyncio.run`` does before closing a loop: cancel tasks still pending (calls grpc gave
    up on after the grace period) and let them unwind, so none is destroyed mid-flight."""
    current = asyncio.current_task()
    leftovers = [task for task in asyncio.all_tasks() if task is not current]
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()
