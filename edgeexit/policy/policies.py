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
  (sunk + remaining), so the energy budget and latency SLO apply per inference.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod

from edgeexit.errors import UsageError
from edgeexit.policy.costs import DeviceCosts, remaining, static_split, sunk
from edgeexit.policy.decision import Decision
from edgeexit.policy.link import LinkEstimate
from edgeexit.policy.objective import BatteryState, Objective, Option, choose
from edgeexit.registry import Registry


class Policy(ABC):
    """Decides at each boundary; ``name`` is the registered spelling (``split@1`` for a split)."""

    name: str = "policy"

    def __init__(self, costs: DeviceCosts | None = None, objective: Objective | None = None) -> None:
        self.costs = costs
        self.objective = objective or Objective()

    def decide(
        self, boundary: int, link: LinkEstimate | None = None, battery: BatteryState | float | None = None
    ) -> Decision:
        """Continue or offload at ``boundary``, for a sample that reached it without exiting.
        ``battery`` is a ``BatteryState``, a level in percent on battery power, or None."""
        if boundary < -1 or (self.costs is not None and boundary >= self.costs.segments):
            raise UsageError(f"boundary {boundary} is outside the package's segments")
        return self._decide(boundary, link, BatteryState.of(battery))

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


def _option(costs: DeviceCosts, cost_from: int, split: int | None, link: LinkEstimate) -> Option:
    total = sunk(costs, cost_from) + remaining(costs, cost_from, split, link)
    return Option("local" if split is None else f"offload@{split_name(split)}", split, total.latency_ms, total.energy_j)


POLICIES: Registry[type[Policy]] = Registry("policy")


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
        options = [Option("local", None, *_totals(costs, None, link))]
        options += [Option(f"offload@{split_name(k)}", k, *_totals(costs, k, link)) for k in costs.offload_boundaries]
        return choose(options, self.objective, BatteryState.of(battery))

    def _decide(self, boundary: int, link: LinkEstimate | None, battery: BatteryState | None) -> Decision:
        _, link = self._need(link)
        best, options, reason = self.plan(link, battery)
        here = best.split == boundary
        if best.split is not None and best.split < boundary:
            reason += f"; boundary {best.split} is already passed, so this sample finishes locally"
        elif not here:
            reason += f"; not offloading at boundary {boundary}"
        return self._record(boundary, here, link, battery, reason, options, best.name)


def _totals(costs: DeviceCosts, split: int | None, link: LinkEstimate) -> tuple[float, float]:
    cost = static_split(costs, split, link)
    return cost.latency_ms, cost.energy_j


@POLICIES.register("adaptive")
class AdaptivePolicy(Policy):
    """At each boundary: finishing locally vs. offloading now (vs. offloading later), conditioned
    on the sample having survived the exits so far, under the objective."""

    name = "adaptive"

    def _decide(self, boundary: int, link: LinkEstimate | None, battery: BatteryState | None) -> Decision:
        costs, link = self._need(link)
        splits: list[int | None] = [None, *(k for k in costs.offload_boundaries if k >= boundary)]
        options = [_option(costs, boundary, split, link) for split in splits]
        best, marked, reason = choose(options, self.objective, battery)
        here = best.split == boundary
        local = marked[0]
        if here:
            reason = f"offload now: {reason}; finishing locally: {local.latency_ms:.2f} ms, {local.energy_j:.4f} J"
        elif best.split is None:
            reason = f"continue locally: {reason}"
        else:
            reason = f"continue, offloading later looks best: {reason}"
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
