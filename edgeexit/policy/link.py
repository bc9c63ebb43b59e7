"""What the device knows about its uplink: bandwidth, RTT and the server's queue, as EWMAs.

Why an estimator and not a measurement: a policy decides *before* a transfer, so it needs a
belief about the link built from past transfers and light probes. Every transfer (bytes sent,
wall time) and every probe (an RTT) updates an exponentially weighted moving average whose
half-life is counted in samples, so a step change in the link is followed within a few
transfers while one slow outlier moves the estimate by a bounded fraction.

Separating the terms: a transfer's wall time is ``RTT + upload + the server's time``. The server
reports its whole time (the ``server_ms`` response parameter, else ``queue_ms + compute_ms``,
docs/offload.md), which is subtracted first, and the RTT estimate (from probes) next; what is
left is upload time, so ``upload_s / (bytes * 8)`` is a sample of the link's time per bit. The
download of the logits is small and is folded into the RTT.

Why time per bit and not bit/s: what a policy needs is the expected upload time, and the mean of
noisy bandwidth samples overstates the bandwidth (a remainder of 0.01 ms reads as 50x the rate of
one of 0.5 ms). On a fast link the remainder is mostly timing noise around a few microseconds, so
a remainder below zero is kept as the noise it is (skipping it kept only the slow draws); the
estimate is floored at ``MAX_BANDWIDTH_BPS``. The average in time is also the cautious one when a
link changes: it follows a slowdown within a half-life (the slow samples dominate the mean) and a
speed-up over a few (the old slow samples must fade), where averaging rates had it backwards and
kept offloading onto a link 100x slower for several transfers.

Staleness (decided: decay toward a prior, never "unknown"): a policy always needs a number, and
an old estimate is worse than a conservative prior because links change while the device is
idle. An estimate older than ``stale_after_s`` is blended toward the prior with a weight that
halves every ``decay_half_life_s``; once it is fully decayed it equals the prior. The next
sample after a stale period is blended with a weight of at least ``1 - freshness``, so an
entirely stale estimate is replaced by the new sample instead of being dragged by the prior.
``LinkEstimate.fresh`` tells a caller whether the numbers came from recent measurements.

The server's load (``edgeexit.policy.load``): with ``load_feedback`` (the default) the estimator
also keeps the time the server reports a request would take in it (replies and probes) and a
backoff after the server shed a request; ``LinkEstimate.expected_server_ms`` and ``backoff_s``
carry them to the policies. Without it they stay None and 0, as from a server that does not report
them (Triton).

Traffic: the estimator also keeps how often the device is asked for work (``observe_request``,
``LinkEstimate.request_interval_s``), as a geometric EWMA of the time per sample between requests.
It is not a link property, but it decides what the radio costs: offloads that come back to back
keep the radio in its high-power tail and share it (``RadioModel.tail_energy_j``), sparse ones
each pay all of it. Geometric, because intervals span orders of magnitude (10 ms of back-to-back
traffic, an hour idle) and one long pause should not hide the traffic that resumes after it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from edgeexit.errors import UsageError
from edgeexit.policy.load import ServerLoad

#: a conservative default when nothing has been measured: a weak Wi-Fi / LTE uplink
DEFAULT_PRIOR_BANDWIDTH_BPS = 5e6
DEFAULT_PRIOR_RTT_S = 0.05
#: Half-life of the request interval, in requests: what sets an offload's share of the radio's tail
#: is the traffic's steady pace, not one sample's latency (an early exit takes a fraction of a full
#: pass), and at the link's 3 samples the interval jittered across its key's steps on most samples.
TRAFFIC_HALF_LIFE_REQUESTS = 8.0
#: The fastest link an estimate reports: a mean upload time at or below zero is "faster than the
#: timing noise can tell", not an infinitely fast link.
MAX_BANDWIDTH_BPS = 1e11


@dataclass(frozen=True)
class LinkEstimate:
    """The link as the policy sees it at one moment.

    ``age_s`` is the time since the most recent observation (``inf`` before the first one);
    ``samples`` counts the bandwidth samples and probes that built it; ``fresh`` is False when
    any part of the estimate has started decaying toward the prior (or was never measured).
    ``server_queue_ms`` is the server's delay an offload meets beyond the tail compute the costs
    model: its queue, its handling of the request, and compute slower than the profile.
    ``request_interval_s`` is the device's time per sample between requests (``inf`` until two
    requests were seen): with the plan's offload rate it says how far apart offloads come, so how
    much of the radio's tail each one pays. ``expected_server_ms`` is the time the server itself
    expects a request arriving now to take in it, queue and compute (``edgeexit.policy.load``;
    None: no fresh report, or load feedback off); ``server_queue_recent`` says whether replies
    updated ``server_queue_ms`` as recently (``costs.server_time_ms`` weighs the two). ``backoff_s`` is
    how long this device still holds back after the server shed one of its requests (0: none).
    """

    bandwidth_bps: float
    rtt_s: float
    age_s: float = math.inf
    samples: int = 0
    server_queue_ms: float = 0.0
    fresh: bool = False
    request_interval_s: float = math.inf
    expected_server_ms: float | None = None
    backoff_s: float = 0.0
    server_queue_recent: bool = False

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        for name in _INFINITE_WHEN_UNKNOWN:
            raw[name] = None if math.isinf(raw[name]) else raw[name]  # JSON has no infinity
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LinkEstimate:
        values = dict(raw)
        for name in _INFINITE_WHEN_UNKNOWN:
            values[name] = math.inf if values.get(name) is None else float(values[name])
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def fixed(
        cls, bandwidth_bps: float, rtt_s: float, *, server_queue_ms: float = 0.0, request_interval_s: float = math.inf
    ) -> LinkEstimate:
        """A link known exactly (benchmarks with an emulated link, tests, ``best-static`` planning)."""
        return cls(bandwidth_bps, rtt_s, age_s=0.0, samples=1, server_queue_ms=server_queue_ms, fresh=True,
                   request_interval_s=request_interval_s)  # fmt: skip


#: The fields whose "not known" is infinity (``null`` in JSON).
_INFINITE_WHEN_UNKNOWN = ("age_s", "request_interval_s")


class _Ewma:
    """One EWMA with a sample half-life, a timestamp and decay toward a prior when stale."""

    def __init__(self, prior: float, alpha: float, stale_after_s: float, decay_half_life_s: float) -> None:
        self.prior = prior
        self.alpha = alpha
        self.stale_after_s = stale_after_s
        self.decay_half_life_s = decay_half_life_s
        self.value: float | None = None
        self.at: float | None = None
        self.samples = 0

    def freshness(self, now: float) -> float:
        """1 for an estimate younger than ``stale_after_s``, halving every ``decay_half_life_s`` after."""
        if self.value is None or self.at is None:
            return 0.0
        overdue = now - self.at - self.stale_after_s
        return 1.0 if overdue <= 0 else 0.5 ** (overdue / self.decay_half_life_s)

    def current(self, now: float) -> float:
        if self.value is None:
            return self.prior
        weight = self.freshness(now)
        return weight * self.value + (1.0 - weight) * self.prior

    def update(self, sample: float, now: float) -> None:
        if self.value is None:
            self.value = sample
        else:
            weight = max(self.alpha, 1.0 - self.freshness(now))  # a stale estimate yields to new data
            self.value = (1.0 - weight) * self.current(now) + weight * sample
        self.at = now
        self.samples += 1


class LinkEstimator:
    """EWMA estimates of uplink bandwidth (as time per bit), RTT (s) and the server's delay (ms).

    ``half_life_samples``: after that many new samples an old value weighs half. ``clock`` returns
    seconds (monotonic by default) and is injectable so tests control time.
    """

    def __init__(
        self,
        *,
        half_life_samples: float = 3.0,
        stale_after_s: float = 30.0,
        decay_half_life_s: float = 30.0,
        prior_bandwidth_bps: float = DEFAULT_PRIOR_BANDWIDTH_BPS,
        prior_rtt_s: float = DEFAULT_PRIOR_RTT_S,
        load_feedback: bool = True,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if half_life_samples <= 0 or stale_after_s < 0 or decay_half_life_s <= 0:
            raise UsageError("LinkEstimator needs half_life_samples > 0, stale_after_s >= 0 and decay_half_life_s > 0")
        if prior_bandwidth_bps <= 0 or prior_rtt_s < 0:
            raise UsageError("LinkEstimator needs a positive prior bandwidth and a non-negative prior RTT")
        alpha = 1.0 - 0.5 ** (1.0 / half_life_samples)
        self._clock = clock
        self._seconds_per_bit = _Ewma(1.0 / prior_bandwidth_bps, alpha, stale_after_s, decay_half_life_s)
        self._rtt = _Ewma(prior_rtt_s, alpha, stale_after_s, decay_half_life_s)
        self._queue = _Ewma(0.0, alpha, stale_after_s, decay_half_life_s)
        self._last: float | None = None
        self._traffic_alpha = 1.0 - 0.5 ** (1.0 / TRAFFIC_HALF_LIFE_REQUESTS)
        self._log_interval: float | None = None  # log of seconds per sample between requests
        #: Counts the probes and transfers seen: a caller may reuse what it derived from an estimate
        #: while this stands still (and for less than ``stale_after_s``, after which estimates decay).
        self.version = 0
        self._last_request: tuple[float, int] | None = None  # when the last request came, and its samples
        self._gaps = 0
        #: the server's wait and this device's backoff (None: load feedback off; ``seed``: the backoff's draws)
        self.load = ServerLoad(seed=seed, clock=clock) if load_feedback else None

    def observe_request(self, samples: int = 1) -> None:
        """A request of ``samples`` samples arrives (``PolicyRunner`` calls this for each): the time
        since the previous one, per sample of it, updates ``request_interval_s``."""
        if samples < 1:
            raise UsageError(f"a request has at least one sample, got {samples}")
        now = self._clock()
        if self._last_request is not None:
            at, count = self._last_request
            sample = math.log(max(now - at, 1e-6) / count)
            self._gaps += 1
            weight = max(self._traffic_alpha, 1.0 / self._gaps)  # the plain mean of the first few: no bias to the first
            found = self._log_interval
            self._log_interval = sample if found is None else (1.0 - weight) * found + weight * sample
        self._last_request = (now, samples)

    def observe_probe(self, rtt_s: float, expected_server_ms: float | None = None) -> None:
        """A light probe (an empty request, a health check): its round trip is the RTT, and the
        server's expected time when it carried one (``edgeexit serve``'s ServerLive does): a device
        that stopped offloading while the server was busy gets no replies, and hears from its probes
        when the server is free again."""
        if rtt_s < 0 or not math.isfinite(rtt_s):
            raise UsageError(f"a probe's RTT must be a finite number >= 0, got {rtt_s!r}")
        now = self._clock()
        self._rtt.update(rtt_s, now)
        if self.load is not None and expected_server_ms is not None:
            self.load.observe_expected(expected_server_ms)
        self._last = now
        self.version += 1

    def observe_reply(
        self,
        nbytes: int,
        seconds: float,
        *,
        queue_ms: float | None,
        compute_ms: float | None,
        server_ms: float | None = None,
        modelled_compute_ms: float | None = None,
        expected_server_ms: float | None = None,
    ) -> None:
        """One delivered offload as the server reported it (None: it did not say): a transfer
        (``observe_transfer``) whose server delay is the queue, the server's handling (``server_ms``
        beyond queue and compute: parsing, hand-offs, the reply) and the compute beyond what the
        device's costs model for the tail (``modelled_compute_ms``; None: nothing counted), and the
        server's expected time for the next request. The unmodelled compute counts because the
        estimator takes the server's whole time out of a transfer before it reads a bandwidth
        sample: without it a server slower than the profile (a loaded one) would never make an
        offload look dearer."""
        queue, compute = queue_ms or 0.0, compute_ms or 0.0
        whole = server_ms if server_ms is not None else queue + compute
        handling = max(0.0, whole - queue - compute)
        beyond = (
            0.0 if compute_ms is None or modelled_compute_ms is None else max(0.0, compute_ms - modelled_compute_ms)
        )
        self.observe_transfer(nbytes, seconds, server_ms=whole, queue_ms=queue + handling + beyond)
        self.observe_server_expected(expected_server_ms)

    def observe_server_expected(self, expected_ms: float | None) -> None:
        """The server's expected time from a reply (None: it did not say)."""
        if self.load is not None and expected_ms is not None:
            self.load.observe_expected(expected_ms)
            self.version += 1

    def observe_shed(self, expected_ms: float | None = None) -> None:
        """The server shed a request (``OffloadShed``): back off (``edgeexit.policy.load``)."""
        if self.load is not None:
            self.load.observe_shed(expected_ms)
            self.version += 1

    @property
    def backing_off(self) -> bool:
        return self.load is not None and self.load.backoff_s > 0

    def observe_transfer(
        self, nbytes: int, seconds: float, *, server_ms: float = 0.0, queue_ms: float | None = None
    ) -> bool:
        """One offload: ``nbytes`` sent, ``seconds`` from send to reply, ``server_ms`` the server's
        reported time (its ``server_ms``, else queue + compute). ``queue_ms`` (the part of it the
        costs do not model: queue, handling, compute beyond the profile), when given, feeds the
        server delay estimate. Returns whether the transfer yielded a bandwidth sample (it sent bytes)."""
        if nbytes < 0 or seconds < 0 or server_ms < 0:
            raise UsageError("a transfer needs nbytes, seconds and server_ms >= 0")
        now = self._clock()
        self._last = now
        self.version += 1
        if queue_ms is not None:
            self._queue.update(max(queue_ms, 0.0), now)
        if self.load is not None:
            self.load.observe_delivered()
        if nbytes == 0:
            return False
        upload_s = seconds - server_ms / 1000.0 - self._rtt.current(now)  # below 0: noise, kept (module docstring)
        self._seconds_per_bit.update(upload_s / (nbytes * 8.0), now)
        return True

    @property
    def request_interval_s(self) -> float:
        """``LinkEstimate.request_interval_s`` without building an estimate (``inf`` until two requests)."""
        found = self._log_interval
        return math.inf if found is None else math.exp(found)

    def estimate(self) -> LinkEstimate:
        now = self._clock()
        age = math.inf if self._last is None else now - self._last
        fresh = self._seconds_per_bit.freshness(now) == 1.0 and self._rtt.freshness(now) == 1.0
        return LinkEstimate(
            bandwidth_bps=1.0 / max(self._seconds_per_bit.current(now), 1.0 / MAX_BANDWIDTH_BPS),
            rtt_s=self._rtt.current(now),
            age_s=age,
            samples=self._seconds_per_bit.samples + self._rtt.samples,
            server_queue_ms=self._queue.current(now),
            fresh=fresh,
            request_interval_s=math.inf if self._log_interval is None else math.exp(self._log_interval),
            expected_server_ms=None if self.load is None else self.load.expected_ms,
            backoff_s=0.0 if self.load is None else self.load.backoff_s,
            server_queue_recent=self.load is not None
            and self._queue.at is not None
            and now - self._queue.at <= self.load.stale_after_s,
        )
