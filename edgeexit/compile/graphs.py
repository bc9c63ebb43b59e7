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
from edgeexit.criteria.learned import GATE_EPSILON, GATE_HIDDEN, GATE_MAX_CLASSES, gate_feature_count
from edgeexit.errors import ModelError
from edgeexit.manifest import LEARNED_CRITERION

#: The buffer a segment's exit score divides its logits by; export turns it into the graph input
#: ``temperature_input(k)`` with a default of 1 (``exporter.expose_initializer``), so a calibrated
#: temperature is fed at run time and the score never has to be recomputed in numpy on the device.
TEMPERATURE_BUFFER = "exit_temperature"


def temperature_input(k: int) -> str:
    """The graph input of segment ``k`` that sets its exit score's temperature."""
    return f"exit_{k}_temperature"


#: The buffers a ``learned`` exit's gate reads its weights from (w1, b1, w2, b2); export turns
#: them into the graph inputs ``gate_inputs(k)``, whose defaults (w1 = 0, b1 = 0, w2 = 1, b2 = 0)
#: score 0.5 everywhere: an untrained gate never exits. Distinct defaults, so that no exporter
#: pass merges two of them into one initializer.
GATE_BUFFERS = ("exit_gate_w1", "exit_gate_b1", "exit_gate_w2", "exit_gate_b2")


def gate_inputs(k: int) -> tuple[str, ...]:
    """The graph inputs of segment ``k`` its ``learned`` exit gate takes, in GATE_BUFFERS' order."""
    return tuple(f"exit_{k}_gate_{name.rsplit('_', 1)[1]}" for name in GATE_BUFFERS)


class GateScore(nn.Module):
    """``edgeexit.criteria.learned`` in torch, op for op: the features of the tempered softmax,
    then sigmoid(relu(features @ w1 + b1) @ w2 + b2), the weights read from buffers."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes
        features = gate_feature_count(classes)
        self.register_buffer(GATE_BUFFERS[0], torch.zeros(features, GATE_HIDDEN))
        self.register_buffer(GATE_BUFFERS[1], torch.zeros(GATE_HIDDEN))
        self.register_buffer(GATE_BUFFERS[2], torch.ones(GATE_HIDDEN))
        self.register_buffer(GATE_BUFFERS[3], torch.zeros(1))

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = (getattr(self, name) for name in GATE_BUFFERS)
        first, second = top_two(probs)
        entropy = -(probs * torch.log(probs.clamp_min(GATE_EPSILON))).sum(dim=-1)
        negentropy = 1.0 - entropy / math.log(self.classes) if self.classes > 1 else 1.0 - entropy
        log_ratio = torch.log(first.clamp_min(GATE_EPSILON)) - torch.log(second.clamp_min(GATE_EPSILON))
        parts = [torch.stack([first, second, negentropy, log_ratio], dim=1)]
        if self.classes <= GATE_MAX_CLASSES:
            parts.append(probs)
        features = torch.cat(parts, dim=1)
        hidden = torch.relu(features @ w1 + b1)
        return torch.sigmoid(hidden @ w2 + b2)


def top_two(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-1 and top-2 probabilities without a sort: ``topk`` becomes a sort op that the LiteRT
    runtime cannot load (``STABLEHLO_SORT``), so the top-1's position is masked out by its one-hot
    instead. Ties keep both values, as ``topk`` does; every value is exactly the input's."""
    first = probs.max(dim=-1).values
    if probs.shape[-1] < 2:
        return first, torch.zeros_like(first)
    positions = torch.arange(probs.shape[-1], device=probs.device)
    top = (positions == probs.argmax(dim=-1, keepdim=True)).to(probs.dtype)  # one-hot (no one_hot: it asserts)
    return first, (probs - 2.0 * top).max(dim=-1).values


def exit_score(logits: torch.Tensor, criterion: str) -> torch.Tensor:
    """Confidence of one exit from (temperature-scaled) logits."""
    return score_from_probabilities(torch.softmax(logits, dim=-1), criterion)


def score_from_probabilities(probs: torch.Tensor, criterion: str) -> torch.Tensor:
    """Confidence of one exit from its softmax."""
    if criterion == "max_prob":
        return probs.max(dim=-1).values
    if criterion == "margin":
        first, second = top_two(probs)
        return first - second
    if criterion == "entropy":
        entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=-1)
        return 1.0 - entropy / math.log(probs.shape[-1]) if probs.shape[-1] > 1 else 1.0 - entropy  # 0/0 at 1 class
    raise ModelError(f"criterion {criterion!r} cannot be computed inside the graph")


