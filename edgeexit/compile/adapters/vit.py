"""ViT-style encoders: patch embedding, then blocks, then a norm and a classifier.

Two layouts are duck-typed: timm's (``patch_embed, cls_token, pos_embed, blocks, norm, head``)
and torchvision's (``conv_proj, class_token, encoder.{pos_embedding, layers, ln}, heads``).
Stages are the embedding and each block; exit ``i`` goes after block ``i``. The hidden tensor
between segments is the token sequence ``(N, 1 + patches, D)``. Heads read the class token
(``pool="cls"``) or the mean of the patch tokens (``pool="mean"``).
"""

from __future__ import annotations

import torch
from torch import nn

from edgeexit.compile.adapters.base import ADAPTERS, ExitRequest, assemble
from edgeexit.compile.heads import TokenLayout
from edgeexit.compile.model import MultiExitModel
from edgeexit.errors import ModelError


class _TimmEmbedding(nn.Module):
    """Patch embedding + class token + position embedding, sharing the backbone's parameters."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.patch_embed = backbone.patch_embed
        self.cls_token = backbone.cls_token
        self.pos_embed = backbone.pos_embed
        self.pos_drop = getattr(backbone, "pos_drop", nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)
        if tokens.dim() == 4:  # a bare conv: (N, D, h, w) -> (N, hw, D)
            tokens = tokens.flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return self.pos_drop(torch.cat([cls, tokens], dim=1) + self.pos_embed)


class _TorchvisionEmbedding(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.conv_proj = backbone.conv_proj
        self.class_token = backbone.class_token
        self.pos_embedding = backbone.encoder.pos_embedding
        self.dropout = getattr(backbone.encoder, "dropout", nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.conv_proj(x).flatten(2).transpose(1, 2)
        cls = self.class_token.expand(tokens.shape[0], -1, -1)
        return self.dropout(torch.cat([cls, tokens], dim=1) + self.pos_embedding)


class _FinalHead(nn.Module):
    """The backbone's own norm + classifier on the class token (or mean of patch tokens)."""

    def __init__(self, norm: nn.Module, classifier: nn.Module, pool: str) -> None:
        super().__init__()
        self.norm = norm
        self.classifier = classifier
        self.pool = pool

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(tokens)
        feature = tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1)
        return self.classifier(feature)


def _is_timm(b: nn.Module) -> bool:
    return all(hasattr(b, p) for p in ("patch_embed", "cls_token", "pos_embed", "blocks", "norm", "head"))


def _is_torchvision(b: nn.Module) -> bool:
    encoder = getattr(b, "encoder", None)
    return (
        all(hasattr(b, p) for p in ("conv_proj", "class_token", "heads"))
        and encoder is not None
        and all(hasattr(encoder, p) for p in ("pos_embedding", "layers", "ln"))
    )


class ViTAdapter:
    expects = (
        "a ViT with patch_embed, cls_token, pos_embed, blocks, norm, head (timm layout) or "
        "conv_proj, class_token, encoder.pos_embedding/layers/ln, heads (torchvision layout)"
    )

    def accepts(self, backbone: nn.Module) -> bool:
        return _is_timm(backbone) or _is_torchvision(backbone)

    def build(self, backbone: nn.Module, request: ExitRequest) -> MultiExitModel:
        if request.pool not in ("cls", "mean"):
            raise ModelError(f"ViT heads pool the 'cls' token or the 'mean' of patch tokens; got {request.pool!r}")
        if _is_timm(backbone):
            embedding: nn.Module = _TimmEmbedding(backbone)
            blocks = list(backbone.blocks)
            final = _FinalHead(backbone.norm, backbone.head, request.pool)
        else:
            embedding = _TorchvisionEmbedding(backbone)
            blocks = list(backbone.encoder.layers)
            final = _FinalHead(backbone.encoder.ln, backbone.heads, request.pool)
        if not blocks:
            raise ModelError("the ViT has no blocks to put exits between")
        # Stage 0 fuses the embedding with block 0 so exit i sits right after block i.
        stages = [nn.Sequential(embedding, blocks[0]), *blocks[1:]]
        names = [f"block{i}" for i in range(len(blocks))]
        layout = TokenLayout(prefix=1, pool=request.pool)  # type: ignore[arg-type]
        return assemble(stages, names, request, final, "backbone", layout="NCHW", token_layout=layout, what="ViT")


ADAPTERS.register("vit")(ViTAdapter())
