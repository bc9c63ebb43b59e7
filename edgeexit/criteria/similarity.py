"""MuE: stop when consecutive boundaries stop changing the representation.

Cosine similarity between this boundary's hidden state and the previous one, per sample. It
needs no classifier at the boundary, so it also stops encoders and non-classification models.
Where the two shapes differ (a CNN changing width) the representation did change: score 0.
For token sequences with a mask (a text encoder) it is the mean over real tokens of each
token's cosine between the two layers, so padding changes nothing.
"""

from __future__ import annotations

import numpy as np

from edgeexit.criteria.base import CRITERIA, Boundary


@CRITERIA.register("similarity")
class Similarity:
    name = "similarity"
    needs_logits = False
    needs_hidden = True

    def score(self, boundary: Boundary) -> np.ndarray:
        current, previous = boundary.hidden, boundary.previous_hidden
        if current is None:
            raise ValueError("similarity needs the boundary's hidden state")
        if previous is None or previous.shape != current.shape:
            return np.zeros(current.shape[0], dtype=np.float32)
        mask = boundary.mask
        if mask is not None and current.ndim == 3 and mask.shape == current.shape[:2]:
            return _token_cosine(current, previous, mask)
        a = current.reshape(current.shape[0], -1).astype(np.float64)
        b = previous.reshape(previous.shape[0], -1).astype(np.float64)
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cosine = (a * b).sum(axis=1) / np.maximum(norms, 1e-12)
        return cosine.astype(np.float32)


def _token_cosine(current: np.ndarray, previous: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per sample: the mean over unmasked tokens of cos(current token, previous token)."""
    a = current.astype(np.float64)
    b = previous.astype(np.float64)
    norms = np.linalg.norm(a, axis=2) * np.linalg.norm(b, axis=2)
    cosine = (a * b).sum(axis=2) / np.maximum(norms, 1e-12)
    weights = (mask > 0).astype(np.float64)
    return ((cosine * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)).astype(np.float32)
