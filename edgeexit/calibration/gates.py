"""Training the ``learned`` criterion's exit gates on a full-depth pass (numpy, no torch).

Each non-final exit gets a two-layer perceptron (``edgeexit.criteria.learned``) fitted to
predict that the exit's answer agrees with the final exit's (JEI-DNN learns the exit decision;
this learns the confidence, and a threshold method turns it into decisions, so the guarantees of
Learn-then-Test and the compute budget apply to it as to any score). Agreement rather than
correctness is the target because it is what an early exit changes: where the final exit is
wrong, exiting early loses nothing by disagreeing with it.

The gates are trained on a share of the calibration data that never chooses, orders or tests a
threshold (``gate_share``), so the scores thresholds are chosen on are the scores unseen data will
get: a gate scores its own training samples better than new ones, and thresholds chosen on those
would be too cheap (measured: Learn-then-Test ordering its candidates on them certified nothing in
one split of ten on the demo CNN, the first candidate failing its test).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeexit.calibration.risk_control import ordering_split
from edgeexit.criteria.base import softmax
from edgeexit.criteria.learned import GATE_HIDDEN, gate_features
from edgeexit.manifest import ExitGate


@dataclass(frozen=True)
class GateTraining:
    """How a gate is fitted: full-batch Adam on the logistic loss with L2 on the weights (its
    width is ``GATE_HIDDEN``, what the exported graphs take)."""

    steps: int = 600
    learning_rate: float = 0.01
    weight_decay: float = 1e-2
    seed: int = 0


def fit_gate(
    logits: np.ndarray, temperature: float, agree: np.ndarray, training: GateTraining = GateTraining()
) -> ExitGate:
    """A gate for one exit from its (N, C) ``logits`` at ``temperature`` and whether each sample's
    answer agreed with the final exit's. Features are standardized for the fit and the scaling
    folded into the first layer, so the stored gate takes the raw features the device computes."""
    features = gate_features(softmax(logits, temperature)).astype(np.float64)
    target = np.asarray(agree, dtype=np.float64)
    samples, count = features.shape
    if samples == 0:
        raise ValueError("a gate needs at least one training sample")
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale < 1e-6] = 1.0  # a constant feature (a class never predicted) carries nothing
    x = (features - mean) / scale
    rng = np.random.default_rng(training.seed)
    params = {
        "w1": rng.normal(0.0, 1.0 / np.sqrt(count), (count, GATE_HIDDEN)),
        "b1": np.zeros(GATE_HIDDEN),
        "w2": rng.normal(0.0, 1.0 / np.sqrt(GATE_HIDDEN), GATE_HIDDEN),
        "b2": np.array([_logit(target.mean())]),
    }
    moments = {name: (np.zeros_like(value), np.zeros_like(value)) for name, value in params.items()}
    beta1, beta2 = 0.9, 0.999
    for step in range(1, training.steps + 1):
        grads = _gradients(params, x, target, training.weight_decay)
        for name, grad in grads.items():
            m, v = moments[name]
            m *= beta1
            m += (1 - beta1) * grad
            v *= beta2
            v += (1 - beta2) * grad * grad
            corrected = (m / (1 - beta1**step)) / (np.sqrt(v / (1 - beta2**step)) + 1e-8)
            params[name] -= training.learning_rate * corrected
    w1 = params["w1"] / scale[:, None]
    b1 = params["b1"] - (mean / scale) @ params["w1"]
    return ExitGate(
        w1=tuple(tuple(float(v) for v in row) for row in w1.astype(np.float32)),
        b1=tuple(float(v) for v in b1.astype(np.float32)),
        w2=tuple(float(v) for v in params["w2"].astype(np.float32)),
        b2=float(np.float32(params["b2"][0])),
        samples=int(samples),
    )


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return float(np.log(p / (1 - p)))


def _gradients(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, decay: float) -> dict[str, np.ndarray]:
    """The mean logistic loss's gradients, plus ``decay`` x the weights (not the biases)."""
    pre = x @ params["w1"] + params["b1"]
    hidden = np.maximum(pre, 0.0)
    z = hidden @ params["w2"] + params["b2"][0]
    error = (1.0 / (1.0 + np.exp(-z)) - y) / len(y)  # d loss / d z
    back = np.outer(error, params["w2"]) * (pre > 0)
    return {
        "w1": x.T @ back + decay * params["w1"],
        "b1": back.sum(axis=0),
        "w2": hidden.T @ error + decay * params["w2"],
        "b2": np.array([error.sum()]),
    }


def gate_share(samples: int, seed: int) -> np.ndarray:
    """The samples the learned gates train on: the first half of Learn-then-Test's ordering share
    (``ordering_split``). The other half orders the candidates by the trained gates' scores, and
    the test share sees neither; the margin and budget methods choose on everything but this."""
    path = ordering_split(samples, seed)[0]
    return path[: path.size // 2]
