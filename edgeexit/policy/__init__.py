"""Offload policies (numpy only): when a device keeps going locally and when it offloads.

``LinkEstimator`` turns transfers and probes into a ``LinkEstimate``; ``DeviceCosts`` holds this
device's profile of a package; a policy from ``create_policy`` (``local``, ``split@K``,
``best-static``, ``adaptive``) turns both into a ``Decision`` at each boundary under an
``Objective``. See ``edgeexit.policy.policies`` for how each decides.
"""

from __future__ import annotations

from edgeexit.policy.costs import (
    Cost,
    DeviceCosts,
    RadioModel,
    offload_now,
    remaining,
    remaining_local,
    static_split,
    sunk,
)
from edgeexit.policy.decision import Decision
from edgeexit.policy.link import LinkEstimate, LinkEstimator
from edgeexit.policy.objective import BatteryState, Objective, Option, choose, read_battery
from edgeexit.policy.policies import (
    POLICIES,
    AdaptivePolicy,
    BestStaticPolicy,
    LocalPolicy,
    Policy,
    SplitPolicy,
    create_policy,
    list_policies,
)

__all__ = [
    "POLICIES",
    "AdaptivePolicy",
    "BatteryState",
    "BestStaticPolicy",
    "Cost",
    "Decision",
    "DeviceCosts",
    "LinkEstimate",
    "LinkEstimator",
    "LocalPolicy",
    "Objective",
    "Option",
    "Policy",
    "RadioModel",
    "SplitPolicy",
    "choose",
    "create_policy",
    "list_policies",
    "offload_now",
    "read_battery",
    "remaining",
    "remaining_local",
    "static_split",
    "sunk",
]