def segment_output_names(model: MultiExitModel, k: int, criterion: str | None) -> list[str]:
    names = [] if k == model.num_exits - 1 else boundary_names(model, k)
    if model.head(k) is not None:
        names.append(f"exit_{k}_logits")
        if criterion is not None:
            names += [f"exit_{k}_score", f"exit_{k}_probabilities"]
    return names


def boundary_names(model: MultiExitModel, k: int) -> list[str]:
    """Boundary ``k``'s tensors as segment k emits them and segment k+1 takes them: the hidden
    tensor its exit reads, then whatever else later segments still need."""
    return [f"hidden_{k}", *model.carried[k]]


def segment_input_names(model: MultiExitModel, k: int) -> list[str]:
    """Segment ``k``'s graph inputs: boundary k-1 (or the model input), then its context inputs."""
    carried = [model.input_name] if k == 0 else boundary_names(model, k - 1)
    context = model.context_names if model.context_everywhere or k == 0 else ()
    return [*carried, *context]


class SegmentGraph(nn.Module):
    """Segment ``k`` with its exit head: (input, *context) -> (hidden_k?, exit_k_logits?,
    exit_k_score?, exit_k_probabilities?).

    Score and probabilities come from the logits divided by the temperature buffer (1 unless fed).

    Context inputs (a transformer's attention mask) go to the body and the head of every segment."""

    def __init__(self, model: MultiExitModel, k: int, criterion: str | None) -> None:
        super().__init__()
        self.body = model.segments[k]
        self.head = model.head(k)
        self.last = k == model.num_exits - 1
        self.criterion = criterion
        if self.head is not None and criterion is not None:
            # a constant 1 here (and in TFLite graphs); an overridable graph input in ONNX ones
            self.register_buffer(TEMPERATURE_BUFFER, torch.ones(1))
        if criterion == LEARNED_CRITERION and self.last:
            self.criterion = "max_prob"  # the final exit answers anyway: no gate to pay for there
        learned = self.head is not None and self.criterion == LEARNED_CRITERION
        self.gate = GateScore(model.num_classes) if learned else None
        #: how many leading outputs are boundary k's tensors (0 for the last segment)
        self.carries = 0 if self.last else len(boundary_names(model, k))
        #: how many leading inputs are boundary k-1's tensors (segment 0: the model input)
        self.takes = 1 if k == 0 else len(boundary_names(model, k - 1))
        self.head_context = model.context_everywhere

    @property
    def scores_in_graph(self) -> bool:
        """Whether this segment's graph computes its exit's score (and so has a temperature)."""
        return self.head is not None and self.criterion is not None

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``inputs``: boundary k-1's tensors (or the model input), then the segment's context."""
        result = self.body(*inputs)
        carried = result if isinstance(result, tuple) else (result,)
        hidden = carried[0]
        outputs: list[torch.Tensor] = [] if self.last else list(carried)
        if self.head is not None:
            context = inputs[self.takes :] if self.head_context else ()
            logits = self.head(hidden, *context)
            outputs.append(logits)
            if self.criterion is not None:
                # the softmax the score needs is an output too: the runtime's Result reads it
                probabilities = torch.softmax(logits / getattr(self, TEMPERATURE_BUFFER), dim=-1)
                if self.gate is not None:
                    score = self.gate(probabilities)
                else:
                    score = score_from_probabilities(probabilities, self.criterion)
                outputs += [score, probabilities]
        return tuple(outputs)


class MonolithicGraph(nn.Module):
    """All segments in one graph, emitting every exit's logits and scores (full depth)."""

    def __init__(self, model: MultiExitModel, criterion: str | None) -> None:
        super().__init__()
        self.parts = nn.ModuleList(SegmentGraph(model, k, criterion) for k in range(model.num_exits))
        self.model_context = model.segment_context

    def forward(self, x: torch.Tensor, *context: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs: list[torch.Tensor] = []
        carried: tuple[torch.Tensor, ...] = (x,)
        for k, part in enumerate(self.parts):
            result = part(*carried, *self.model_context(k, context))
            carried = result[: part.carries]
            outputs.extend(result[part.carries :])
        return tuple(outputs)


def monolithic_output_names(model: MultiExitModel, criterion: str | None) -> list[str]:
    names: list[str] = []
    for k in range(model.num_exits):
        names += [n for n in segment_output_names(model, k, criterion) if not n.startswith("hidden_")]
    return names
