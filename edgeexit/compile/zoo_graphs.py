"""Networks no family adapter covers, in torch alone, cut by the generic adapter.

Each is laid out like the architecture users bring (torchvision's MobileNetV2 ``features`` /
``classifier``, a U-Net's encoder-decoder with skips, ConvNeXt's stages of depthwise blocks, a
model with an image and a side input), small enough for the tests. Their exits are named by
module path, so each boundary's carried tensors are whatever the graph needs: the U-Net's skips
cross several cuts, the two-input model carries its side input to the layer that reads it.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeexit.compile.adapters import attach_exits
from edgeexit.compile.model import MultiExitModel
from edgeexit.compile.zoo import register_model


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand 1x1, depthwise 3x3, project 1x1; identity shortcut when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's layout (``features``, ``classifier``) at a tenth of the width."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(in_channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU6(True))
        ]
        cin = width
        for expand, cout, repeats, stride in ((1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 3, 2), (6, 24, 2, 1)):
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers.append(nn.Sequential(nn.Conv2d(cin, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6(True)))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )  # fmt: skip


class UNetClassifier(nn.Module):
    """A small U-Net (encoder ``down1..3``, decoder ``up2..1`` reading the encoder's skips) with
    a classifier on the decoder's output: a cut in the decoder carries the skips it still needs."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 8) -> None:
        super().__init__()
        w = width
        self.down1 = _double_conv(in_channels, w)
        self.down2 = _double_conv(w, 2 * w)
        self.down3 = _double_conv(2 * w, 4 * w)
        self.pool = nn.MaxPool2d(2)
        self.lift2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.up2 = _double_conv(4 * w, 2 * w)
        self.lift1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.up1 = _double_conv(2 * w, w)
        self.classifier = nn.Linear(w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip1 = self.down1(x)
        skip2 = self.down2(self.pool(skip1))
        bottom = self.down3(self.pool(skip2))
        x = self.up2(torch.cat([self.lift2(bottom), skip2], dim=1))
        x = self.up1(torch.cat([self.lift1(x), skip1], dim=1))
        return self.classifier(x.mean(dim=(2, 3)))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt's block: depthwise 7x7, LayerNorm over channels (channels-last), MLP x4, layer scale."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ChannelsFirstNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """timm / torchvision layout: ``stem``, ``stages.i`` (downsample + blocks), ``head``."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, dims: tuple[int, ...] = (16, 24, 32, 48)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, dims[0], 2, stride=2), ChannelsFirstNorm(dims[0]))
        stages = []
        for i, dim in enumerate(dims):
            down: nn.Module = nn.Identity()
            if i > 0:
                down = nn.Sequential(ChannelsFirstNorm(dims[i - 1]), nn.Conv2d(dims[i - 1], dim, 2, 2))
            stages.append(nn.Sequential(down, ConvNeXtBlock(dim), ConvNeXtBlock(dim)))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(self.norm(x.mean(dim=(2, 3))))


class ImageWithMetadata(nn.Module):
    """Two inputs: an image and a vector of side information (a sensor reading, a location) that
    joins only at the classifier, so every boundary before it carries the vector along."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, side: int = 4, width: int = 16) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.block3 = nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU())
        self.side = nn.Linear(side, 2 * width)
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, image: torch.Tensor, metadata: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(image))).mean(dim=(2, 3))
        return self.classifier(torch.cat([x, torch.relu(self.side(metadata))], dim=1))


@register_model
def graph_mobilenet_v2(num_classes: int = 10, in_channels: int = 3, size: int = 32) -> MultiExitModel:
    """MobileNetV2 with exits after ``features.3`` and ``features.6`` (the stride-2 stages' ends)."""
    return attach_exits(
        MobileNetV2(num_classes, in_channels), exits=["features.3", "features.6"], head="linear",
        num_classes=num_classes, adapter="generic", name="graph_mobilenet_v2", input_shape=(2, in_channels, size, size),
    )  # fmt: skip


@register_model
def graph_unet(num_classes: int = 10, in_channels: int = 1, size: int = 28) -> MultiExitModel:
    """The U-Net with exits after the bottom (``down3``: both skips cross) and ``up2`` (one does)."""
    return attach_exits(
        UNetClassifier(num_classes, in_channels), exits=["down3", "up2"], head="linear",
        num_classes=num_classes, adapter="generic", name="graph_unet", input_shape=(2, in_channels, size, size),
    )  # fmt: skip


@register_model
def graph_convnext(num_classes: int = 10, in_channels: int = 3, size: int = 32) -> MultiExitModel:
    """ConvNeXt with exits after its first three stages."""
    return attach_exits(
        ConvNeXt(num_classes, in_channels), exits=["stages.0", "stages.1", "stages.2"], head="linear",
        num_classes=num_classes, adapter="generic", name="graph_convnext", input_shape=(2, in_channels, size, size),
    )  # fmt: skip


@register_model
def graph_two_inputs(num_classes: int = 10, in_channels: int = 1, size: int = 28, side: int = 4) -> MultiExitModel:
    """The image + side-vector model with exits after ``block1`` and ``block2`` (the vector crosses both)."""
    generator = torch.Generator().manual_seed(0)
    examples = (torch.randn(2, in_channels, size, size, generator=generator), torch.randn(2, side, generator=generator))
    return attach_exits(
        ImageWithMetadata(num_classes, in_channels, side), exits=["block1", "block2"], head="linear",
        num_classes=num_classes, adapter="generic", name="graph_two_inputs", example_inputs=examples,
    )  # fmt: skip
