"""The score every exit would give every sample, computed by the runtime's own criteria.

Calibration must predict what the engine will do, so the scores come from ``edgeexit.criteria``
with the same inputs the engine feeds them (temperature, the history of earlier predictions,
the boundary similarity) rather than from a re-implementation that could drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from edgeexit.criteria import Boundary, create_criterion
from edgeexit.manifest import ExitGate

if TYPE_CHECKING:  # the runtime imports onnxruntime; calibration only reads its numpy record
    from edgeexit.runtime.engine import FullDepth


def exit_scores(
    criterion: str | Sequence[str],
    full: FullDepth,
    temperatures: Sequence[float],
    gates: Sequence[ExitGate | None] | None = None,
) -> np.ndarray:
    """(E, N) float64 scores, exactly as the engine computes them; the final row is +inf.
    ``gates``: per exit, the ``learned`` criterion's trained gate (None: untrained or unused).

    ``criterion`` is one name for every exit or one per exit. As in the engine, an exit without
    logits is scored by similarity whatever the criterion, patience sees the argmax of every
    earlier exit that has logits, and the scores keep their float32 values (converting float32 to
    float64 is exact), so a float32-exact threshold splits them the same way here and on a device.
    """
    count = len(full.logits)
    if count == 0:
        raise ValueError("the full-depth record has no exits")
    names = [criterion] * count if isinstance(criterion, str) else list(criterion)
    if len(names) != count or len(temperatures) != count or len(full.similarity) != count:
        raise ValueError(
            f"need one criterion, temperature and similarity per exit ({count}); got {len(names)}, "
            f"{len(temperatures)} and {len(full.similarity)}"
        )
    samples = full.samples
    scores = np.empty((count, samples), dtype=np.float64)
    history: list[np.ndarray] = []
    for k, logits in enumerate(full.logits):
        if k == count - 1:
            scores[k] = np.inf  # the final exit always exits
        elif logits is None or names[k] == "similarity":
            scores[k] = np.asarray(full.similarity[k])
        else:
            gate = gates[k] if gates is not None else None
            boundary = Boundary(logits, history=tuple(history), temperature=float(temperatures[k]), gate=gate)
            scores[k] = create_criterion(names[k]).score(boundary)
        if logits is not None:
            history.append(logits.argmax(axis=-1))
    return scores
