"""The adapter interface and the parts every adapter shares."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from torch import nn

from edgeexit.compile.heads import TokenLayout, create_head
from edgeexit.compile.model import ExitInfo, MultiExitModel
from edgeexit.errors import EdgeExitError, ModelError
from edgeexit.registry import Registry


@dataclass(frozen=True)
class ExitRequest:
    exits: tuple[int | str, ...]
    heads: tuple[str | None, ...]
    num_classes: int
    final_head: str | None
    head_options: dict[str, object] = field(default_factory=dict)
    pool: str = "cls"
    name: str = "model"
    #: what the generic adapter traces the backbone with: ``examples`` (one tensor per model
    #: input), else seeded random inputs of ``input_shape``; family adapters need neither
    input_shape: tuple[int, ...] | None = None
    examples: tuple[object, ...] = ()


class Adapter(Protocol):
    #: One line naming the layout the adapter recognises (used in "cannot split" errors).
    expects: str

    def accepts(self, backbone: nn.Module) -> bool: ...

    def build(self, backbone: nn.Module, request: ExitRequest) -> MultiExitModel: ...


ADAPTERS: Registry[Adapter] = Registry("adapter")


def make_head(name: str | None, request: ExitRequest, layout: TokenLayout) -> nn.Module | None:
    if name is None:
        return None
    try:
        return create_head(name, request.num_classes, layout, **request.head_options)
    except EdgeExitError as err:
        raise ModelError(str(err)) from None
    except TypeError as err:
        raise ModelError(f"head {name!r} rejected options {request.head_options}: {err}") from None


def resolve_boundaries(requested: Sequence[int | str], names: Sequence[str], what: str) -> list[int]:
    """Map exit positions (indices or names) onto stage indices, strictly increasing."""
    if not names:
        raise ModelError(f"{what} has no stages to put exits between; expected at least one layer")
    positions = []
    for item in requested:
        if isinstance(item, str) and not item.lstrip("-").isdigit():
            if item not in names:
                raise ModelError(f"{what} has no stage {item!r}; expected one of {list(names)}")
            positions.append(names.index(item))
        elif isinstance(item, str):
            positions.append(int(item))
        elif isinstance(item, bool) or not hasattr(item, "__index__"):
            raise ModelError(
                f"{what}: exit position {item!r} is not a stage index; expected an int or one of {list(names)}"
            )
        else:
            positions.append(operator.index(item))
    last = len(names) - 1
    for p in positions:
        if not 0 <= p < last:
            raise ModelError(
                f"{what}: cannot exit after stage {p}; expected indices 0..{last - 1} "
                f"(exiting after the last stage {last} is the final exit)"
            )
    if positions != sorted(set(positions)):
        raise ModelError(f"{what}: exit positions {list(requested)} must be strictly increasing")
    return positions


def group_stages(stages: Sequence[nn.Module], boundaries: Sequence[int]) -> list[nn.Sequential]:
    """Cut the stage list after each boundary: segment k ends with stage boundaries[k]."""
    segments, start = [], 0
    for end in [*boundaries, len(stages) - 1]:
        segments.append(nn.Sequential(*stages[start : end + 1]))
        start = end + 1
    return segments


def assemble(
    stages: Sequence[nn.Module],
    stage_names: Sequence[str],
    request: ExitRequest,
    final: nn.Module,
    final_name: str,
    *,
    layout: str,
    token_layout: TokenLayout | None = None,
    what: str,
) -> MultiExitModel:
    boundaries = resolve_boundaries(request.exits, stage_names, what)
    tokens = token_layout or TokenLayout()
    heads = [make_head(h, request, tokens) for h in request.heads]
    place = [f"after stage {n}" if n.isdigit() else f"after {n}" for n in stage_names]
    infos = [ExitInfo(h, place[b]) for h, b in zip(request.heads, boundaries, strict=True)]
    if request.final_head is not None:
        final = make_head(request.final_head, request, tokens)  # type: ignore[assignment]
        final_name = request.final_head
    infos.append(ExitInfo(final_name, place[-1]))
    return MultiExitModel(
        group_stages(stages, boundaries),
        [*heads, final],
        infos,
        name=request.name,
        num_classes=request.num_classes,
        layout=layout,
        token_layout=tokens,
    )
