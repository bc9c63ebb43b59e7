"""The one interface every exit criterion implements, and the registry they live in.

A criterion turns what is known at a boundary into a per-sample score; a sample exits when
``score >= threshold``. The confidence criteria score in [0, 1]; patience scores the run length
of agreeing predictions (its threshold is the patience P). numpy only: the device runs these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edgeexit.manifest import ExitGate
from edgeexit.registry import Registry


@dataclass(frozen=True)
class Boundary:
    """What the runtime knows about a batch at one boundary.

    ``logits`` is None at an exit without a classifier; ``previous_hidden`` is the previous
    boundary's hidden state (None at the first boundary); ``history`` holds the predictions of
    earlier exits with a classifier, oldest first, each ``(N,)``.
    """

    logits: np.ndarray | None
    hidden: np.ndarray | None = None
    previous_hidden: np.ndarray | None = None
    history: tuple[np.ndarray, ...] = ()
    temperature: float = 1.0
    #: softmax(logits / temperature) when the caller already has it (saves recomputing it)
    probabilities: np.ndarray | None = None
    #: (N, L) 1 for real tokens, 0 for padding, when hidden states are token sequences (N, L, D):
    #: padding must not change a score, or a batch padded to its longest text would disagree
    #: with the same texts run one by one
    mask: np.ndarray | None = None
    #: the exit's trained gate, for the ``learned`` criterion (None: untrained)
    gate: ExitGate | None = None


class Criterion(Protocol):
    name: str
    #: Whether the score needs the classifier's logits (False: works at an exit with no head).
    needs_logits: bool
    #: Whether the runtime must keep boundary hidden states around for it.
    needs_hidden: bool

    def score(self, boundary: Boundary) -> np.ndarray: ...


CRITERIA: Registry[type[Criterion]] = Registry("criterion")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """float32 like the graphs; few numpy calls, because it runs per sample on the device."""
    z = np.asarray(logits, dtype=np.float32)
    if temperature != 1.0:
        z = z * np.float32(1.0 / temperature)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    e /= e.sum(axis=-1, keepdims=True)
    return e
