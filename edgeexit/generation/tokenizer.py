"""Prompts to token ids and back on the device: the package's ``tokenizer.json`` and chat format.

The chat template ships twice: as the model's Jinja source (``chat_template``, for callers that
render multi-turn conversations with jinja2) and as the single-turn frame it renders to, the text
before and after one user message with the assistant's turn opened (``metadata.chat_frame``,
rendered at export by transformers' own ``apply_chat_template``). The device applies the frame
with string concatenation, so ``--chat`` needs no Jinja and no transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edgeexit.errors import InputError, PackageError

if TYPE_CHECKING:
    from edgeexit.generation.package import DecoderPackage

TOKENIZERS_PIP = "pip install -c constraints.txt 'edgeexit[text]' (it brings tokenizers)"


class PromptCodec:
    """``encode(text, chat=...) -> ids`` and ``decode(ids) -> text`` with the package's tokenizer."""

    def __init__(self, tokenizer: Any, *, chat_frame: tuple[str, str] | None) -> None:
        self._tokenizer = tokenizer
        self.chat_frame = chat_frame

    @classmethod
    def from_package(cls, package: DecoderPackage) -> PromptCodec:
        manifest = package.manifest
        if manifest.tokenizer is None:
            return cls(None, chat_frame=None)
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise InputError(f"generating from text needs the tokenizers package: {TOKENIZERS_PIP}") from None
        path = package.path(manifest.tokenizer)
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception for a malformed file
            raise PackageError(f"cannot read {path} as a tokenizer.json: {err}") from None
        frame = manifest.metadata.get("chat_frame")
        return cls(tokenizer, chat_frame=tuple(frame) if frame else None)  # type: ignore[arg-type]

    def encode(self, text: str, *, chat: bool = False) -> list[int]:
        if self._tokenizer is None:
            raise InputError("this package has no tokenizer; pass the prompt as token ids")
        if not text.strip():
            raise InputError("the prompt is empty; expected text to continue")
        if chat:  # as transformers' apply_chat_template(tokenize=True): the frame holds every special token
            if self.chat_frame is None:
                raise InputError("this package has no chat template; generate without --chat")
            framed = self.chat_frame[0] + text + self.chat_frame[1]
            return list(self._tokenizer.encode(framed, add_special_tokens=False).ids)
        # the file's own post-processor adds the special tokens the model's tokenizer adds
        return list(self._tokenizer.encode(text).ids)

    def decode(self, ids: Sequence[int]) -> str:
        if self._tokenizer is None:
            return " ".join(str(i) for i in ids)
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=True))
