"""The offload policies, by name: ``local``, ``split@K``, ``best-static``, ``adaptive``.

The engine asks a policy at every boundary a sample reaches without exiting: ``decide(boundary,
link, battery)`` returns a ``Decision`` to ``continue`` locally or ``offload`` now. Policies are
registered like timm's models (``edgeexit.registry``), so ``--policy NAME`` and
``create_policy(NAME, costs)`` share one list, and a typo is an error that lists it.

- ``local`` never offloads and ``split@K`` always offloads at K (Neurosurgeon's baseline): the
  reference points every benchmark compares against.
- ``best-static`` picks the one split with the lowest expected whole-inference cost for the
  current link estimate. It is recomputed at every call, so it follows the estimate; a split
  that the sample has already passed is not taken late (the sample finishes locally).
- ``adaptive`` (SPINN/Edgent-like) decides at each boundary from what is known *there*: the
  sample has survived the exits so far, so it compares the expected cost of finishing locally,
  offloading now, and offloading at each later boundary (all conditioned on having survived),
  and offloads only when offloading now wins. Costs in its options are totals for the inference
  (sunk + remaining), so the energy budget and latency SLO apply per inference; with
  ``Objective.scope == "mean"`` they apply to each option's whole plan from the start (a mean).
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod

from edgeexit.errors import UsageError
from edgeexit.policy.costs import ZERO, DeviceCosts, offload_now, sunk
from edgeexit.policy.costs import _reach as reach
from edgeexit.policy.decision import Decision
from edgeexit.policy.feedback import SCALE_STEP
from edgeexit.policy.link import LinkEstimate
from edgeexit.policy.objective import BatteryState, Objective, Option, choose
from edgeexit.registry import Registry


class Policy(ABC):
    """Decides at each boundary; ``name`` is the registered spelling (``split@1`` for a split)."""

    name: str = "policy"

    #: How many distinct (boundary, link numbers, battery) decisions are remembered.
    MEMO_SIZE = 1024

    def __init__(self, costs: DeviceCosts | None = None, objective: Objective | None = None) -> None:
        self.costs = costs
        self.objective = objective or Objective()
        self._memo: dict[tuple[object, ...], Decision] = {}
        #: Every modelled latency is multiplied by this: the device's measured / modelled latency
        #: (``edgeexit.policy.feedback``; a PolicyRunner under a latency SLO keeps it current).
        self.latency_scale = 1.0

    @property
    def needs_latency_feedback(self) -> bool:
        """Whether the scale can change a decision: only a latency SLO compares modelled latencies
        with a number from outside the model (ranking options by latency, a scale changes nothing)."""
        return self.costs is not None and self.objective.latency_slo_ms is not None

    def decide(
        self, boundary: int, link: LinkEstimate | None = None, battery: BatteryState | float | None = None
    ) -> Decision:
        """Continue or offload at ``boundary``, for a sample that reached it without exiting.
        ``battery`` is a ``BatteryState``, a level in percent on battery power, or None.

        A decision depends only on the boundary, the link's numbers (bandwidth, RTT, server queue),
        the battery and this policy's fixed costs, so one taken before for inputs that agree to
        within the estimator's noise (bandwidth within 5%, RTT and queue within 0.25 ms) is returned again
        (its ``link`` is the estimate as it was then). On a link the device is not using the
        estimate stands still, and on one it uses every transfer nudges the estimate by a fraction
        of a percent to a few: without this every sample would pay the same arithmetic at every boundary
        (measured ~40-100 us per decision here, x7 at a Pi 4's speed)."""
        state = BatteryState.of(battery)
        key = (boundary, *self.estimate_key(link, state))
        found = self._memo.get(key)
        if found is not None:
            return found
        if boundary < -1 or (self.costs is not None and boundary >= self.costs.segments):
            raise UsageError(f"boundary {boundary} is outside the package's segments")
        found = self._decide(boundary, link, state)
        if len(self._memo) >= self.MEMO_SIZE:
            self._memo.clear()
        self._memo[key] = found
        return found

    def estimate_key(
        self, link: LinkEstimate | None, battery: BatteryState | float | None = None
    ) -> tuple[object, ...]:
        """``estimate_key`` for this policy: plus ``("scale", step)`` when a latency scale other
        than 1 can change its decisions (``needs_latency_feedback``), and ``interval_key``."""
        key = estimate_key(link, battery, self._largest_tensor() if self.costs is not None else None)
        if self.latency_scale != 1.0 and self.needs_latency_feedback:
            key += (("scale", round(math.log(self.latency_scale) / SCALE_STEP)),)
        if link is not None:
            interval = self.interval_key(link.request_interval_s, battery)
            if interval is not None:
                key += (interval,)
        return key

    def interval_key(self, interval_s: float, battery: BatteryState | float | None = None) -> tuple[str, int] | None:
        """``("interval", step)``: the device's request interval within a factor of sqrt(2), when its
        radio's tail is shared by back-to-back transfers (``RadioModel.tail_s``) and energy enters
        the choice (an offload's share of the tail depends on it; beyond the tail's length every
        offload pays all of it, so longer intervals are one key); else None."""
        tail_s = self.costs.radio.tail_s if self.costs is not None else 0.0
        plain_latency = self.objective.kind == "latency" and self.objective.energy_budget_j is None and battery is None
        if tail_s <= 0 or plain_latency:  # energy does not enter the choice
            return None
        return ("interval", round(math.log(max(min(interval_s, tail_s), 1e-6)) / _INTERVAL_STEP))

    def _largest_tensor(self) -> int:
        """The most bytes one offload of this package may send (the bandwidth's grain is set by it)."""
        found = getattr(self, "_largest", None)
        if found is None:
            costs = self.costs
            assert costs is not None
            found = self._largest = max((b for b in (*costs.encoded_bytes, costs.input_bytes) if b), default=0)
        return found

    @abstractmethod
    def _decide(self, boundary: int, link: LinkEstimate | None, battery: BatteryState | None) -> Decision: ...

    def _record(
        self,
        boundary: int,
        offload: bool,
        link: LinkEstimate | None,
        battery: BatteryState | None,
        reason: str,
        options: tuple[Option, ...] = (),
        chosen: str | None = None,
    ) -> Decision:
        return Decision(
            policy=self.name,
            action="offload" if offload else "continue",
            boundary=boundary,
            options=options,
            chosen=chosen,
            objective=self.objective,
            link=link,
            battery=battery,
            reason=reason,
        )

    def _need(self, link: LinkEstimate | None) -> tuple[DeviceCosts, LinkEstimate]:
        if self.costs is None:
            raise UsageError(f"policy {self.name!r} needs the device's costs (a profile): pass costs=DeviceCosts")
        if link is None:
            raise UsageError(f"policy {self.name!r} needs a link estimate (LinkEstimator.estimate())")
        return self.costs, link


class PlanTable:
    """The expected costs of every plan from every boundary, split into what the link cannot change
    and what it can, computed once per policy: a decision runs on the device at every boundary of
    every sample, so it must cost far less than what it may save (measured: ~70-250 us per
    decision on a workstation core when the options were summed segment by segment each time,
    ~7x that at a Raspberry Pi 4's speed, against segments of a few ms).

    From boundary k (the sample survived k; -1: the start), the plan "offload at s" (s >= k) costs
    ``fixed + weight x offload_now(s, link)``: ``fixed`` = what reaching k cost (``sunk``, 0 from
    the start) + the segments k+1..s weighted by the chance of reaching each, ``weight`` = the
    chance of still going at s. "Finish locally" has weight 0. The same terms as
    ``sunk + remaining`` (which stays the reference the tests compare with), summed once."""

    def __init__(self, costs: DeviceCosts, *, with_sunk: bool = True) -> None:
        self.costs = costs
        self.with_sunk = with_sunk
        self._rows: dict[int, list[tuple[str, int | None, float, float, float]]] = {}
        # the options of the last link estimate seen, by boundary: a device plans every boundary of
        # a sample on one estimate (PolicyRunner), and a mean-scope decision also needs the options
        # from the start, so each boundary's options and each offload's cost are computed once per
        # estimate (the same object: LinkEstimates are frozen, so identity means the same numbers)
        self._link: LinkEstimate | None = None
        self._scale = 1.0
        self._options: dict[int, list[Option]] = {}
        self._offloads: dict[int, tuple[float, float]] = {}

    def rows(self, k: int) -> list[tuple[str, int | None, float, float, float]]:
        found = self._rows.get(k)
        if found is None:
            costs = self.costs
            base = sunk(costs, k) if self.with_sunk else ZERO
            found = []
            for split in (None, *(s for s in costs.offload_boundaries if s >= k)):
                end = costs.segments - 1 if split is None else split
                local = base
                for j in range(k + 1, end + 1):
                    local = local + costs.step(j).scaled(reach(costs, j, k))
                weight = 0.0 if split is None else reach(costs, split + 1, k)
                name = "local" if split is None else f"offload@{split_name(split)}"
                found.append((name, split, local.latency_ms, local.energy_j, weight))
            self._rows[k] = found
        return found

    def options(self, k: int, link: LinkEstimate, latency_scale: float = 1.0) -> list[Option]:
        """Every plan from boundary k with its expected totals on ``link``, latencies multiplied by
        ``latency_scale`` (a list shared with the next caller on the same estimate and scale: read
        it, do not change it); only finishing locally while the link says to back off
        (``LinkEstimate.backoff_s``: the server shed this device's work, ``edgeexit.policy.load``)."""
        if link is not self._link or latency_scale != self._scale:
            self._link, self._scale, self._options, self._offloads = link, latency_scale, {}, {}
        found_options = self._options.get(k)
        if found_options is not None:
            return found_options
        options = self._options[k] = []
        offloads = self._offloads
        backing_off = link.backoff_s > 0  # the server shed this device's work: no offload for now
        for name, split, lat, energy, weight in self.rows(k):
            if split is not None and backing_off:
                continue
            if split is not None:
                found = offloads.get(split)
                if found is None:
                    cost = offload_now(self.costs, split, link)
                    found = offloads[split] = (cost.latency_ms, cost.energy_j)
                lat, energy = lat + weight * found[0], energy + weight * found[1]
            options.append(Option(name, split, lat * latency_scale, energy))
        return options


#: Link estimates whose bandwidths differ by less than 5% (and RTT, queue by less than 0.25 ms) get
#: the same decision: a policy's choice should not hinge on a difference below the estimator's noise
#: (one transfer over loopback moves the estimate by several percent).
_BANDWIDTH_STEP = math.log(1.05)
#: Request intervals within a factor of sqrt(2) share a decision: back-to-back traffic's interval
#: moves with every sample's latency (early exits, offloads), and each new value re-plans: in 25%
#: steps a run's first 60 samples on EfficientNet-Lite0 met 10 keys, ~0.8 ms of decisions per
#: sample at a slow device's speed, more than the tail's share they told apart (~0.6 mJ per sample
#: per doubling at 5 ms between requests on Wi-Fi). A runner keeps its plan within one step of the
#: interval it was made on (``PolicyRunner``), so a plan holds for intervals up to ~2x apart.
_INTERVAL_STEP = 0.5 * math.log(2.0)

POLICIES: Registry[type[Policy]] = Registry("policy")


def estimate_key(
    link: LinkEstimate | None, battery: BatteryState | float | None = None, largest_bytes: int | None = None
) -> tuple[object, ...]:
    """The inputs of a decision besides its boundary, at the grain below which a policy treats them
    as equal: ``(battery, bandwidth step, RTT step, server delay step)`` (bandwidth within 5%, or by
    ``upload_key`` when the largest tensor a package may send is known; RTT within 0.25 ms, the
    replies' queue by ``time_key``; each step an int, so a caller can tell "one step away" from
    "far away"), ``("expected", step, recent)`` while the server reports its expected time, and
    ``("backoff",)`` last while the link says to back off: the memo's key,
    and a caller's (``PolicyRunner``'s plans) for "would the policy decide anything differently now"."""
    state = BatteryState.of(battery)
    if link is None:
        return (state,)
    if largest_bytes is None:
        bandwidth = round(math.log(max(link.bandwidth_bps, 1.0)) / _BANDWIDTH_STEP)
    else:
        bandwidth = upload_key(link.bandwidth_bps, largest_bytes)
    key: tuple[object, ...] = (state, bandwidth, round(link.rtt_s * 4e3), time_key(link.server_queue_ms))
    expected = link.expected_server_ms
    if expected is not None:  # the server's own time too (costs.server_time_ms)
        key = (*key, ("expected", time_key(expected), link.server_queue_recent))
    return (*key, ("backoff",)) if link.backoff_s > 0 else key


def time_key(ms: float) -> int:
    """A time at the grain a decision tells apart: 0.25 ms steps under 5 ms, 5% beyond (step 20 is 5 ms
    either way). An upload time (``upload_key``) and the server's delay share it: a loaded server's
    expected time (tens to hundreds of ms) moves by a few percent with every reply, and at a fixed
    0.25 ms grain each reply would be a new plan."""
    if ms < 5.0:
        return round(ms * 4.0)
    return 20 + round(math.log(ms / 5.0) / _BANDWIDTH_STEP)


def backoff_note(link: LinkEstimate) -> str:
    """What a load-aware decision says while the link says to back off (else nothing)."""
    if link.backoff_s <= 0:
        return ""
    return f"; not offloading for {link.backoff_s:.2f} s more: the server shed this device's work"


def upload_key(bandwidth_bps: float, largest_bytes: int) -> int:
    """The bandwidth at the grain a decision can tell apart: the upload time of the largest tensor
    the package may send in steps of 0.25 ms (the RTT's grain) while it is under 5 ms, of 5% beyond
    (one scale: step 20 is 5 ms either way, so "one step away" means the same on both sides).
    On a fast link each transfer's bandwidth sample is mostly timing noise (2.9 KB take 0.05 ms at
    500 Mbit/s; the estimate swings by tens of percent), and at a 5% grain nearly every transfer
    gave a new key, so a new plan: 0.3-0.4 ms of decisions per sample at a Pi 4's speed while
    offloading (docs/benchmarks.md, sweep I), for choices an upload time 0.25 ms apart cannot change."""
    return time_key(largest_bytes * 8.0 / max(bandwidth_bps, 1.0) * 1e3)


@POLICIES.register("local")
class LocalPolicy(Policy):
    """Never offload: every sample finishes on the device."""

    name = "local"

    def _decide(self, boundary: int, link: LinkEstimate | None, battery: BatteryState | None) -> Decision:
        return self._record(boundary, False, link, battery, "the local policy never offloads")


@POLICIES.register("split@K")
class SplitPolicy(Policy):
    """Always offload at boundary ``k`` (the samples that exited before it never get there)."""

    def __init__(self, k: int, costs: DeviceCosts | None = None, objective: Objective | None = None) -> None:
        super().__init__(costs, objective)
        if costs is not None and k not in costs.offload_boundaries:
            raise UsageError(
                f"split@{split_name(k)}: no tail at boundary {k}; boundaries with one: {costs.offload_boundaries}"
            )
        self.k = k
        self.name = f"split@{split_name(k)}"

    def _decide(self, boundary: int, link: LinkEstimate | None, battery: BatteryState | None) -> Decision:
        here = boundary == self.k
        reason = f"{self.name} offloads at boundary {self.k}" + ("" if here else ", not here")
        return self._record(boundary, here, link, battery, reason)


@POLICIES.register("best-static")
class BestStaticPolicy(Policy):
    """The single split (or all-local) with the lowest expected whole-inference cost for this link."""

    name = "best-static"

    def plan(
        self, link: LinkEstimate, battery: BatteryState | float | None = None
    ) -> tuple[Option, tuple[Option, ...], str]:
        """The best split for ``link``: (chosen option, every option, reason)."""
        costs, link = self._need(link)
        options = self._table(costs).options(-1, link, self.latency_scale)
        return choose(options, self.objective, BatteryState.of(battery))

    def _table(self, costs: DeviceCosts) -> PlanTable:
        table = getattr(self, "_plans", None)
        if table is None or table.costs is not costs:
            table = self._plans = PlanTable(costs, with_sunk=False)
        return table

    def _decide(self, boundary: int, link: LinkEstimate | None, battery: BatteryState | None) -> Decision:
        _, link = self._need(link)
        best, options, reason = self.plan(link, battery)
        here = best.split == boundary
        reason += backoff_note(link)
        if best.split is not None and best.split < boundary:
            reason += f"; boundary {best.split} is already passed, so this sample finishes locally"
        elif not here:
            reason += f"; not offloading at boundary {boundary}"
        return self._record(boundary, here, link, battery, reason, options, best.name)


@POLICIES.register("adaptive")
class AdaptivePolicy(Policy):
    """At each boundary: finishing locally vs. offloading now (vs. offloading later), conditioned
    on the sample having survived the exits so far, under the objective."""

    name = "adaptive"

    def _decide(self, boundary: int, link: LinkEstimate | None, battery: BatteryState | None) -> Decision:
        costs, link = self._need(link)
        table = getattr(self, "_plans", None)
        if table is None or table.costs is not costs:
            table = self._plans = PlanTable(costs)
        scale = self.latency_scale
        options = table.options(boundary, link, scale)
        judged = None
        if self.objective.scope == "mean" and boundary >= 0:  # each option's whole plan, from the start
            whole = {option.split: option for option in table.options(-1, link, scale)}
            judged = [whole[option.split] for option in options]
        best, marked, reason = choose(options, self.objective, battery, judged)
        here = best.split == boundary
        local = marked[0]
        if here:
            reason = f"offload now: {reason}; finishing locally: {local.latency_ms:.2f} ms, {local.energy_j:.4f} J"
        elif best.split is None:
            reason = f"continue locally: {reason}"
        else:
            reason = f"continue, offloading later looks best: {reason}"
        if scale != 1.0:
            reason += f"; modelled latencies x{scale:.3f} (this device's measured / modelled)"
        reason += backoff_note(link)
        return self._record(boundary, here, link, battery, reason, marked, best.name)


_SPLIT = re.compile(r"split@(\d+|input)")


def split_name(k: int) -> str:
    """How boundary ``k`` is spelled in a policy or option name: its number, ``input`` for -1."""
    return "input" if k == -1 else str(k)


def create_policy(name: str, costs: DeviceCosts | None = None, objective: Objective | None = None) -> Policy:
    """A policy by name: ``local``, ``split@K`` (K a boundary, or ``input``), ``best-static``, ``adaptive``."""
    match = _SPLIT.fullmatch(name.strip())
    if match:
        found = match.group(1)
        return SplitPolicy(-1 if found == "input" else int(found), costs, objective)
    if name.startswith("split@"):
        raise UsageError(f"policy {name!r}: the split boundary must be a non-negative integer, as in split@1, or input")
    return POLICIES.get(name)(costs, objective)  # type: ignore[call-arg]


def list_policies(pattern: str = "*") -> list[str]:
    return POLICIES.names(pattern)
