"""How two runs of the same graph are compared, at export and at verify: one rule, one place."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ParityCheck:
    """One output's agreement: passes when |got - ref| <= atol + rtol * max|ref| everywhere.

    The relative part scales with the output's largest magnitude, not each element's: float32
    reassociation (another CPU's kernels, fused batch norm) errs in proportion to the sums' terms,
    so an element near zero that came out of a cancellation carries the error of its neighbours.
    Per element, EfficientNet-Lite0's first boundary (range 44) failed export on an AVX2-only EPYC
    by 4e-4 at one element of 0.3, while it passed on an AVX-512 Xeon."""

    graph: str
    output: str
    max_abs_diff: float
    ok: bool


def compare(
    graph: str,
    output: str,
    ref: np.ndarray,
    got: np.ndarray,
    atol: float,
    rtol: float,
    mask: np.ndarray | None = None,
) -> ParityCheck:
    """With ``mask`` (a text encoder's (N, L) attention mask), a token output (N, L, ...) is
    compared on the attended tokens only: what a graph computes at padding is never read."""
    if ref.shape != got.shape:
        return ParityCheck(graph, output, float("inf"), False)
    if mask is not None and ref.ndim >= 2 and ref.shape[:2] == mask.shape:
        keep = mask.astype(bool)
        ref, got = ref[keep], got[keep]
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    scale = float(np.abs(ref).max(initial=0.0))
    return ParityCheck(graph, output, float(diff.max(initial=0.0)), bool(np.all(diff <= atol + rtol * scale)))
