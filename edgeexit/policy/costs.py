"""Expected latency and device energy of finishing an inference locally or offloading it.

Why expectations: a sample that reaches boundary k may still exit at a later exit, so the cost
of "finish locally" is not the sum of the remaining segments but that sum weighted by the chance
of reaching each one. The calibration record measures ``P(exit at j)`` over all samples; a policy
deciding at boundary k knows the sample did *not* exit at 0..k, so it uses the conditional
``P(reach segment j | survived k) = S(j-1) / S(k)`` with ``S(k) = 1 - sum_{i<=k} P(exit at i)``.

Boundaries: boundary k is the end of segment k *after* its exit was checked (the engine's
``run_until(k)`` applies exits up to and including k). Offloading at k sends boundary k's encoded
tensor to the tail ``__from_k``, which runs segments k+1..n-1; k = n-1 has nothing to offload.
Boundary -1 stands for "before segment 0" (every sample is there), which turns the same formula
into the whole-inference cost of a static plan.

Offload cost (one sample, its share of nothing else): latency = RTT + bytes*8/bandwidth + the
server's time (the tail's profiled compute + the queue the replies measured, or, while the server
reports it, ``LinkEstimate.expected_server_ms``: the time it expects, queue and compute). Device
energy = radio energy for the upload (transmit power ``tx_base_w + tx_w_per_mbps * Mbit/s`` over
the upload time, plus the radio's tail energy after it) + the device's idle power over the whole
wait (RTT, upload, server): the radio model is power on top of the idle baseline, and the device
idles while the server works.

The tail is charged at the plan's steady state, not at the radio's state right now: a plan that
offloads at k sends a share ``S(k)`` of the samples, so with the device asked for a sample every
``LinkEstimate.request_interval_s`` its offloads come ``interval / S(k)`` apart, and each one
extends the running tail by that much (``RadioModel.tail_energy_j``), or pays all of it when they
come further apart than the tail lasts. Charging the radio's state now instead (the time since
its last use) made an idle radio's first offload pay the whole tail, so a policy that had been
local stayed local on links where the steady offloading plan used ~half the energy (measured,
docs/benchmarks.md: adaptive/energy 1.11-2.05x the energy oracle on the fast near links).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from edgeexit.errors import PackageError, UsageError
from edgeexit.manifest import Manifest
from edgeexit.policy.link import LinkEstimate

_EPS = 1e-12


@dataclass(frozen=True)
class Cost:
    """An expected cost: latency in milliseconds, device energy in joules."""

    latency_ms: float
    energy_j: float

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.latency_ms + other.latency_ms, self.energy_j + other.energy_j)

    def scaled(self, factor: float) -> Cost:
        return Cost(self.latency_ms * factor, self.energy_j * factor)


ZERO = Cost(0.0, 0.0)


@dataclass(frozen=True)
class RadioModel:
    """Uplink power as plain numbers (presets with sources live in ``edgeexit.profile.radio``).

    Transmit power is ``tx_base_w + tx_w_per_mbps * throughput`` (the linear model of Huang et
    al., MobiSys 2012), on top of the device's idle power; ``tail_j`` is the energy the radio
    spends staying in its high-power state after a transfer (LTE's tail, Wi-Fi's PSM timeout),
    for ``tail_s`` seconds.

    Back-to-back transfers share a tail: when the previous one's tail is still running, a new
    transfer only extends it, by the time since the last one (``tail_energy_j``; the policies pass
    the gap between a plan's offloads, see the module's docstring). ``tail_s`` 0
    (not known) charges the whole tail to every transfer, which on a device offloading every few
    samples overstates an offload's energy by most of the tail (measured on the 96 px package at
    500 Mbit/s / 5 ms: all-offload modelled 58 mJ per sample, measured 32-35 mJ with one tail per
    run, the Wi-Fi tail being 28 mJ).
    """

    tx_w_per_mbps: float = 0.0
    tx_base_w: float = 0.0
    tail_j: float = 0.0
    name: str = "custom"
    tail_s: float = 0.0

    def transmit_j(self, upload_s: float, bandwidth_bps: float, since_last_s: float = math.inf) -> float:
        """Upload energy plus the tail this transfer adds, ``since_last_s`` after the radio's last use."""
        return (self.tx_base_w + self.tx_w_per_mbps * bandwidth_bps / 1e6) * upload_s + self.tail_energy_j(since_last_s)

    def tail_energy_j(self, since_last_s: float = math.inf) -> float:
        """The tail a transfer adds: the whole tail after an idle radio (or when ``tail_s`` is not
        known), else only the extension of the running one (``tail_j`` x the share of ``tail_s``
        that passed since the radio's last use)."""
        if self.tail_s <= 0 or not math.isfinite(since_last_s):
            return self.tail_j
        return self.tail_j * min(1.0, max(0.0, since_last_s) / self.tail_s)


