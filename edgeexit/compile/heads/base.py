"""What every head shares: the registry and how token sequences are pooled."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from edgeexit.registry import Registry

HEADS: Registry[type[nn.Module]] = Registry("head")


@dataclass(frozen=True)
class TokenLayout:
    """How to read ``(N, L, D)`` tokens: ``prefix`` leading tokens (the class token) come before
    the patch grid; ``pool`` picks the class token or the mean of the patch tokens."""

    prefix: int = 0
    pool: Literal["cls", "mean"] = "mean"


def pool_features(x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """One feature vector per sample, whatever the boundary's tensor looks like."""
    if x.dim() == 4:
        return x.mean(dim=(2, 3))
    if x.dim() == 3:
        if layout.pool == "cls":
            return x[:, 0]
        return x[:, layout.prefix :].mean(dim=1)
    if x.dim() == 2:
        return x
    raise ValueError(f"a head expects (N, C, H, W), (N, L, D) or (N, F) features; got shape {tuple(x.shape)}")


def tokens_to_map(x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Patch tokens ``(N, L, D)`` back onto their square grid ``(N, D, g, g)`` for conv heads."""
    patches = x[:, layout.prefix :]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(
            f"a conv head needs a square grid of patch tokens; got {patches.shape[1]} tokens "
            f"after {layout.prefix} prefix token(s)"
        )
    return patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)
