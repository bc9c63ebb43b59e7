"""Adapters turn an existing backbone into a ``MultiExitModel`` without copying its weights.

One module per backbone family, registered by name. ``attach_exits`` asks each adapter in turn
whether it recognises the backbone (duck typing, the way torchvision and timm lay models out),
so users need no wrapper classes; ``adapter=`` forces one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from edgeexit.compile.adapters import bert, efficientnet, resnet, sequential, vit  # noqa: F401  (they register themselves)
from edgeexit.compile.adapters.base import ADAPTERS, Adapter, ExitRequest
from edgeexit.compile.model import MultiExitModel
from edgeexit.errors import EdgeExitError, ModelError


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
) -> MultiExitModel:
    """Put exit heads after the given boundaries of ``backbone``.

    ``exits`` are boundary positions in the adapter's terms (``nn.Sequential``: indices of the
    child after which to exit; ResNet: 1..3 for after layer1..layer3, or the names; ViT: block
    indices). ``head`` is one registered head name for all exits or one per exit (``None``: no
    classifier, for the similarity criterion). ``final_head`` replaces the backbone's own
    classifier when given. ``input_shape`` materializes lazy layers right away.
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
    for name in ADAPTERS.names():
        candidate = ADAPTERS.get(name)
        if candidate.accepts(backbone):
            return candidate
    expected = "; ".join(f"{n}: {ADAPTERS.get(n).expects}" for n in ADAPTERS.names())
    raise ModelError(
        f"cannot split a {type(backbone).__name__}: no adapter recognises it. Expected one of — {expected}"
    )


def list_adapters(pattern: str = "*") -> list[str]:
    return ADAPTERS.names(pattern)


__all__ = ["ADAPTERS", "attach_exits", "list_adapters"]
