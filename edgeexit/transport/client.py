"""The device's tail client: ModelInfer over KServe v2 gRPC to one or more tail servers.

Every call has a deadline, and the deadline is the whole request's budget: when a server fails,
the client tries the next healthy address with what is left of it, so one slow server never
costs more than the caller agreed to wait. Addresses are taken round-robin (the load spreads
without any coordination), and each has a circuit breaker so a dead server is skipped at once
instead of costing a deadline per request. Anything that goes wrong, including a reply that does
not decode, surfaces as one ``OffloadError``: the device layer catches it and finishes locally.
Its class says what happened (``OffloadTimeout``, ``ServerUnavailable``, ``OffloadRejected``,
``OffloadShed`` for a server too loaded for the deadline, which does not count on its breaker; a
reply that does not decode is a plain ``OffloadError``).

Each call goes through a ``Transport`` (``edgeexit.transport.rpc``): the real gRPC call by
default, or an ``EmulatedLink`` wrapping it, so link emulation stays out of the client.

grpc and protobuf only (plus numpy through the codecs): no ONNX Runtime, no torch.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc
import numpy as np

from edgeexit.codecs import Encoded
from edgeexit.errors import (
    OffloadError,
    OffloadRejected,
    OffloadShed,
    OffloadTimeout,
    ServerUnavailable,
    UsageError,
)
from edgeexit.transport.breaker import CircuitBreaker, State
from edgeexit.transport.generated import grpc_service_pb2_grpc as pb_grpc
from edgeexit.transport.rpc import GrpcTransport, Transport
from edgeexit.transport.tls import TlsSettings
from edgeexit.transport.wire import SIDE_INPUTS, build_request, parse_reply

#: Default size limit of one message each way: gRPC's own receive default (4 MiB) is smaller than a
#: batch of a mid-size CNN's boundary tensors.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Keepalive pings on an idle connection find a dead peer (a server that vanished behind a NAT or
#: a pulled cable) before a request pays a deadline for it. A server must permit pings this often
#: (grpc.http2.min_recv_ping_interval_without_data_ms <= this, keepalive_permit_without_calls = 1).
KEEPALIVE_S = 30.0
KEEPALIVE_TIMEOUT_S = 10.0
#: Reconnect backoff caps: gRPC's default backoff grows to 120 s, far past a breaker's cool-down.
MAX_RECONNECT_BACKOFF_S = 2.0
#: Every channel balances round-robin over the addresses its name resolves to (gRPC's default,
#: pick_first, sends everything to the first DNS record), so a DNS name with several records
#: spreads the load like a list of addresses; a call that meets UNAVAILABLE (a backend down or
#: draining: nothing was computed) is retried once, on the next backend, within its deadline,
#: so such a name fails over as a list does. grpc's own retry, not a loop here.
SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": "inference.GRPCInferenceService"}],
                "retryPolicy": {
                    "maxAttempts": 2,
                    "initialBackoff": "0.01s",
                    "maxBackoff": "0.05s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)


class Probe(NamedTuple):
    """A ServerLive round trip that was answered: by whom, how long it took, and the server's
    expected time for a request in ms (None where the server does not say, e.g. Triton)."""

    address: str
    rtt_s: float
    expected_server_ms: float | None = None


@dataclass(frozen=True, eq=False)
class TailReply:
    """A tail's answer: ``logits`` ``(N, classes)`` from ``server``; ``bytes_sent`` counts the request
    bytes of every attempt, ``transfer_ms`` the wall time from the first attempt to the reply;
    ``queue_ms`` / ``compute_ms`` / ``server_ms`` / ``expected_server_ms`` what the server reported
    (``wire.TailAnswer``)."""

    logits: np.ndarray
    server: str
    bytes_sent: int
    transfer_ms: float
    queue_ms: float | None
    compute_ms: float | None
    attempts: int
    server_ms: float | None = None
    expected_server_ms: float | None = None


class TailClient:
    """ModelInfer to tail servers with a deadline, round-robin, failover and circuit breakers.

    ``addresses``: ``host:port`` strings (one or more). ``timeout_s``: the deadline of a whole
    ``infer`` call, failover included. ``token``: sent as ``authorization: Bearer <token>``.
    ``tls``: a TlsSettings (None: plaintext). ``failures_to_open`` consecutive failures open an
    address's breaker for ``cooldown_s``. ``keepalive_s``: ping interval on idle connections (None:
    no pings, for servers that refuse them, e.g. Triton with its defaults). ``side_inputs``:
    ``"parameters"`` (edgeexit's server) or ``"tensors"`` (Triton, KServe): how an int8 payload's
    scale and zero point travel (see ``wire.build_request``). ``transport``: how each call goes
    out (``edgeexit.transport.rpc``; None: the real gRPC call); pass an ``EmulatedLink`` to send
    every attempt over an emulated link (``edgeexit.transport.link_emulation``).
    Thread-safe: one client may serve many threads.
    """

    def __init__(
        self,
        addresses: str | Sequence[str],
        *,
        timeout_s: float = 1.0,
        token: str | None = None,
        tls: TlsSettings | None = None,
        failures_to_open: int = 3,
        cooldown_s: float = 5.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        keepalive_s: float | None = KEEPALIVE_S,
        side_inputs: str = "parameters",
        clock: Callable[[], float] = time.monotonic,
        transport: Transport | None = None,
    ) -> None:
        listed = [addresses] if isinstance(addresses, str) else list(addresses)
        self.addresses: tuple[str, ...] = tuple(dict.fromkeys(a.strip() for a in listed))
        if not self.addresses or any(not _looks_like_address(a) for a in self.addresses):
            raise UsageError(
                f"tail server addresses {list(listed)!r} are not usable; expected one or more HOST:PORT "
                "(e.g. 127.0.0.1:8001 or [::1]:8001)"
            )
        if not timeout_s > 0:
            raise UsageError(f"timeout_s is {timeout_s}; expected a deadline above 0 seconds")
        if side_inputs not in SIDE_INPUTS:
            raise UsageError(f"side_inputs is {side_inputs!r}; expected one of {', '.join(SIDE_INPUTS)}")
        if keepalive_s is not None and not keepalive_s > 0:
            raise UsageError(f"keepalive_s is {keepalive_s}; expected seconds above 0, or None for no pings")
        token = token.strip() if token is not None else None  # a token file's trailing newline is not part of it
        if token is not None and (not token or any(c in token for c in "\r\n")):
            raise UsageError("the bearer token is empty or spans lines; expected one line of text")
        self.timeout_s = float(timeout_s)
        self.max_message_bytes = int(max_message_bytes)
        self.side_inputs = side_inputs
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._credentials = tls.credentials() if tls is not None else None
        self._server_name = tls.server_name if tls is not None else None
        self._keepalive_s = keepalive_s
        self._clock = clock
        self.transport: Transport = transport if transport is not None else GrpcTransport()
        self._lock = threading.Lock()
        self._turn = 0
        self.breakers = {a: CircuitBreaker(failures_to_open=failures_to_open, cooldown_s=cooldown_s, clock=clock)
                         for a in self.addresses}  # fmt: skip
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, pb_grpc.GRPCInferenceServiceStub] = {}
        self._closed = False

    # ---------------------------------------------------------------- the call

    def infer(self, model: str, encoded: Encoded, *, package_id: str, classes: int | None = None) -> TailReply:
        """Send one encoded batch to ``model`` and return its logits, or raise OffloadError
        (the subclass of the attempts' most telling failure: see ``_failure``)."""
        request = build_request(model, encoded, package_id=package_id, side_inputs=self.side_inputs)
        size = request.ByteSize()
        samples = int(encoded.data.shape[0])
        if size > self.max_message_bytes:
            raise OffloadError(
                f"the request for {model} is {size:,} bytes; the limit is {self.max_message_bytes:,}: send fewer "
                "samples per request or raise max_message_bytes (the server's limit must allow it too)"
            )
        started = self._clock()
        deadline = started + self.timeout_s
        failures: list[_Failure] = []
        attempts = 0
        for address in self._order():
            remaining = deadline - self._clock()
            if remaining <= 0:
                failures.append(
                    _Failure(f"{address}: not tried, the {self._budget()} deadline was spent", OffloadTimeout)
                )
                break
            breaker = self.breakers[address]
            if not breaker.allow():
                failures.append(_Failure(f"{address}: circuit open after repeated failures, next probe in "
                                         f"{breaker.retry_in():.1f} s", ServerUnavailable))  # fmt: skip
                continue
            attempts += 1
            try:
                reply = self.transport.model_infer(
                    self._stub(address), request, timeout_s=remaining, metadata=self._metadata
                )
                answer = parse_reply(reply, samples=samples, classes=classes)
            except OffloadShed as err:  # alive but full: not the breaker's business (the policies back off)
                failures.append(_Failure(f"{address}: {err}", OffloadShed, err.code, err.expected_server_ms))
                continue
            except OffloadError as err:
                breaker.record_failure()
                failures.append(_Failure(f"{address}: {err}", type(err), getattr(err, "code", None)))
                continue
            except Exception as err:  # anything else from gRPC or protobuf: still a failed attempt
                breaker.record_failure()
                failures.append(_Failure(f"{address}: {type(err).__name__}: {err}", OffloadError))
                continue
            breaker.record_success()
            return TailReply(
                logits=answer.logits,
                server=address,
                bytes_sent=size * attempts,
                transfer_ms=(self._clock() - started) * 1e3,
                queue_ms=answer.queue_ms,
                compute_ms=answer.compute_ms,
                attempts=attempts,
                server_ms=answer.server_ms,
                expected_server_ms=answer.expected_server_ms,
            )
        message = f"offload of {samples} sample(s) to {model} failed: " + "; ".join(
            [f.text for f in failures] or ["no server address"]
        )
        cost: dict[str, Any] = {
            "attempts": attempts,
            "bytes_sent": size * attempts,
            "transfer_ms": (self._clock() - started) * 1e3,
        }
        kind, code = _failure(failures)
        if kind is OffloadShed:
            waits = [f.expected_server_ms for f in failures if f.expected_server_ms is not None]
            raise OffloadShed(message, code=code, expected_server_ms=min(waits, default=None), **cost)
        if kind is OffloadRejected:
            raise OffloadRejected(message, code=code, **cost)
        raise kind(message, **cost)

    def live(self, timeout_s: float) -> Probe | None:
        """One ServerLive round trip to the next address the breakers allow: a ``Probe`` (address, RTT
        in seconds, the server's expected time), or None when none answered. A light probe for link
        estimates: it goes through the transport like an offload (an emulated link delays it too),
        and a failure counts on that address's breaker as a failed offload would."""
        for address in self._order():
            breaker = self.breakers[address]
            if not breaker.allow():
                continue
            started = self._clock()
            try:
                wait_ms = self.transport.server_live(self._stub(address), timeout_s=timeout_s, metadata=self._metadata)
            except (grpc.RpcError, OffloadError):
                breaker.record_failure()
                continue
            breaker.record_success()
            return Probe(address, self._clock() - started, wait_ms)
        return None

    def _order(self) -> list[str]:
        """Every address once, starting one further along on each request (round-robin)."""
        with self._lock:
            turn = self._turn
            self._turn = (turn + 1) % len(self.addresses)
        return [*self.addresses[turn:], *self.addresses[:turn]]

    def _budget(self) -> str:
        return f"{self.timeout_s * 1e3:.0f} ms"

    # ---------------------------------------------------------------- channels

    def _stub(self, address: str) -> pb_grpc.GRPCInferenceServiceStub:
        """The address's stub. A half-open breaker's probe gets a fresh channel: the old one may sit
        in gRPC's reconnect backoff and would fail the probe without dialling the server at all."""
        with self._lock:
            if self._closed:
                raise ServerUnavailable("the client is closed")
            probing = self.breakers[address].state == "half_open"
            if probing or address not in self._stubs:
                old = self._channels.pop(address, None)
                if old is not None:
                    old.close()
                channel = self._open(address)
                self._channels[address] = channel
                self._stubs[address] = pb_grpc.GRPCInferenceServiceStub(channel)
            return self._stubs[address]

    def _open(self, address: str) -> grpc.Channel:
        options: list[tuple[str, int | str]] = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", int(MAX_RECONNECT_BACKOFF_S * 1000)),
            # a name with several addresses (DNS records, or ipv4:a:p,b:q) spreads and fails over as a list does
            ("grpc.service_config", SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
        ]
        if self._keepalive_s is not None:
            options += [
                ("grpc.keepalive_time_ms", int(self._keepalive_s * 1000)),
                ("grpc.keepalive_timeout_ms", int(KEEPALIVE_TIMEOUT_S * 1000)),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.max_pings_without_data", 0),
            ]
        if self._credentials is None:
            return grpc.insecure_channel(address, options=options)
        if self._server_name:
            options.append(("grpc.ssl_target_name_override", self._server_name))
        return grpc.secure_channel(address, self._credentials, options=options)

    # ---------------------------------------------------------------- state and lifetime

    def states(self) -> dict[str, State]:
        """Each address's breaker state: closed, open or half_open."""
        return {address: breaker.state for address, breaker in self.breakers.items()}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
            self._stubs.clear()

    def __enter__(self) -> TailClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TailClient({list(self.addresses)!r}, timeout_s={self.timeout_s})"


@dataclass(frozen=True)
class _Failure:
    """One address's failure within an ``infer`` call: its line of the message, and its kind."""

    text: str
    kind: type[OffloadError]
    code: Any = None
    expected_server_ms: float | None = None


def _failure(failures: Sequence[_Failure]) -> tuple[type[OffloadError], Any]:
    """The class (and status code) of a failed ``infer``, from its attempts' failures: what says the
    most about the request wins. A server's answer (rejected, then too loaded, then a reply that does
    not decode) over silence (no reply in time, or the deadline spent before trying) over absence
    (refused, down, circuit open): with one server slow and the other down, waiting longer may work."""
    for kind in (OffloadRejected, OffloadShed, OffloadError, OffloadTimeout):
        found = [f for f in failures if f.kind is kind]
        if found:
            return kind, found[-1].code
    return ServerUnavailable, None


def _looks_like_address(address: str) -> bool:
    """HOST:PORT (an IPv6 host in brackets), or a gRPC target with a scheme (unix:/path, dns:///h:p)."""
    if address.startswith(("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:")):
        return True
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit())
