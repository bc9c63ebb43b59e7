"""EfficientNet laid out the way lukemelas' EfficientNet-PyTorch builds it (and its Lite port).

Duck-typed: ``_conv_stem, _bn0, _blocks, _conv_head, _bn1, _avg_pooling, _dropout, _fc,
_swish, _global_params`` (PyPI ``efficientnet-lite-pytorch``, ``efficientnet_pytorch``).
Stages are the MBConv blocks (the stem fused into block 0, like the ViT adapter fuses the
embedding, so exit ``i`` sits right after block ``i``) and the 1x1 head conv; the backbone's own
pool + dropout + fc is the final exit.

Exit positions are block indices (``4``), block names (``"block4"``) or stage names
(``"stage2"``: the last block of the backbone's third run of blocks with the same output width,
e.g. the 40-channel stage of EfficientNet-Lite0).

The model's forward hands each block a drop-connect rate that grows with depth
(``drop_connect_rate * i / len(blocks)``); each block keeps its rate here, so the segments
match ``model(x)`` in training mode (same stochastic depth) and exactly in eval mode.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from edgeexit.compile.adapters.base import ADAPTERS, ExitRequest, assemble
from edgeexit.compile.model import MultiExitModel
from edgeexit.errors import ModelError

_PARTS = ("_conv_stem", "_bn0", "_blocks", "_conv_head", "_bn1", "_dropout", "_fc", "_swish", "_global_params")


class MBConvStage(nn.Module):
    """One MBConv block with the drop-connect rate the backbone's forward would pass it."""

    def __init__(self, block: nn.Module, drop_connect_rate: float | None) -> None:
        super().__init__()
        self.block = block
        self.drop_connect_rate = drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, drop_connect_rate=self.drop_connect_rate)


class EfficientNetClassifier(nn.Module):
    """The backbone's own global pool + dropout + fc (the final exit)."""

    def __init__(self, pool: nn.Module | None, dropout: nn.Module, fc: nn.Module) -> None:
        super().__init__()
        self.pool = pool
        self.dropout = dropout
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ``local_pooling`` models (no pool module used) average with view(..).mean(-1): the same mean.
        pooled = self.pool(x).flatten(1) if self.pool is not None else x.mean(dim=(2, 3))
        return self.fc(self.dropout(pooled))


def block_names(backbone: nn.Module) -> tuple[list[str], dict[str, int]]:
    """``block0..blockN`` plus ``stageJ`` aliases: the last block of each run of equal output width."""
    blocks = list(backbone._blocks)
    names = [f"block{i}" for i in range(len(blocks))]
    stages: dict[str, int] = {}
    widths = [int(getattr(b._block_args, "output_filters", -1)) for b in blocks]
    stage = 0
    for i, width in enumerate(widths):
        if i == len(widths) - 1 or widths[i + 1] != width:
            stages[f"stage{stage}"] = i
            stage += 1
    return names, stages


class EfficientNetAdapter:
    expects = (
        "an EfficientNet with _conv_stem, _bn0, _blocks (MBConv), _conv_head, _bn1, _avg_pooling, _dropout, _fc "
        "(lukemelas EfficientNet-PyTorch / efficientnet-lite-pytorch layout)"
    )

    def accepts(self, backbone: nn.Module) -> bool:
        return all(hasattr(backbone, part) for part in _PARTS) and isinstance(backbone._blocks, nn.ModuleList)

    def build(self, backbone: nn.Module, request: ExitRequest) -> MultiExitModel:
        b = backbone
        blocks = list(b._blocks)
        if not blocks:
            raise ModelError("the EfficientNet has no MBConv blocks to put exits between")
        params = b._global_params
        base_rate = getattr(params, "drop_connect_rate", None)
        wrapped = [
            MBConvStage(block, base_rate * float(i) / len(blocks) if base_rate else base_rate)
            for i, block in enumerate(blocks)
        ]
        stem = nn.Sequential(b._conv_stem, b._bn0, b._swish)
        head_conv = nn.Sequential(b._conv_head, b._bn1, b._swish)
        stages = [nn.Sequential(stem, wrapped[0]), *wrapped[1:], head_conv]
        names, aliases = block_names(b)
        names = [*names, "head_conv"]
        exits = tuple(aliases.get(e, e) if isinstance(e, str) else e for e in request.exits)
        local = bool(getattr(params, "local_pooling", False))
        final = EfficientNetClassifier(None if local else b._avg_pooling, b._dropout, b._fc)
        return assemble(
            stages,
            names,
            dataclasses.replace(request, exits=exits),
            final,
            "backbone",
            layout="NCHW",
            what=f"EfficientNet (stages: {', '.join(f'{k}=block{v}' for k, v in aliases.items())})",
        )


ADAPTERS.register("efficientnet")(EfficientNetAdapter())
