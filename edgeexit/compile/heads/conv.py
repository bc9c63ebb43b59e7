"""LGViT's "local perception" head: a conv over the spatial grid before pooling.

Early layers carry local detail a linear probe on pooled features throws away; a 3x3 conv
lets the exit use it. On tokens the patch tokens are laid back onto their grid first.
The conv is depthwise after a 1x1 projection (MobileNet-style): a dense 3x3 conv at an early,
high-resolution boundary would cost more than the backbone segment it is meant to save.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeexit.compile.heads.base import HEADS, TokenLayout, tokens_to_map


@HEADS.register("conv")
class LocalPerceptionHead(nn.Module):
    def __init__(self, num_classes: int, layout: TokenLayout, width: int = 64) -> None:
        super().__init__()
        self.layout = layout
        self.features = nn.Sequential(
            nn.LazyConv2d(width, kernel_size=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, kernel_size=3, padding=1, groups=width, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = tokens_to_map(x, self.layout) if x.dim() == 3 else x
        if grid.dim() != 4:
            raise ValueError(f"the conv head expects a feature map or tokens; got shape {tuple(x.shape)}")
        return self.classifier(self.features(grid).mean(dim=(2, 3)))
