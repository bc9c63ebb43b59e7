"""Confidence from one exit's own softmax: max_prob (BranchyNet/SDN), margin, entropy.

The same formulas run inside the exported graphs at temperature 1; these numpy versions apply
a calibrated temperature (CALM-style) without touching the graphs.
"""

from __future__ import annotations

import math

import numpy as np

from edgeexit.criteria.base import CRITERIA, Boundary, softmax


def _probs(boundary: Boundary) -> np.ndarray:
    if boundary.probabilities is not None:
        return boundary.probabilities
    if boundary.logits is None:
        raise ValueError("this criterion needs the exit's logits; the exit has no classifier")
    return softmax(boundary.logits, boundary.temperature)


@CRITERIA.register("max_prob")
class MaxProb:
    name = "max_prob"
    needs_logits = True
    needs_hidden = False

    def score(self, boundary: Boundary) -> np.ndarray:
        return _probs(boundary).max(axis=-1)


@CRITERIA.register("margin")
class Margin:
    """Top-1 minus top-2 probability: low when two classes compete, whatever the top-1 is."""

    name = "margin"
    needs_logits = True
    needs_hidden = False

    def score(self, boundary: Boundary) -> np.ndarray:
        probs = _probs(boundary)
        if probs.shape[-1] < 2:
            return probs[:, 0]
        top = np.partition(probs, -2, axis=-1)
        return top[:, -1] - top[:, -2]


@CRITERIA.register("entropy")
class Entropy:
    """1 - normalized entropy: 1 for a one-hot prediction, 0 for a uniform one."""

    name = "entropy"
    needs_logits = True
    needs_hidden = False

    def score(self, boundary: Boundary) -> np.ndarray:
        probs = _probs(boundary).astype(np.float64)
        entropy = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=-1)
        classes = probs.shape[-1]
        return (1.0 - entropy / math.log(classes) if classes > 1 else 1.0 - entropy).astype(np.float32)
