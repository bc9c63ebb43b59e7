"""Exit heads, one module per kind, picked by name from a registry (timm-style).

Heads take either a feature map ``(N, C, H, W)`` or a token sequence ``(N, L, D)`` and return
logits ``(N, num_classes)``. Input widths are inferred on the first forward (lazy layers), so a
head can be attached to any boundary without the caller computing channel counts.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from edgeexit.compile.heads.attention import AttentionPoolHead
from edgeexit.compile.heads.base import HEADS, TokenLayout
from edgeexit.compile.heads.conv import LocalPerceptionHead
from edgeexit.compile.heads.linear import LinearHead


def create_head(name: str, num_classes: int, layout: TokenLayout | None = None, **options: object) -> nn.Module:
    """Build a registered head; ``layout`` says how to read token inputs (ignored for maps)."""
    factory: Callable[..., nn.Module] = HEADS.get(name)
    return factory(num_classes=num_classes, layout=layout or TokenLayout(), **options)


def list_heads(pattern: str = "*") -> list[str]:
    return HEADS.names(pattern)


__all__ = [
    "HEADS",
    "AttentionPoolHead",
    "LinearHead",
    "LocalPerceptionHead",
    "TokenLayout",
    "create_head",
    "list_heads",
]
