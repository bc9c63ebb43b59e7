"""ResNet-style networks laid out the way torchvision builds them.

Duck-typed: ``conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc``. Stages are the stem
and the four layers; exits go after layer1..layer3 (by index 1..3 or by name); the backbone's
own ``avgpool`` + ``fc`` is the final exit.
"""

from __future__ import annotations

from torch import nn

from edgeexit.compile.adapters.base import ADAPTERS, ExitRequest, assemble
from edgeexit.compile.model import MultiExitModel

_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc")


class ResNetAdapter:
    expects = "a ResNet with conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc (torchvision layout)"

    def accepts(self, backbone: nn.Module) -> bool:
        return all(hasattr(backbone, part) for part in _PARTS)

    def build(self, backbone: nn.Module, request: ExitRequest) -> MultiExitModel:
        b = backbone
        stem = nn.Sequential(b.conv1, b.bn1, b.relu, b.maxpool)
        stages = [stem, b.layer1, b.layer2, b.layer3, b.layer4]
        names = ["stem", "layer1", "layer2", "layer3", "layer4"]
        final = nn.Sequential(b.avgpool, nn.Flatten(1), b.fc)
        return assemble(stages, names, request, final, "backbone", layout="NCHW", what="ResNet")


ADAPTERS.register("resnet")(ResNetAdapter())
