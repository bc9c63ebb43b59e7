"""Where a network can be cut, and what each cut costs: Neurosurgeon's view of a traced graph.

A good split point has few, small tensors crossing it and much of the compute before it (the
device does its share, the link carries little). For every module of a traced model whose output
is a place the generic adapter can cut, this lists the tensors crossing that cut (the module's
output and every value a later layer still reads), their bytes per sample, and the FLOPs one
sample costs before it, counted by PyTorch's FlopCounterMode node by node in one pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

from edgeexit.compile.adapters.generic import find_cut, is_size, module_paths, trace
from edgeexit.errors import ModelError


@dataclass(frozen=True)
class CutCandidate:
    """One place to cut: after module ``name`` (its last node ``node``)."""

    name: str
    node: str
    tensors: int  # how many tensors cross: the module's output and the live skips
    bytes_per_sample: int  # their size for one sample, at their dtypes
    flops_before: int  # one sample's FLOPs up to and including the module
    flops_total: int

    @property
    def share_before(self) -> float:
        return self.flops_before / self.flops_total if self.flops_total else 0.0


def _sample_bytes(node: fx.Node) -> int | None:
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor):
        return None
    dims = list(value.shape[1:])
    if any(not isinstance(d, int) for d in dims):
        return None  # a dynamic axis besides the batch: no fixed size
    return math.prod(dims) * value.element_size()


class _Counting(fx.Interpreter):
    """Runs the graph once, noting the FLOPs counted so far after every node."""

    def __init__(self, module: fx.GraphModule, counter: FlopCounterMode) -> None:
        super().__init__(module)
        self.counter = counter
        self.after: dict[fx.Node, int] = {}

    def run_node(self, n: fx.Node) -> object:
        result = super().run_node(n)
        self.after[n] = int(self.counter.get_total_flops())
        return result


def candidate_cuts(backbone: nn.Module, examples: Sequence[torch.Tensor]) -> list[CutCandidate]:
    """Every module output the generic adapter could cut at, in the order the model computes them."""
    root = trace(backbone, examples)
    nodes = list(root.graph.nodes)
    position = {node: i for i, node in enumerate(nodes)}
    last_use = {node: max((position[u] for u in node.users), default=position[node]) for node in nodes}
    counter = FlopCounterMode(display=False)
    interpreter = _Counting(root, counter)
    with counter, torch.no_grad():
        interpreter.run(*(e[:1] for e in examples))
    total = int(counter.get_total_flops())
    values = [n for n in nodes if n.op in ("placeholder", "call_function", "call_method", "call_module")]
    found: list[CutCandidate] = []
    seen: set[int] = set()
    for name in module_paths(root.graph):
        try:
            cut = find_cut(root.graph, name).position
        except ModelError:  # a module called twice has no one output to cut after
            continue
        if cut in seen:
            continue
        live = [v for v in values if (position[v] <= cut < last_use[v] or v is nodes[cut]) and not is_size(v)]
        sizes = [_sample_bytes(v) for v in live]  # a batch size in flight is derived again after the cut
        if any(s is None for s in sizes):
            continue  # a scalar in flight: no cut here
        seen.add(cut)
        flops = max((interpreter.after.get(n, 0) for n in nodes[: cut + 1]), default=0)
        found.append(CutCandidate(name, nodes[cut].name, len(live), sum(sizes), flops, total))  # type: ignore[arg-type]
    if not found:
        raise ModelError(f"no module of {type(backbone).__name__} ends where its graph can be cut")
    return found


def plot_cuts(candidates: Sequence[CutCandidate], path: Path, title: str) -> None:
    """Bytes crossing each cut against the share of compute before it; labels give tensor counts."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from edgeexit.fileio import atomic_write_bytes

    figure, axis = plt.subplots(figsize=(9, 4.5))
    shares = [100 * c.share_before for c in candidates]
    kib = [c.bytes_per_sample / 1024 for c in candidates]
    axis.plot(shares, kib, marker="o", linewidth=1)
    for share, size, candidate in zip(shares, kib, candidates, strict=True):
        if candidate.tensors > 1:
            axis.annotate(f"{candidate.tensors}", (share, size), textcoords="offset points", xytext=(0, 6), ha="center")
    axis.set_xlabel("compute before the cut (% of the model's FLOPs)")
    axis.set_ylabel("crossing the cut (KiB per sample)")
    axis.set_title(f"{title}: cut candidates (labels: tensors crossing, where more than one)")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
