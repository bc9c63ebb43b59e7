"""PABEE's patience: exit once P consecutive exits agree on the prediction.

Robust where single-exit confidence is overconfident; the score is the length of the run of
identical predictions ending at this exit, and the threshold is P.
"""

from __future__ import annotations

import numpy as np

from edgeexit.criteria.base import CRITERIA, Boundary


@CRITERIA.register("patience")
class Patience:
    name = "patience"
    needs_logits = True
    needs_hidden = False

    def score(self, boundary: Boundary) -> np.ndarray:
        if boundary.logits is None:
            raise ValueError("patience needs the exit's logits; the exit has no classifier")
        current = boundary.logits.argmax(axis=-1)
        run = np.ones(current.shape[0], dtype=np.float32)
        alive = np.ones(current.shape[0], dtype=bool)
        for earlier in reversed(boundary.history):
            alive &= earlier == current
            run += alive
        return run