@dataclass(frozen=True)
class DeviceCosts:
    """This device's profile of one package, in the numbers the policies need.

    Per segment j (n of them): ``segment_ms``/``segment_j`` (latency and energy of running it),
    ``exit_check_ms``/``exit_check_j`` (its exit's head and criterion; zero where none) and
    ``exit_prob`` (``P(exit at j)`` over all samples; the last segment's final exit takes the rest,
    so they sum to 1). Per offload boundary k = 0..n-2: ``encoded_bytes`` (one sample with the
    chosen codec; None where no tail exists, so offloading there is impossible) and, optionally,
    ``server_ms`` (the tail's compute time). ``input_bytes`` / ``input_server_ms``: the same for
    the input tail (boundary -1: the raw input sent, the whole model on the server; None: no such
    tail). ``idle_w`` is the device's power while it waits.
    """

    segment_ms: tuple[float, ...]
    segment_j: tuple[float, ...]
    exit_prob: tuple[float, ...]
    encoded_bytes: tuple[int | None, ...]
    radio: RadioModel = field(default_factory=RadioModel)
    idle_w: float = 0.0
    exit_check_ms: tuple[float, ...] | None = None
    exit_check_j: tuple[float, ...] | None = None
    server_ms: tuple[float, ...] | None = None
    input_bytes: int | None = None
    input_server_ms: float | None = None

    def __post_init__(self) -> None:
        n = len(self.segment_ms)
        if n == 0:
            raise UsageError("DeviceCosts needs at least one segment")
        for name in ("segment_j", "exit_prob", "exit_check_ms", "exit_check_j"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise UsageError(f"DeviceCosts.{name} has {len(value)} entries; expected one per segment ({n})")
        for name in ("encoded_bytes", "server_ms"):
            value = getattr(self, name)
            if value is not None and len(value) != n - 1:
                raise UsageError(
                    f"DeviceCosts.{name} has {len(value)} entries; expected one per offload boundary ({n - 1})"
                )
        if any(p < 0 for p in self.exit_prob) or not math.isclose(sum(self.exit_prob), 1.0, abs_tol=1e-3):
            raise UsageError(
                f"DeviceCosts.exit_prob must be probabilities summing to 1 (the final exit takes the rest), "
                f"got {self.exit_prob}"
            )

    @property
    def segments(self) -> int:
        return len(self.segment_ms)

    @property
    def offload_boundaries(self) -> tuple[int, ...]:
        """The boundaries with a tail to offload to (-1 first when the input has one)."""
        start = (-1,) if self.input_bytes is not None else ()
        return start + tuple(k for k, size in enumerate(self.encoded_bytes) if size is not None)

    def survival(self, k: int) -> float:
        """``S(k)``: the chance a sample has not exited at 0..k (1 at k = -1)."""
        return max(0.0, 1.0 - sum(self.exit_prob[: k + 1]))

    def step(self, j: int) -> Cost:
        """Running segment j and checking its exit."""
        check_ms = self.exit_check_ms[j] if self.exit_check_ms else 0.0
        check_j = self.exit_check_j[j] if self.exit_check_j else 0.0
        return Cost(self.segment_ms[j] + check_ms, self.segment_j[j] + check_j)

    @classmethod
    def from_manifest(
        cls,
        manifest: Manifest,
        segment_ms: Sequence[float],
        *,
        codec: str = "fp32",
        segment_j: Sequence[float] | None = None,
        active_w: float | None = None,
        idle_w: float = 0.0,
        radio: RadioModel | None = None,
        exit_check_ms: Sequence[float] | None = None,
        server_ms: Sequence[float] | None = None,
    ) -> DeviceCosts:
        """Exit probabilities and encoded sizes from a package's manifest, latencies from a profile.

        Energy per segment is ``segment_j`` when measured, else ``active_w * segment_ms`` (a power
        model). Without a calibration record every sample is assumed to reach the final exit: the
        conservative reading, since early exits only make local inference cheaper.
        """
        n = len(manifest.segments)
        if len(segment_ms) != n:
            raise UsageError(f"segment_ms has {len(segment_ms)} entries; the package has {n} segments")
        if segment_j is None:
            if active_w is None:
                raise UsageError("give segment_j (measured energy) or active_w (a power model) for the segments")
            segment_j = [active_w * ms / 1000.0 for ms in segment_ms]
        probs = [0.0] * n
        if manifest.calibration is None:
            probs[-1] = 1.0
        else:
            segment_of = {spec.index: spec.segment for spec in manifest.exits}
            for record in manifest.calibration.exits:
                probs[segment_of[record.exit]] += record.exit_rate
            total = sum(probs)
            if total <= 0:
                raise PackageError("the manifest's calibration record has no exit rates")
            probs = [p / total for p in probs]
        sizes: list[int | None] = [None] * (n - 1)
        input_bytes: int | None = None
        for tail in manifest.tails:
            if tail.codec == codec and 0 <= tail.boundary < n - 1:
                sizes[tail.boundary] = tail.encoded_bytes
            elif tail.codec == codec and tail.boundary == -1:
                input_bytes = tail.encoded_bytes
        return cls(
            segment_ms=tuple(float(v) for v in segment_ms),
            segment_j=tuple(float(v) for v in segment_j),
            exit_prob=tuple(probs),
            encoded_bytes=tuple(sizes),
            radio=radio or RadioModel(),
            idle_w=idle_w,
            exit_check_ms=None if exit_check_ms is None else tuple(float(v) for v in exit_check_ms),
            server_ms=None if server_ms is None else tuple(float(v) for v in server_ms),
            input_bytes=input_bytes,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _reach(costs: DeviceCosts, j: int, given: int) -> float:
    """P(reach segment j | survived boundary ``given``), j > given. A sample that reached a boundary
    the calibration says nobody survives is treated as certain to go on (no more early exits)."""
    survived = costs.survival(given)
    if survived <= _EPS:
        return 1.0
    return min(1.0, costs.survival(j - 1) / survived)


def sunk(costs: DeviceCosts, k: int) -> Cost:
    """What reaching boundary k cost (segments and exit checks 0..k): spent, whatever comes next."""
    total = ZERO
    for j in range(k + 1):
        total = total + costs.step(j)
    return total


def offload_now(costs: DeviceCosts, k: int, link: LinkEstimate) -> Cost:
    """Offloading boundary k's tensor now: RTT + upload + server queue + tail compute; device
    energy = radio (upload, and the tail's share at the plan's steady state) + idle power over
    the whole wait."""
    if not (k == -1 and costs.input_bytes is not None) and not (0 <= k < len(costs.encoded_bytes)
                                                                  and costs.encoded_bytes[k] is not None):  # fmt: skip
        raise UsageError(f"no tail to offload to at boundary {k}; boundaries with one: {costs.offload_boundaries}")
    if k == -1:  # the input tail: the raw input travels, the whole model runs on the server
        size, compute_ms = costs.input_bytes, costs.input_server_ms or 0.0
    else:
        size, compute_ms = costs.encoded_bytes[k], (costs.server_ms[k] if costs.server_ms else 0.0)
    assert size is not None
    bandwidth = max(link.bandwidth_bps, _EPS)
    upload_s = size * 8.0 / bandwidth
    server_s = server_time_ms(link, compute_ms) / 1000.0
    wait_s = link.rtt_s + upload_s + server_s
    offload_gap_s = link.request_interval_s / max(costs.survival(k), _EPS)  # the plan's offloads, this far apart
    energy = costs.radio.transmit_j(upload_s, bandwidth, offload_gap_s) + costs.idle_w * wait_s
    return Cost(wait_s * 1000.0, energy)


def server_time_ms(link: LinkEstimate, compute_ms: float) -> float:
    """The server's share of an offload: the profiled compute + the queue the replies measured; while
    the server reports its expected time, the larger of the two, or the report alone once replies
    stopped (a device that went local hears from its probes that the server is free again, where
    the replies' last queue would keep it local until it went stale). Looking back as well as ahead
    while both are recent: the report alone read a loaded server a little low, and a fleet reading
    it together offloaded more than the server could take (docs/benchmarks.md, the fleet)."""
    measured = link.server_queue_ms + compute_ms
    if link.expected_server_ms is None:
        return measured
    told = max(link.expected_server_ms, compute_ms)
    return max(told, measured) if link.server_queue_recent else told


def remaining(costs: DeviceCosts, k: int, split: int | None, link: LinkEstimate | None = None) -> Cost:
    """Expected cost from boundary k (the sample survived k; -1: the start) of a plan: run locally
    up to boundary ``split`` and offload there if the sample is still going, or (``split`` None)
    finish locally."""
    end = costs.segments - 1 if split is None else split
    if end < k:
        raise UsageError(f"cannot plan an offload at boundary {split} from boundary {k}: it is behind")
    total = ZERO
    for j in range(k + 1, end + 1):
        total = total + costs.step(j).scaled(_reach(costs, j, k))
    if split is not None:
        if link is None:
            raise UsageError("an offload plan needs a link estimate")
        total = total + offload_now(costs, split, link).scaled(_reach(costs, split + 1, k))
    return total


def remaining_local(costs: DeviceCosts, k: int) -> Cost:
    """Expected cost of finishing locally from boundary k, given the sample survived k."""
    return remaining(costs, k, None)


def static_split(costs: DeviceCosts, split: int | None, link: LinkEstimate | None = None) -> Cost:
    """Expected whole-inference cost of always offloading at ``split`` (None: all local), counting
    the samples that exit before it and never offload."""
    return remaining(costs, -1, split, link)
