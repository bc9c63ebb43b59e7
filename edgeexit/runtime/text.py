"""Text to token ids on the device, with the ``tokenizers`` package: no torch, no transformers.

A package for a text encoder ships the model's ``tokenizer.json``; ``TextEncoder`` reads it and
turns a batch of strings into the ``input_ids`` and ``attention_mask`` the first segment takes:
int64, padded to the longest text of the batch (not to a fixed width, which would make every
short request pay for the longest one), truncated at ``max_length``. The ids are the ones the
Hugging Face tokenizer gives for the same file with ``padding=True, truncation=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeexit.errors import InputError

if TYPE_CHECKING:
    from edgeexit.package import Package

__all__ = ["TextEncoder"]

TOKENIZERS_PIP = "pip install -c constraints.txt 'edgeexit[text]' (it brings tokenizers)"


class TextEncoder:
    """``encode(texts) -> {"input_ids": (N, L) int64, "attention_mask": (N, L) int64}``."""

    def __init__(self, tokenizer: Any, *, max_length: int, pad_id: int, pad_token: str, source: str) -> None:
        if max_length < 2:
            raise InputError(f"max_length must leave room for the special tokens; got {max_length}")
        self.max_length = max_length
        self.source = source
        self._tokenizer = tokenizer
        # The file's own padding/truncation settings (all-MiniLM's pads every text to 128) are
        # replaced: pad to the batch's longest, cut at max_length.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        tokenizer.enable_truncation(max_length=max_length)
        tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)

    @classmethod
    def from_file(cls, tokenizer_json: str | Path, max_length: int = 128) -> TextEncoder:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise InputError(f"tokenizing text needs the tokenizers package: {TOKENIZERS_PIP}") from None
        path = Path(tokenizer_json)
        if not path.is_file():
            raise InputError(f"tokenizer file {path} does not exist; expected a Hugging Face tokenizer.json")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception for a malformed file
            raise InputError(f"cannot read {path} as a tokenizer.json: {err}") from None
        pad_id, pad_token = _padding_token(tokenizer, path)
        return cls(tokenizer, max_length=max_length, pad_id=pad_id, pad_token=pad_token, source=str(path))

    @classmethod
    def from_package(cls, package: Package, max_length: int = 128) -> TextEncoder:
        """The tokenizer a package ships (``input.tokenizer``), so device and export agree on ids."""
        name = package.manifest.input.tokenizer
        if name is None:
            raise InputError(
                f"package {package.manifest.model_name!r} has no tokenizer: it takes "
                f"{package.manifest.input.dtype} tensors, not text"
            )
        return cls.from_file(package.path(name), max_length=max_length)

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        if isinstance(texts, str):
            raise InputError("encode takes a sequence of texts; wrap a single text in a list")
        if not texts:
            raise InputError("encode needs at least one text")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise InputError(f"texts[{bad[0]}] is a {type(texts[bad[0]]).__name__}; expected str")
        encodings = self._tokenizer.encode_batch(list(texts))
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }


def _padding_token(tokenizer: Any, path: Path) -> tuple[int, str]:
    """The file's own padding token, else ``[PAD]`` (BERT) or ``<pad>`` (RoBERTa) from its vocabulary."""
    padding = tokenizer.padding
    if padding is not None:
        return int(padding["pad_id"]), str(padding["pad_token"])
    for token in ("[PAD]", "<pad>"):
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found), token
    raise InputError(f"{path} names no padding token and has neither [PAD] nor <pad>; expected a BERT-like tokenizer")
