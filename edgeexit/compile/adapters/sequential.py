"""A plain ``nn.Sequential``: exits after the children at the given indices.

The Sequential's own output is the final exit's logits unless ``final_head`` is given (for a
Sequential that ends in features rather than a classifier).
"""

from __future__ import annotations

from torch import nn

from edgeexit.compile.adapters.base import ADAPTERS, ExitRequest, assemble
from edgeexit.compile.model import MultiExitModel


class SequentialAdapter:
    expects = "an nn.Sequential (exits after child indices)"

    def accepts(self, backbone: nn.Module) -> bool:
        return isinstance(backbone, nn.Sequential)

    def build(self, backbone: nn.Module, request: ExitRequest) -> MultiExitModel:
        stages = list(backbone.children())
        names = [str(i) for i in range(len(stages))]  # exits=[2] or exits=["2"]
        return assemble(stages, names, request, nn.Identity(), "backbone", layout="NCHW", what="nn.Sequential")


ADAPTERS.register("sequential")(SequentialAdapter())
