"""Linear on pooled features: BranchyNet / SDN's cheapest exit."""

from __future__ import annotations

import torch
from torch import nn

from edgeexit.compile.heads.base import HEADS, TokenLayout, pool_features


@HEADS.register("linear")
class LinearHead(nn.Module):
    """Pool, then one linear layer (or a small MLP when ``hidden`` > 0)."""

    def __init__(self, num_classes: int, layout: TokenLayout, hidden: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        self.layout = layout
        layers: list[nn.Module] = []
        if hidden > 0:
            layers += [nn.LazyLinear(hidden), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.LazyLinear(num_classes) if hidden <= 0 else nn.Linear(hidden, num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(pool_features(x, self.layout))
