"""The torch modules that become ONNX graphs: one per segment, and the monolithic whole.

Each segment graph emits the boundary's hidden tensor (for the next segment, or for offload)
and its exit's logits plus a confidence score computed in the graph, so the device needs no
extra numpy pass for the common criteria. Scores share one convention: a confidence in
[0, 1], exit when ``score >= threshold``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgeexit.compile.model import MultiExitModel
from edgeexit.errors import ModelError


def exit_score(logits: torch.Tensor, criterion: str) -> torch.Tensor:
    """Confidence of one exit at temperature 1 (the runtime rescales for calibrated temperatures)."""
    probs = torch.softmax(logits, dim=-1)
    if criterion == "max_prob":
        return probs.max(dim=-1).values
    if criterion == "margin":
        top = torch.topk(probs, k=min(2, probs.shape[-1]), dim=-1).values
        return top[:, 0] - top[:, -1] if top.shape[-1] > 1 else top[:, 0]
    if criterion == "entropy":
        entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=-1)
        return 1.0 - entropy / math.log(probs.shape[-1]) if probs.shape[-1] > 1 else 1.0 - entropy  # 0/0 at 1 class
    raise ModelError(f"criterion {criterion!r} cannot be computed inside the graph")


def segment_output_names(model: MultiExitModel, k: int, criterion: str | None) -> list[str]:
    names = [] if k == model.num_exits - 1 else [f"hidden_{k}"]
    if model.head(k) is not None:
        names.append(f"exit_{k}_logits")
        if criterion is not None:
            names.append(f"exit_{k}_score")
    return names


def segment_input_name(k: int, model_input: str) -> str:
    return model_input if k == 0 else f"hidden_{k - 1}"


class SegmentGraph(nn.Module):
    """Segment ``k`` with its exit head: (input, *context) -> (hidden_k?, exit_k_logits?, exit_k_score?).

    Context inputs (a transformer's attention mask) go to the body and the head of every segment."""

    def __init__(self, model: MultiExitModel, k: int, criterion: str | None) -> None:
        super().__init__()
        self.body = model.segments[k]
        self.head = model.head(k)
        self.last = k == model.num_exits - 1
        self.criterion = criterion

    def forward(self, x: torch.Tensor, *context: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hidden = self.body(x, *context)
        outputs: list[torch.Tensor] = [] if self.last else [hidden]
        if self.head is not None:
            logits = self.head(hidden, *context)
            outputs.append(logits)
            if self.criterion is not None:
                outputs.append(exit_score(logits, self.criterion))
        return tuple(outputs)


class MonolithicGraph(nn.Module):
    """All segments in one graph, emitting every exit's logits and scores (full depth)."""

    def __init__(self, model: MultiExitModel, criterion: str | None) -> None:
        super().__init__()
        self.parts = nn.ModuleList(SegmentGraph(model, k, criterion) for k in range(model.num_exits))

    def forward(self, x: torch.Tensor, *context: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs: list[torch.Tensor] = []
        for part in self.parts:
            result = part(x, *context)
            if part.last:
                outputs.extend(result)
            else:
                x = result[0]
                outputs.extend(result[1:])
        return tuple(outputs)


def monolithic_output_names(model: MultiExitModel, criterion: str | None) -> list[str]:
    names: list[str] = []
    for k in range(model.num_exits):
        names += [n for n in segment_output_names(model, k, criterion) if not n.startswith("hidden_")]
    return names
