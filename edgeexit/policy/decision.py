"""One policy decision with everything that produced it, so a log answers "why did it offload?".

A decision is a frozen record: the action, the boundary, every option the policy compared with
its expected latency and energy, the link estimate and battery it saw, the objective and a
sentence of reason. ``to_json``/``from_json`` round-trip it, one JSON object per line in a log.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

from edgeexit.policy.link import LinkEstimate
from edgeexit.policy.objective import BatteryState, Objective, Option

Action = Literal["continue", "offload"]


@dataclass(frozen=True)
class Decision:
    """``action`` at ``boundary``: ``continue`` locally or ``offload`` boundary's tensor now.

    ``options`` are what the policy compared (empty for ``local`` and ``split@K`` without a
    profile); ``chosen`` names the winning option (None when nothing was compared).
    ``decide_ms`` is what taking the decision cost on the device (set by the runner that timed
    it; 0 when nobody did): a policy is only worth its decisions if they cost less than they save.
    """

    policy: str
    action: Action
    boundary: int
    options: tuple[Option, ...]
    chosen: str | None
    objective: Objective
    link: LinkEstimate | None
    battery: BatteryState | None
    reason: str
    decide_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "action": self.action,
            "boundary": self.boundary,
            "options": [asdict(o) for o in self.options],
            "chosen": self.chosen,
            "objective": self.objective.to_dict(),
            "link": None if self.link is None else self.link.to_dict(),
            "battery": None if self.battery is None else asdict(self.battery),
            "reason": self.reason,
            "decide_ms": self.decide_ms,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Decision:
        return cls(
            policy=raw["policy"],
            action=raw["action"],
            boundary=int(raw["boundary"]),
            options=tuple(Option(**o) for o in raw["options"]),
            chosen=raw["chosen"],
            objective=Objective(**raw["objective"]),
            link=None if raw["link"] is None else LinkEstimate.from_dict(raw["link"]),
            battery=None if raw["battery"] is None else BatteryState(**raw["battery"]),
            reason=raw["reason"],
            decide_ms=float(raw.get("decide_ms", 0.0)),
        )

    @classmethod
    def from_json(cls, text: str) -> Decision:
        return cls.from_dict(json.loads(text))
