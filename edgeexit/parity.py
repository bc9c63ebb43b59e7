"""How two runs of the same graph are compared, at export and at verify: one rule, one place."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ParityCheck:
    """One output's agreement: passes when |got - ref| <= atol + rtol * |ref| everywhere."""

    graph: str
    output: str
    max_abs_diff: float
    ok: bool


def compare(graph: str, output: str, ref: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> ParityCheck:
    if ref.shape != got.shape:
        return ParityCheck(graph, output, float("inf"), False)
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    return ParityCheck(graph, output, float(diff.max(initial=0.0)), bool(np.all(diff <= atol + rtol * np.abs(ref))))
