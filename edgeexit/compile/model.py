"""``MultiExitModel``: a backbone cut into segments, with an exit head at each cut.

Segment ``k`` runs from boundary ``k-1`` to boundary ``k``; exit ``k`` reads boundary ``k``.
The last exit is the final classifier. The segments hold the backbone's own modules (no
copies), so training the exits fine-tunes, or with a frozen backbone leaves alone, the very
weights the user brought.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from edgeexit.compile.heads import TokenLayout
from edgeexit.errors import ModelError


@dataclass(frozen=True)
class ExitInfo:
    """What export needs to know about an exit besides its module."""

    head: str | None  # registry name, "backbone" for the backbone's own classifier, None: no classifier
    boundary: str  # human-readable place in the backbone, e.g. "after layer2"


class MultiExitModel(nn.Module):
    """Ordered segments and one exit per segment boundary (the last one is the final exit).

    ``heads[k]`` is ``None`` for a boundary without a classifier: such an exit can only stop
    inference through the similarity criterion (MuE), and ``forward`` yields ``None`` for it.

    ``context_names`` name inputs given once per request and handed unchanged to every segment
    and head besides the hidden tensor (a transformer's ``attention_mask``): those modules are
    called ``module(x, *context)``. Image models have none.
    """

    def __init__(
        self,
        segments: Sequence[nn.Module],
        heads: Sequence[nn.Module | None],
        infos: Sequence[ExitInfo],
        *,
        name: str,
        num_classes: int,
        layout: str = "NCHW",
        token_layout: TokenLayout | None = None,
        context_names: Sequence[str] = (),
        input_name: str = "input",
    ) -> None:
        super().__init__()
        if not segments:
            raise ModelError("a multi-exit model needs at least one segment")
        if not (len(segments) == len(heads) == len(infos)):
            raise ModelError(f"expected one head per segment; got {len(segments)} segments, {len(heads)} heads")
        if heads[-1] is None:
            raise ModelError("the last segment must end in a classifier (the final exit)")
        self.segments = nn.ModuleList(segments)
        self.heads = nn.ModuleDict({str(k): head for k, head in enumerate(heads) if head is not None})
        self.infos = tuple(infos)
        self.name = name
        self.num_classes = num_classes
        self.layout = layout
        self.token_layout = token_layout or TokenLayout()
        self.context_names = tuple(context_names)
        self.input_name = input_name
        #: a ``tokenizers`` JSON file export copies into the package (text encoders)
        self.tokenizer_file: str | None = None

    #: Whether context inputs go to every segment and head (a text encoder's mask), or only to
    #: segment 0 as further model inputs that later segments get through the boundaries (generic).
    context_everywhere = True

    @property
    def num_exits(self) -> int:
        return len(self.segments)

    @property
    def carried(self) -> tuple[tuple[str, ...], ...]:
        """Per boundary with a later segment, the names of the tensors it carries besides its
        hidden tensor (``hidden_k_1``, ...), in the order segment k emits them. Empty here: the
        family adapters' boundaries are one tensor each."""
        return ((),) * (len(self.segments) - 1)

    def segment_context(self, k: int, context: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The context inputs segment ``k`` takes after its boundary tensors."""
        return tuple(context) if self.context_everywhere or k == 0 else ()

    def head(self, k: int) -> nn.Module | None:
        return self.heads[str(k)] if str(k) in self.heads else None  # noqa: SIM401 (ModuleDict has no get)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The weights the user brought (segments and the backbone's own final classifier)."""
        params = list(self.segments.parameters())
        if self.infos[-1].head == "backbone":
            params += list(self.heads[str(self.num_exits - 1)].parameters())
        return params

    def forward(
        self, x: torch.Tensor, *context: torch.Tensor, return_hidden: bool = False
    ) -> list[torch.Tensor | None] | tuple[list[torch.Tensor | None], list[torch.Tensor]]:
        if len(context) != len(self.context_names):
            raise ModelError(
                f"model {self.name!r} takes {len(self.context_names)} context input(s) "
                f"{list(self.context_names)} besides x; got {len(context)}"
            )
        outputs: list[torch.Tensor | None] = []
        hidden: list[torch.Tensor] = []
        carried: tuple[torch.Tensor, ...] = (x,)  # boundary k-1: one tensor, or several (generic adapter)
        head_context = context if self.context_everywhere else ()
        for k, segment in enumerate(self.segments):
            if k > 0 and (return_hidden or torch.is_grad_enabled()):
                # The next segment may start in place (ReLU(inplace=True) after the cut), which would
                # overwrite boundary k-1 under its exit head's autograd graph and the returned hidden.
                carried = tuple(t.clone() for t in carried)
            result = segment(*carried, *self.segment_context(k, context))
            carried = result if isinstance(result, tuple) else (result,)
            hidden.append(carried[0])
            head = self.head(k)
            outputs.append(head(carried[0], *head_context) if head is not None else None)
        return (outputs, hidden) if return_hidden else outputs

    def example_inputs(self, input_shape: Sequence[int]) -> tuple[torch.Tensor, ...]:
        """Placeholder inputs of ``input_shape``: zeros for images; for a model with context
        inputs (a text encoder), token ids of 0 and all-ones context (every token attended)."""
        shape = tuple(input_shape)
        if not self.context_names:
            return (torch.zeros(shape),)
        ids = torch.zeros(shape, dtype=torch.long)
        return (ids, *(torch.ones(shape, dtype=torch.long) for _ in self.context_names))

    @torch.no_grad()
    def materialize(self, input_shape: Sequence[int]) -> None:
        """Run one dummy batch so lazy head layers learn their input widths.

        Runs in eval mode so batch-norm statistics are left as they were.
        """
        was_training = self.training
        self.eval()
        try:
            self(*self.example_inputs(input_shape))
        except Exception as err:
            raise ModelError(
                f"model {self.name!r} rejected an input of shape {tuple(input_shape)}: {err}; "
                "expected the shape the backbone was built for (batch, channels, height, width)"
            ) from None
        finally:
            self.train(was_training)
