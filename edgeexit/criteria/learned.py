"""A learned exit gate (JEI-DNN-style): a two-layer perceptron on the exit's softmax that scores
how likely the exit's answer is to agree with the final exit's.

A fixed confidence rule (max_prob, margin, entropy) treats every class alike; a gate trained on
validation data can learn that one class is safe at 0.7 and another needs 0.99, and weigh the
top-1 against the runner-up and the entropy together. It stays a score in [0, 1] that exits
when ``score >= threshold``, so every threshold method (margin, Learn-then-Test, budget) applies
to it unchanged. The gate's features are a function of the tempered softmax alone, computed the
same way here (numpy, the device's fallback) and inside the exported graph
(``edgeexit.compile.graphs.GateScore``), whose weights are graph inputs the engine feeds.
"""

from __future__ import annotations

import math

import numpy as np

from edgeexit.criteria.base import CRITERIA, Boundary
from edgeexit.criteria.confidence import _probs
from edgeexit.manifest import ExitGate

#: Summary features every gate sees, in this order: top-1 probability, top-2 probability,
#: 1 - normalized entropy, log(top-1 / top-2).
GATE_STATS = ("max_prob", "second_prob", "negentropy", "log_ratio")
#: Up to this many classes the gate also sees every class's probability (so it can learn which
#: classes exit safely); beyond it, the summary alone (an ImageNet head would need 1,000 inputs).
GATE_MAX_CLASSES = 32
#: Hidden units of the gate's one hidden layer (the exported graph's gate inputs have this width).
#: Small on purpose: a gate is trained on a few thousand samples, and 16 units overfit them
#: (docs/benchmarks.md, learned exits).
GATE_HIDDEN = 8
#: Probabilities are clipped here before a logarithm, in numpy and in the graph alike.
GATE_EPSILON = 1e-12


def gate_feature_count(classes: int) -> int:
    """How many features a gate over ``classes`` classes takes."""
    return len(GATE_STATS) + (classes if classes <= GATE_MAX_CLASSES else 0)


def gate_features(probabilities: np.ndarray) -> np.ndarray:
    """(N, F) float32 features of (N, C) probabilities: ``GATE_STATS``, then the C probabilities
    themselves when C <= ``GATE_MAX_CLASSES``."""
    p = np.asarray(probabilities, dtype=np.float32)
    classes = p.shape[-1]
    if classes >= 2:
        top = np.partition(p, -2, axis=-1)
        first, second = top[:, -1], top[:, -2]
    else:
        first, second = p[:, 0], np.zeros(p.shape[0], np.float32)
    entropy = -(p * np.log(np.maximum(p, np.float32(GATE_EPSILON)))).sum(axis=-1)
    negentropy = 1.0 - entropy / np.float32(math.log(classes)) if classes > 1 else 1.0 - entropy
    log_ratio = np.log(np.maximum(first, np.float32(GATE_EPSILON))) - np.log(
        np.maximum(second, np.float32(GATE_EPSILON))
    )
    stats = np.stack([first, second, negentropy, log_ratio], axis=1).astype(np.float32)
    return np.concatenate([stats, p], axis=1) if classes <= GATE_MAX_CLASSES else stats


def gate_arrays(gate: ExitGate) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The gate's weights as the float32 arrays the graph takes: w1 (F, H), b1 (H,), w2 (H,), b2 (1,)."""
    return (
        np.asarray(gate.w1, np.float32).reshape(len(gate.w1), len(gate.b1)),
        np.asarray(gate.b1, np.float32),
        np.asarray(gate.w2, np.float32),
        np.asarray([gate.b2], np.float32),
    )


def gate_score(features: np.ndarray, arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """sigmoid(relu(features @ w1 + b1) @ w2 + b2), float32 like the graph."""
    w1, b1, w2, b2 = arrays
    if features.shape[-1] != w1.shape[0]:
        raise ValueError(
            f"the gate takes {w1.shape[0]} features and got {features.shape[-1]}: it was trained for another "
            "number of classes; recalibrate the package (`edgeexit calibrate --criterion learned`)"
        )
    hidden = np.maximum(features @ w1 + b1, np.float32(0.0))
    z = hidden @ w2 + b2[0]
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


#: Gates seen so far by id, with their arrays: a manifest's gates live as long as its engine,
#: and converting 600 floats per call would cost more than the gate itself.
_ARRAYS: dict[int, tuple[ExitGate, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]] = {}


def _cached_arrays(gate: ExitGate) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    found = _ARRAYS.get(id(gate))
    if found is None or found[0] is not gate:
        if len(_ARRAYS) > 256:
            _ARRAYS.clear()
        found = (gate, gate_arrays(gate))
        _ARRAYS[id(gate)] = found
    return found[1]


@CRITERIA.register("learned")
class Learned:
    """The exit's gate applied to its tempered softmax; 0.5 everywhere while the exit has no
    trained gate (what the exported graph's default weights give), so it never exits before
    ``edgeexit calibrate --criterion learned`` trains one."""

    name = "learned"
    needs_logits = True
    needs_hidden = False

    def score(self, boundary: Boundary) -> np.ndarray:
        probs = _probs(boundary)
        if boundary.gate is None:
            return np.full(probs.shape[0], 0.5, np.float32)
        return gate_score(gate_features(probs), _cached_arrays(boundary.gate))
