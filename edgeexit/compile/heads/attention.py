"""LGViT's "global aggregation" head: a learned query attends over all positions.

Mean pooling weighs every token equally; an attention pool lets the exit pick the few
positions that matter, which is what early ViT layers need to classify well.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgeexit.compile.heads.base import HEADS, TokenLayout


@HEADS.register("attention")
class AttentionPoolHead(nn.Module):
    def __init__(self, num_classes: int, layout: TokenLayout, width: int = 64) -> None:
        super().__init__()
        self.layout = layout
        self.keys = nn.LazyLinear(width)
        self.values = nn.LazyLinear(width)
        self.query = nn.Parameter(torch.randn(width) / math.sqrt(width))
        self.norm = nn.LayerNorm(width)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # (N, C, H, W) -> (N, HW, C): every pixel is a token
            x = x.flatten(2).transpose(1, 2)
        if x.dim() != 3:
            raise ValueError(f"the attention head expects a feature map or tokens; got shape {tuple(x.shape)}")
        weights = torch.softmax(self.keys(x) @ self.query / math.sqrt(self.query.numel()), dim=1)
        pooled = (weights.unsqueeze(-1) * self.values(x)).sum(dim=1)
        return self.classifier(self.norm(pooled))
