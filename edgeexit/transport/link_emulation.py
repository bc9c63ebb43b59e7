"""An emulated uplink in the client path: bandwidth, RTT, jitter and loss, deterministic under a seed.

``LinkSpec.parse("20mbit,10ms,jitter=2ms,loss=0.01")`` describes a link; ``EmulatedLink(spec, seed)``
turns each request into a delay to add and a lost/not-lost verdict. It is a transport
(``edgeexit.transport.rpc``) wrapping another one, the real gRPC call by default:
``TailClient(address, transport=EmulatedLink(spec, seed))`` sleeps that delay around each real call
(on loopback the real call costs next to nothing, so the emulated link dominates).

The model, per request of ``B`` bytes (one attempt):

- The uplink is serialized: bandwidth is shared, so a request starts transmitting when the link is
  next free (``queue_s``, back-to-back requests queue behind each other) and transmits for
  ``B * 8 / bandwidth`` (``upload_s``).
- Then one RTT (propagation both ways), plus a jitter drawn uniformly from ``[-jitter, +jitter]``
  (never making the RTT negative).
- The reply comes back over the downlink at ``downlink`` bit/s when the spec sets one
  (``down=50mbit``); by default the downlink is not modelled (logits are tiny, folded into the RTT).

Loss (decided): a lost request behaves like a request whose reply never comes. The client waits
out what is left of its deadline for that attempt and records it as a failed attempt
(``DEADLINE_EXCEEDED``, an ``OffloadTimeout``): the breaker counts it, the client fails over to
the next address if any budget is left, and otherwise raises (``OffloadTimeout`` when every
attempt was lost or late), so the device finishes the sample locally (``OffloadRunner``'s
fallback). The lost request's bytes still occupied the uplink.

Everything random comes from one ``numpy.random.Generator`` seeded with ``seed``, drawn in request
order, so the same seed and the same request sequence give the same delays and losses. ``clock``
and ``sleep`` are injectable so tests run without waiting.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgeexit.errors import OffloadTimeout, UsageError
from edgeexit.transport.generated import grpc_service_pb2 as pb
from edgeexit.transport.generated import grpc_service_pb2_grpc as pb_grpc
from edgeexit.transport.rpc import GrpcTransport, Metadata, Transport

_RATE_UNITS = {
    "bit": 1.0, "bps": 1.0, "kbit": 1e3, "kbps": 1e3, "mbit": 1e6, "mbps": 1e6, "gbit": 1e9, "gbps": 1e9,
}  # fmt: skip
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_EXPECTED = (
    "expected BANDWIDTH,RTT[,jitter=TIME][,loss=FRACTION][,down=BANDWIDTH], e.g. '20mbit,10ms' or "
    "'1mbit,50ms,jitter=5ms,loss=0.01' (bandwidth units: bit, kbit, mbit, gbit; time units: s, ms, us)"
)


def parse_rate(text: str) -> float:
    """``'20mbit'`` -> 20e6 bit/s (tc's spelling; ``mbps`` means megabits too)."""
    match = re.fullmatch(_NUMBER + r"\s*([a-z]+)", text.strip().lower())
    if not match or match.group(2) not in _RATE_UNITS:
        raise UsageError(f"bandwidth {text!r} is not a rate; expected a number and a unit, e.g. 20mbit or 500kbit")
    value = float(match.group(1)) * _RATE_UNITS[match.group(2)]
    if not value > 0:
        raise UsageError(f"bandwidth {text!r} is not above 0; expected a positive rate, e.g. 20mbit")
    return value


def parse_time(text: str) -> float:
    """``'10ms'`` -> 0.01 s."""
    match = re.fullmatch(_NUMBER + r"\s*([a-z]+)", text.strip().lower())
    if not match or match.group(2) not in _TIME_UNITS:
        raise UsageError(f"time {text!r} is not a duration; expected a number and a unit, e.g. 10ms, 0.5s, 200us")
    return float(match.group(1)) * _TIME_UNITS[match.group(2)]


def format_rate(bps: float) -> str:
    for unit, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if bps >= scale:
            return f"{bps / scale:g}{unit}"
    return f"{bps:g}bit"


@dataclass(frozen=True)
class LinkSpec:
    """An emulated link: uplink ``bandwidth_bps``, round trip ``rtt_s``, uniform ``jitter_s`` (+-),
    ``loss`` (fraction of requests lost), ``downlink_bps`` (None: the reply is not modelled)."""

    bandwidth_bps: float
    rtt_s: float
    jitter_s: float = 0.0
    loss: float = 0.0
    downlink_bps: float | None = None

    def __post_init__(self) -> None:
        if not self.bandwidth_bps > 0:
            raise UsageError(f"link bandwidth is {self.bandwidth_bps}; expected bit/s above 0")
        if self.rtt_s < 0 or self.jitter_s < 0:
            raise UsageError(f"link RTT {self.rtt_s} s and jitter {self.jitter_s} s must be >= 0")
        if not 0.0 <= self.loss < 1.0:
            raise UsageError(f"link loss is {self.loss}; expected a fraction in [0, 1), e.g. loss=0.01")
        if self.downlink_bps is not None and not self.downlink_bps > 0:
            raise UsageError(f"link downlink is {self.downlink_bps}; expected bit/s above 0")

    @classmethod
    def parse(cls, text: str) -> LinkSpec:
        """``"20mbit,10ms[,jitter=2ms][,loss=0.01][,down=50mbit]"``; a bad spec says what was expected."""
        parts = [p.strip() for p in str(text).split(",")]
        if len(parts) < 2 or any(not p for p in parts):
            raise UsageError(f"link {text!r} is not a link spec; {_EXPECTED}")
        try:
            bandwidth = parse_rate(parts[0])
            rtt = parse_time(parts[1])
            extra: dict[str, float] = {}
            for part in parts[2:]:
                key, sep, value = part.partition("=")
                key = key.strip().lower()
                if not sep or key in extra:
                    raise UsageError(f"{part!r} is not a KEY=VALUE option (or repeats one)")
                if key == "jitter":
                    extra["jitter_s"] = parse_time(value)
                elif key == "loss":
                    loss = value.strip()
                    try:
                        extra["loss"] = float(loss[:-1]) / 100 if loss.endswith("%") else float(loss)
                    except ValueError:
                        raise UsageError(f"loss {value!r} is not a fraction (0.01) or a percentage (1%)") from None
                elif key in ("down", "downlink"):
                    extra["downlink_bps"] = parse_rate(value)
                else:
                    raise UsageError(f"unknown link option {key!r}; known: jitter, loss, down")
            return cls(bandwidth, rtt, **extra)
        except UsageError as err:
            raise UsageError(f"link {text!r}: {err}; {_EXPECTED}") from None

    def transfer_s(self, request_bytes: int, reply_bytes: int = 0) -> float:
        """The deterministic part of one request on an idle link: upload + RTT (+ download)."""
        seconds = request_bytes * 8.0 / self.bandwidth_bps + self.rtt_s
        if self.downlink_bps is not None:
            seconds += reply_bytes * 8.0 / self.downlink_bps
        return seconds

    def __str__(self) -> str:
        text = f"{format_rate(self.bandwidth_bps)},{self.rtt_s * 1e3:g}ms"
        if self.jitter_s:
            text += f",jitter={self.jitter_s * 1e3:g}ms"
        if self.loss:
            text += f",loss={self.loss:g}"
        if self.downlink_bps is not None:
            text += f",down={format_rate(self.downlink_bps)}"
        return text


@dataclass(frozen=True)
class Transfer:
    """One request's fate on the link: ``delay_s`` = ``queue_s + upload_s + rtt_s`` (the RTT
    includes the jitter drawn for it) before the reply may arrive; ``download_s`` after it; ``lost``
    whether it never arrives."""

    queue_s: float
    upload_s: float
    rtt_s: float
    download_s: float
    lost: bool

    @property
    def delay_s(self) -> float:
        return self.queue_s + self.upload_s + self.rtt_s

    @property
    def total_s(self) -> float:
        return self.delay_s + self.download_s


class EmulatedLink:
    """A link's state: when the uplink is next free, and its seeded random stream; and a transport
    that sends each call over it through ``inner`` (None: the real gRPC call).

    ``transmit(request_bytes)`` books the uplink for one request and returns its ``Transfer``;
    ``download_s(reply_bytes)`` is the reply's time on the downlink. ``model_infer`` and
    ``server_live`` (the ``Transport`` protocol) sleep those around ``inner``'s call, within its
    deadline. Thread-safe: requests from several threads share the one uplink and queue in the
    order they book it.
    """

    def __init__(
        self,
        spec: LinkSpec | str,
        seed: int = 0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        inner: Transport | None = None,
    ) -> None:
        self.spec = LinkSpec.parse(spec) if isinstance(spec, str) else spec
        self.inner: Transport = inner if inner is not None else GrpcTransport()
        self.seed = seed
        self.clock = clock
        self.sleep = sleep
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._free_at = -float("inf")
        self.requests = 0
        self.lost = 0
        self.bytes_sent = 0

    def transmit(self, request_bytes: int) -> Transfer:
        if request_bytes < 0:
            raise UsageError(f"request_bytes must be >= 0, got {request_bytes}")
        spec = self.spec
        with self._lock:
            # draw both numbers for every request, so one request's loss never shifts the next one's jitter
            jitter = float(self._rng.uniform(-1.0, 1.0)) * spec.jitter_s
            lost = bool(self._rng.random() < spec.loss)
            now = self.clock()
            start = max(now, self._free_at)
            upload = request_bytes * 8.0 / spec.bandwidth_bps
            self._free_at = start + upload
            self.requests += 1
            self.lost += int(lost)
            self.bytes_sent += request_bytes
        return Transfer(
            queue_s=start - now, upload_s=upload, rtt_s=max(0.0, spec.rtt_s + jitter), download_s=0.0, lost=lost
        )

    def download_s(self, reply_bytes: int) -> float:
        if self.spec.downlink_bps is None:
            return 0.0
        return reply_bytes * 8.0 / self.spec.downlink_bps

    # ---------------------------------------------------------------- as a transport

    def model_infer(
        self,
        stub: pb_grpc.GRPCInferenceServiceStub,
        request: pb.ModelInferRequest,
        *,
        timeout_s: float,
        metadata: Metadata,
    ) -> pb.ModelInferResponse:
        """One attempt over the link: its delay slept before the inner call (the reply's download
        after it), all within ``timeout_s``; a lost request waits out ``timeout_s`` and times out."""
        transfer = self.transmit(request.ByteSize())
        if transfer.lost or transfer.delay_s >= timeout_s:
            self.sleep(timeout_s)
            why = "the request was lost" if transfer.lost else f"its delay is {transfer.delay_s * 1e3:.0f} ms"
            raise OffloadTimeout(f"DEADLINE_EXCEEDED: no reply within {timeout_s * 1e3:.0f} ms (emulated link: {why})")
        self.sleep(transfer.delay_s)
        reply = self.inner.model_infer(
            stub, request, timeout_s=max(timeout_s - transfer.delay_s, 1e-3), metadata=metadata
        )
        download = self.download_s(reply.ByteSize())
        if download:
            if transfer.delay_s + download >= timeout_s:
                self.sleep(max(timeout_s - transfer.delay_s, 0.0))
                raise OffloadTimeout(f"DEADLINE_EXCEEDED: no reply within {timeout_s * 1e3:.0f} ms (emulated downlink)")
            self.sleep(download)
        return reply

    def server_live(
        self, stub: pb_grpc.GRPCInferenceServiceStub, *, timeout_s: float, metadata: Metadata
    ) -> float | None:
        """A liveness probe over the link: its (tiny) request queues and travels like any other."""
        transfer = self.transmit(pb.ServerLiveRequest().ByteSize())
        if transfer.lost or transfer.delay_s >= timeout_s:
            self.sleep(timeout_s)
            raise OffloadTimeout("the probe was lost or slower than its deadline on the emulated link")
        self.sleep(transfer.delay_s)
        return self.inner.server_live(stub, timeout_s=timeout_s, metadata=metadata)

    def reset(self) -> None:
        """Back to an idle link and the start of the seeded stream."""
        with self._lock:
            self._rng = np.random.default_rng(self.seed)
            self._free_at = -float("inf")
            self.requests = self.lost = self.bytes_sent = 0

    def __repr__(self) -> str:
        return f"EmulatedLink({str(self.spec)!r}, seed={self.seed})"
