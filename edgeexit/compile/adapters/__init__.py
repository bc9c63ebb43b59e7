"""Adapters turn an existing backbone into a ``MultiExitModel`` without copying its weights.

One module per backbone family, registered by name. ``attach_exits`` asks each adapter in turn
whether it recognises the backbone (duck typing, the way torchvision and timm lay models out),
so users need no wrapper classes; ``adapter=`` forces one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from edgeexit.compile.adapters import bert, efficientnet, generic, resnet, sequential, vit  # noqa: F401  (they register themselves)
from edgeexit.compile.adapters.base import ADAPTERS, Adapter, ExitRequest
from edgeexit.compile.model import MultiExitModel
from edgeexit.errors import EdgeExitError, ModelError

GENERIC = "generic"


def attach_exits(
    backbone: nn.Module,
    exits: Sequence[int | str],
    head: str | Sequence[str | None] = "linear",
    num_classes: int = 10,
    *,
    final_head: str | None = None,
    head_options: Mapping[str, object] | None = None,
    pool: str = "cls",
    adapter: str | None = None,
    name: str | None = None,
    input_shape: Sequence[int] | None = None,
    example_inputs: Sequence[torch.Tensor] = (),
) -> MultiExitModel:
    """Put exit heads after the given boundaries of ``backbone``.

    ``exits`` are boundary positions in the adapter's terms (``nn.Sequential``: indices of the
    child after which to exit; ResNet: 1..3 for after layer1..layer3, or the names; ViT: block
    indices). ``head`` is one registered head name for all exits or one per exit (``None``: no
    classifier, for the similarity criterion). ``final_head`` replaces the backbone's own
    classifier when given. ``input_shape`` materializes lazy layers right away.

    A backbone no family adapter recognises (or ``adapter="generic"``) is traced with
    ``torch.export`` and cut at ``exits`` named by module path (``"features.3"``: that module's
    output) or exported node; every tensor a later segment reads crosses each boundary
    (``edgeexit.compile.adapters.generic``). It needs ``input_shape`` or, for several inputs,
    ``example_inputs`` (one tensor per input, batch first) to trace with.
    """
    heads = [head] * len(exits) if isinstance(head, str) else list(head)
    if len(heads) != len(exits):
        raise ModelError(f"got {len(exits)} exits but {len(heads)} head names; expected one per exit")
    request = ExitRequest(
        exits=tuple(exits),
        heads=tuple(heads),
        num_classes=num_classes,
        final_head=final_head,
        head_options=dict(head_options or {}),
        pool=pool,
        name=name or type(backbone).__name__.lower(),
        input_shape=tuple(int(d) for d in input_shape) if input_shape is not None else None,
        examples=tuple(example_inputs),
    )
    chosen = _forced(adapter, backbone) if adapter else _detect(backbone)
    model = chosen.build(backbone, request)
    if input_shape is not None:
        model.materialize(input_shape)
    return model


def _forced(name: str, backbone: nn.Module) -> Adapter:
    try:
        chosen = ADAPTERS.get(name)
    except EdgeExitError as err:
        raise ModelError(str(err)) from None
    if not chosen.accepts(backbone):
        raise ModelError(f"adapter {name!r} cannot split a {type(backbone).__name__}; expected {chosen.expects}")
    return chosen


def _detect(backbone: nn.Module) -> Adapter:
    families = [n for n in ADAPTERS.names() if n != GENERIC]
    for name in families:
        candidate = ADAPTERS.get(name)
        if candidate.accepts(backbone):
            return candidate
    return _Fallback(families)


class _Fallback:
    """The generic adapter for a backbone no family claims; its errors also name the families."""

    expects = "any traceable model"

    def __init__(self, families: Sequence[str]) -> None:
        self.families = families

    def accepts(self, backbone: nn.Module) -> bool:
        return True

    def build(self, backbone: nn.Module, request: ExitRequest) -> MultiExitModel:
        try:
            return ADAPTERS.get(GENERIC).build(backbone, request)
        except ModelError as err:
            expected = "; ".join(f"{n}: {ADAPTERS.get(n).expects}" for n in self.families)
            raise ModelError(
                f"cannot split a {type(backbone).__name__}: no family adapter recognises it (expected one of — "
                f"{expected}), and the generic adapter could not cut it: {err}"
            ) from None


def list_adapters(pattern: str = "*") -> list[str]:
    return ADAPTERS.names(pattern)


__all__ = ["ADAPTERS", "attach_exits", "list_adapters"]
