"""Zoo entries for real workloads: pretrained backbones re-headed for a small labelled task.

``efficientnet_lite0_fashion`` is EfficientNet-Lite0 (ImageNet weights, or random init for the
from-scratch baseline) that takes Fashion-MNIST as it comes, 1x28x28 grayscale in [0, 1]: segment 0
resizes to the chosen resolution, repeats the gray channel into RGB and applies the ImageNet
normalization, so a device hands the package its raw pixels and does no preprocessing of its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeexit.compile.adapters import attach_exits
from edgeexit.compile.model import MultiExitModel
from edgeexit.compile.zoo import (
    EFFICIENTNET_PIP,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalize,
    pretrained_efficientnet_lite0,
    register_model,
)
from edgeexit.errors import ModelError

#: Exits of the Fashion-MNIST model: after block 2 (end of the 24-channel stage, ~8% of the
#: backbone's multiply-adds at any resolution), after block 4 (40 channels) and block 7 (80).
FASHION_EXITS: tuple[int | str, ...] = ("stage1", "stage2", "stage3")


class InputAdapter(nn.Module):
    """Resize to ``size`` x ``size`` (bilinear, as torchvision's Resize without antialias) and
    repeat a single gray channel into ``channels`` (RGB for an ImageNet stem).

    Part of the graph (ONNX Resize + Expand), so the package's input is the dataset's native
    shape; resizing one channel before the repeat costs a third of resizing three."""

    def __init__(self, size: int, channels: int = 3) -> None:
        super().__init__()
        self.size = int(size)
        self.channels = int(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if x.shape[1] == 1 and self.channels != 1:
            x = x.expand(-1, self.channels, -1, -1)
        return x


def efficientnet_lite0_backbone(pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, or the same architecture randomly initialized."""
    if pretrained:
        return pretrained_efficientnet_lite0()
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ModelError(
            f"EfficientNet-Lite0 needs the package efficientnet-lite-pytorch, which is not installed ({err}). "
            f"Install it with: {EFFICIENTNET_PIP}"
        ) from None
    return EfficientNet.from_name("efficientnet-lite0")


@register_model
def efficientnet_lite0_fashion(
    resolution: int = 32,
    exits: tuple[int | str, ...] | list[int | str] = FASHION_EXITS,
    head: str | list[str | None] = "conv",
    width: int = 64,
    num_classes: int = 10,
    in_channels: int = 1,
    size: int = 28,
    pretrained: bool = True,
) -> MultiExitModel:
    """EfficientNet-Lite0 for ``in_channels`` x ``size`` x ``size`` images in [0, 1], ``num_classes`` classes.

    The 1000-class ImageNet fc is replaced by a fresh ``num_classes`` one (the final exit stays the
    backbone's own pool + dropout + fc); early exits get ``head`` heads ``width`` channels wide.
    Segment 0 starts with ``InputAdapter(resolution)`` and the ImageNet ``Normalize``."""
    if not 16 <= resolution <= 512:
        raise ModelError(f"resolution {resolution} is out of range; expected 16..512 pixels (e.g. 32, 64, 96)")
    if in_channels not in (1, 3):
        raise ModelError(f"in_channels {in_channels} is not supported; expected 1 (gray) or 3 (RGB)")
    backbone = efficientnet_lite0_backbone(pretrained)
    backbone._fc = nn.Linear(backbone._fc.in_features, num_classes)
    model = attach_exits(
        backbone, exits=list(exits), head=head, head_options={"width": width}, num_classes=num_classes,
        adapter="efficientnet", name="efficientnet_lite0_fashion",
    )  # fmt: skip
    model.segments[0] = nn.Sequential(
        InputAdapter(resolution), Normalize(IMAGENET_MEAN, IMAGENET_STD), model.segments[0]
    )
    model.materialize((1, in_channels, size, size))
    return model.eval()


__all__ = ["FASHION_EXITS", "InputAdapter", "efficientnet_lite0_backbone", "efficientnet_lite0_fashion"]
