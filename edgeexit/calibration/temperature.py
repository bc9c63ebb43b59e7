"""Temperature scaling (Guo et al. 2017; CALM): one scalar per exit that makes its softmax honest.

Early heads are usually over- or under-confident, so a raw ``max_prob`` of 0.9 means different
things at different exits. Dividing the logits by the temperature that minimises the validation
negative log-likelihood fixes that without changing any prediction (argmax is unchanged), which
is why the runtime can apply it in numpy and leave the graphs alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

#: Search range for the temperature. Below 0.05 every softmax is one-hot in float32; above 20 it is
#: flat: neither end can be told apart from its neighbours by a confidence threshold.
T_MIN = 0.05
T_MAX = 20.0
_GRID = 64
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _nll_factory(logits: np.ndarray, labels: np.ndarray) -> Callable[[float], float]:
    # Shift each row so its max is 0: the NLL is shift-invariant and exp() never overflows.
    shifted = logits - logits.max(axis=1, keepdims=True)
    picked = shifted[np.arange(len(labels)), labels]

    def nll(log_t: float) -> float:
        t = math.exp(log_t)
        z = shifted / t
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - picked / t))

    return nll


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the NLL of ``softmax(logits / T)`` on labelled data.

    A coarse grid in log-space first (the NLL is smooth but not guaranteed unimodal over three
    decades), then golden-section search inside the best grid cell: deterministic, no scipy. The
    result lies in [0.05, 20]; data a temperature cannot fit (no samples, one class, non-finite or
    constant logits) gives 1.0, i.e. "leave the scores as the graph computes them". Perfectly
    separated data drives T to the lower bound: that is what the NLL asks for.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2:
        raise ValueError(f"logits must be (N, C); got shape {z.shape}")
    if y.shape != (z.shape[0],):
        raise ValueError(f"labels must be ({z.shape[0]},) to match the logits; got shape {y.shape}")
    if z.shape[0] == 0 or z.shape[1] < 2 or not np.isfinite(z).all():
        return 1.0
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"labels must be integers in [0, {z.shape[1]}); got {y.dtype} in [{y.min()}, {y.max()}]")
    if float(np.ptp(z, axis=1).max()) == 0.0:
        return 1.0  # every row constant: the likelihood does not depend on T
    nll = _nll_factory(z, y.astype(np.intp))
    grid = np.linspace(math.log(T_MIN), math.log(T_MAX), _GRID)
    values = [nll(float(g)) for g in grid]
    best = int(np.argmin(values))
    lo, hi = float(grid[max(best - 1, 0)]), float(grid[min(best + 1, _GRID - 1)])
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = nll(a), nll(b)
    while hi - lo > 1e-7:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = nll(b)
    refined = (lo + hi) / 2.0
    log_t = refined if nll(refined) <= values[best] else float(grid[best])
    return float(min(max(math.exp(log_t), T_MIN), T_MAX))
