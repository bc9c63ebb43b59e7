"""BERT-like text encoders: token embeddings, then encoder layers, no classifier of their own.

Duck-typed like Hugging Face's ``BertModel`` (``embeddings`` and ``encoder.layer[i]``; an optional
``pooler`` is left unused), so MiniLM, BERT, RoBERTa-style models load with transformers and need
no wrapper. Stages are ``embeddings + layer0``, ``layer1``, ...; exit ``i`` sits after layer ``i``.

Every segment takes the ``(N, L)`` 0/1 ``attention_mask`` besides its tensor (``context_names``):
segment 0 is ``segment(input_ids, attention_mask)``, later ones ``segment(hidden, attention_mask)``,
heads ``head(hidden, attention_mask)``. The additive mask the layers want is rebuilt from it inside
each segment, so the device carries one small int64 tensor instead of an ``(N, 1, 1, L)`` float
one, and every graph keeps dynamic batch and sequence axes. The backbone has no classifier for
the user's labels, so the final exit is a trained head too (``final_head``, ``"linear"`` unless
given); heads pool the tokens with the mask (``pool="mean"``, the sentence-transformers pooling)
or read the ``[CLS]`` token (``pool="cls"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from edgeexit.compile.adapters.base import ADAPTERS, ExitRequest, make_head, resolve_boundaries
from edgeexit.compile.heads import TokenLayout
from edgeexit.compile.model import ExitInfo, MultiExitModel
from edgeexit.errors import ModelError

CONTEXT_NAMES = ("attention_mask",)
INPUT_NAME = "input_ids"


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(N, L)`` 0/1 -> ``(N, 1, 1, L)``: 0 where attended, the dtype's minimum where padded.

    The same values as transformers' ``get_extended_attention_mask``; both its eager and its SDPA
    attention add it to the scores, so one segment graph serves either implementation.
    """
    keep = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the attended tokens only (sentence-transformers' mean pooling, same clamp)."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def _run_layer(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = layer(hidden, attention_mask=mask)
    return out[0] if isinstance(out, (tuple, list)) else out  # transformers 4.x returns a tuple


class BertSegment(nn.Module):
    """Some consecutive encoder layers (segment 0: the embeddings first), mask in, hidden out.

    Holds the backbone's own modules: no weight is copied.
    """

    def __init__(self, layers: Sequence[nn.Module], embeddings: nn.Module | None = None) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embeddings(input_ids=x) if self.embeddings is not None else x
        mask = additive_mask(attention_mask, hidden.dtype)
        for layer in self.layers:
            hidden = _run_layer(layer, hidden, mask)
        return hidden


class PooledHead(nn.Module):
    """Pool the tokens with the mask, then a classifier on the pooled vector.

    ``features`` is split out so training can pool a frozen backbone's hidden states once and
    train ``classifier`` on the vectors alone.
    """

    def __init__(self, classifier: nn.Module, pool: str = "mean") -> None:
        super().__init__()
        if pool not in ("mean", "cls"):
            raise ModelError(f"a text head pools the 'mean' of the attended tokens or the 'cls' token; got {pool!r}")
        self.classifier = classifier
        self.pool = pool

    def features(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(hidden, attention_mask) if self.pool == "mean" else hidden[:, 0]

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(hidden, attention_mask))


def _layers(backbone: nn.Module) -> list[nn.Module] | None:
    encoder = getattr(backbone, "encoder", None)
    layers = getattr(encoder, "layer", None)
    return list(layers) if isinstance(layers, (nn.ModuleList, nn.Sequential)) else None


def hidden_size(backbone: nn.Module) -> int:
    config = getattr(backbone, "config", None)
    if config is not None and isinstance(getattr(config, "hidden_size", None), int):
        return int(config.hidden_size)
    words = getattr(backbone.embeddings, "word_embeddings", None)
    if isinstance(words, nn.Embedding):
        return words.embedding_dim
    raise ModelError(
        "cannot tell the BERT model's hidden size; expected config.hidden_size or embeddings.word_embeddings"
    )


#: Head name for an early exit that reuses the final exit's classifier (MuE-style, no own head).
SHARED_FINAL = "final"


class BertAdapter:
    expects = "a BERT-like encoder with embeddings and encoder.layer (Hugging Face BertModel layout)"

    def accepts(self, backbone: nn.Module) -> bool:
        return isinstance(getattr(backbone, "embeddings", None), nn.Module) and bool(_layers(backbone))

    def build(self, backbone: nn.Module, request: ExitRequest) -> MultiExitModel:
        layers = _layers(backbone)
        if not layers:
            raise ModelError("the BERT model has no encoder layers to put exits between")
        pool = request.pool
        names = [f"layer{i}" for i in range(len(layers))]
        boundaries = resolve_boundaries(request.exits, names, "BERT")
        segments, start = [], 0
        for end in [*boundaries, len(layers) - 1]:
            segments.append(BertSegment(layers[start : end + 1], backbone.embeddings if start == 0 else None))
            start = end + 1
        final_name = request.final_head or "linear"
        names_per_exit = [*request.heads, final_name]
        width = hidden_size(backbone)
        if final_name == SHARED_FINAL:
            raise ModelError(f"the final exit needs its own head; {SHARED_FINAL!r} names it for the early exits")
        final = self._head(final_name, request, pool, width)
        # MuE: an exit named "final" reads its layer with the final exit's own classifier (the same
        # module, so the same weights): no head is trained for that layer, and similarity decides.
        heads = [final if name == SHARED_FINAL else self._head(name, request, pool, width) for name in request.heads]
        heads.append(final)
        infos = [
            ExitInfo(h, f"after layer{b}") for h, b in zip(names_per_exit, [*boundaries, len(layers) - 1], strict=True)
        ]
        return MultiExitModel(
            segments,
            heads,
            infos,
            name=request.name,
            num_classes=request.num_classes,
            layout="NL",
            token_layout=TokenLayout(prefix=0, pool=pool),  # type: ignore[arg-type]
            context_names=CONTEXT_NAMES,
            input_name=INPUT_NAME,
        )

    @staticmethod
    def _head(name: str | None, request: ExitRequest, pool: str, width: int) -> PooledHead | None:
        """A registered head on the masked-pooled sentence vector (None: no classifier)."""
        # Registered heads get the pooled (N, D) vector; they pass 2-D features straight through.
        classifier = make_head(name, request, TokenLayout(prefix=0, pool="mean"))
        if classifier is None:
            return None
        try:
            with torch.no_grad():  # give lazy layers their width now, on the pooled vector they will read
                classifier(torch.zeros(1, width))
        except (ValueError, RuntimeError) as err:
            raise ModelError(
                f"head {name!r} cannot read a pooled ({width},) sentence vector ({err}); text exits pool the "
                "tokens with the attention mask first, so use a head that takes (N, F) features, e.g. 'linear'"
            ) from None
        return PooledHead(classifier, pool)


ADAPTERS.register("bert")(BertAdapter())
