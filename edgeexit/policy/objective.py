"""What a policy optimizes, the battery that bends it, and the rule that picks one option.

Two objectives, the two a deployment states: ``latency`` (fastest answer, subject to an expected
energy budget per inference) and ``energy`` (least device energy, subject to an expected latency
SLO). A constraint nothing meets is not an error: the policy falls back to the option that comes
closest to it (least energy, or least latency) and says so in the decision's reason, because a
device must answer anyway.

What the constraint bounds (``scope``): ``request`` (the default) holds every inference to it, as
far as expected costs can tell: a sample that survived to a late boundary is judged on its own
expected total, so a hard sample that can meet the SLO nowhere takes the fastest option. ``mean``
bounds the mean over all inferences, as a budget does: an option is judged on the whole plan it
belongs to, from the start (the samples that exit early pay for the ones that travel), so a plan
whose mean meets the SLO is kept even where its survivors alone would not. Measured (docs/
benchmarks.md, sweep H): with a mean SLO of 1.25x all-local, ``request`` kept the energy policy local
on the 10 ms links, where offloading the survivors of the third exit used 6-7% less energy within
the SLO on average, because each survivor's own total was over it either way.

Battery (decided, documented): on battery power below ``low_battery_pct`` the latency objective
is bent toward energy: among the options within the budget, every option whose latency is at most
``(1 + low_battery_slack)`` times the fastest one's is acceptable, and the one using the least
energy wins. So a low battery buys energy with a bounded latency penalty (50% by default), and a
plugged-in or healthy device behaves exactly as without a battery. The energy objective already
minimizes energy, so the battery leaves it unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from edgeexit.errors import UnknownNameError, UsageError

Kind = Literal["latency", "energy"]
Scope = Literal["request", "mean"]


@dataclass(frozen=True)
class Objective:
    """``kind="latency"``: minimize expected latency s.t. expected energy <= ``energy_budget_j``;
    ``kind="energy"``: minimize expected energy s.t. expected latency <= ``latency_slo_ms``
    (None: no constraint). ``scope``: whether the constraint bounds each ``request`` or the
    ``mean`` over all of them (the module's docstring)."""

    kind: Kind = "latency"
    energy_budget_j: float | None = None
    latency_slo_ms: float | None = None
    low_battery_pct: float = 20.0
    low_battery_slack: float = 0.5
    scope: Scope = "request"

    def __post_init__(self) -> None:
        if self.kind not in ("latency", "energy"):
            raise UnknownNameError(f"unknown objective {self.kind!r}; expected one of: energy, latency")
        if self.scope not in ("request", "mean"):
            raise UnknownNameError(f"unknown constraint scope {self.scope!r}; expected one of: mean, request")
        if self.kind == "latency" and self.latency_slo_ms is not None:
            raise UsageError("the latency objective takes energy_budget_j; a latency SLO goes with kind='energy'")
        if self.kind == "energy" and self.energy_budget_j is not None:
            raise UsageError("the energy objective takes latency_slo_ms; an energy budget goes with kind='latency'")
        if self.low_battery_slack < 0:
            raise UsageError("low_battery_slack must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BatteryState:
    """Battery level in percent and whether it is charging (psutil's ``power_plugged``)."""

    percent: float
    plugged: bool = False

    def is_low(self, threshold_pct: float) -> bool:
        return not self.plugged and self.percent < threshold_pct

    @classmethod
    def of(cls, value: BatteryState | float | None) -> BatteryState | None:
        """A number is a level on battery power (not charging), so tests and callers need no hardware."""
        if value is None or isinstance(value, BatteryState):
            return value
        return cls(percent=float(value), plugged=False)


def read_battery() -> BatteryState | None:
    """The device's battery via psutil, or None (no psutil, no battery, or a platform without it)."""
    try:
        import psutil
    except ImportError:
        return None
    sensors = getattr(psutil, "sensors_battery", None)
    battery = sensors() if sensors is not None else None
    if battery is None:
        return None
    return BatteryState(percent=float(battery.percent), plugged=bool(battery.power_plugged))


@dataclass(frozen=True)
class Option:
    """One option a policy compared: ``split`` None finishes locally, k offloads at boundary k.
    Costs are the expected totals for this inference (what was already spent included)."""

    name: str
    split: int | None
    latency_ms: float
    energy_j: float
    feasible: bool = True


def _fmt(option: Option) -> str:
    return f"{option.name} ({option.latency_ms:.2f} ms, {option.energy_j:.4f} J)"


def choose(
    options: Sequence[Option],
    objective: Objective,
    battery: BatteryState | None = None,
    judged_by: Sequence[Option] | None = None,
) -> tuple[Option, tuple[Option, ...], str]:
    """Pick one option by ``objective``; returns it, the options marked feasible or not, and why.
    ``judged_by`` (one per option, in the same order): the costs the constraint is checked on
    instead of the options' own (a ``mean`` scope: each option's whole plan from the start)."""
    if not options:
        raise UsageError("a policy needs at least one option to choose from")
    if objective.kind == "latency":
        limit, key, other, what = objective.energy_budget_j, "energy_j", "latency_ms", "energy budget"
    else:
        limit, key, other, what = objective.latency_slo_ms, "latency_ms", "energy_j", "latency SLO"
    judged = options if judged_by is None else judged_by
    if len(judged) != len(options):
        raise UsageError(f"judged_by has {len(judged)} options; expected one per option ({len(options)})")
    if limit is None:  # every option is feasible: nothing to mark (copies cost more than the rest of a decision)
        marked = tuple(o if o.feasible else replace(o, feasible=True) for o in options)
    else:
        bound = limit + 1e-12 * max(1.0, abs(limit))
        marked = tuple(
            o if o.feasible == (getattr(j, key) <= bound) else replace(o, feasible=getattr(j, key) <= bound)
            for o, j in zip(options, judged, strict=True)
        )
    feasible = [o for o in marked if o.feasible]
    unit = "J" if key == "energy_j" else "ms"
    mean = "" if judged_by is None else " on average"
    if not feasible:  # the one whose constraint value (its own, or its plan's) comes closest
        pairs = zip(marked, judged, strict=True)
        best, _ = min(pairs, key=lambda pair: (getattr(pair[1], key), getattr(pair[0], other)))
        return best, marked, f"no option meets the {what} of {limit} {unit}{mean}; {_fmt(best)} comes closest"
    best = min(feasible, key=lambda o: (getattr(o, other), getattr(o, key)))
    goal = "lowest latency" if objective.kind == "latency" else "lowest energy"
    bound = "" if limit is None else f" within the {what} of {limit} {unit}{mean}"
    if limit is not None and judged_by is not None:
        plan = next(j for o, j in zip(marked, judged, strict=True) if o is best)
        bound += f" (its plan over all samples: {_fmt(plan)})"
    reason = f"{_fmt(best)} has the {goal}{bound}"
    if objective.kind == "latency" and battery is not None and battery.is_low(objective.low_battery_pct):
        bar = best.latency_ms * (1.0 + objective.low_battery_slack)
        within = [o for o in feasible if o.latency_ms <= bar or math.isclose(o.latency_ms, bar)]
        saver = min(within, key=lambda o: (o.energy_j, o.latency_ms))
        reason += (
            f"; battery {battery.percent:.0f}% < {objective.low_battery_pct:.0f}% and not charging: least energy "
            f"within {100 * objective.low_battery_slack:.0f}% of that latency is {_fmt(saver)}"
        )
        best = saver
    return best, marked, reason
