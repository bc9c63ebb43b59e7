"""Carry a batch's pending samples on to a later boundary, nothing recomputed.

A policy deciding for a batch at every boundary needs what ``Engine.advance`` does for one sample,
for many: from boundary k's Pending (the survivors of ``run_batch_until``) to boundary k2 > k,
with the exits in between retiring samples. The Engine does not offer it yet, so this module
walks the batch with the engine's own batched walk (``edgeexit.runtime.walk``: the code
``resume_batch`` runs, with a stop), which makes every answer the one ``run`` gives. When the
Engine grows ``advance_batch(pending, boundary) -> (results by input row, Pending | None)``, it is
used instead and this module reduces to that call.
"""

from __future__ import annotations

import dataclasses

from edgeexit.errors import UsageError
from edgeexit.runtime.engine import Engine, Pending, Result


def advance_batch(engine: Engine, pending: Pending, boundary: int) -> tuple[dict[int, Result], Pending | None]:
    """``pending``'s samples from their boundary on to ``boundary``: the ones an exit in between
    (``boundary``'s included) was sure of, by input row, and the rest as a Pending at ``boundary``
    (rows in input order; None when none is left)."""
    own = getattr(engine, "advance_batch", None)
    if own is not None:
        return own(pending, boundary)  # type: ignore[no-any-return]
    if boundary <= pending.boundary:
        raise UsageError(
            f"cannot advance from boundary {pending.boundary} to boundary {boundary}: expected a later one"
        )
    if boundary > len(engine.segments) - 2:
        raise UsageError(f"boundary {boundary} has no later segment; finish with Engine.resume_batch instead")
    from edgeexit.runtime.walk import Walk

    found, later = engine._walker.batch(Walk.from_pending(pending, boundary))
    rows = pending.rows
    done = {rows[i]: result for i, result in enumerate(found) if result is not None}
    if later is None:
        return done, None
    return done, dataclasses.replace(later, rows=tuple(rows[i] for i in later.rows))
