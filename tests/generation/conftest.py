"""A tiny random decoder of SmolLM2's architecture, exported once per session (about 10 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeexit.compile.decoders.export import DecoderSource, export_decoder
from edgeexit.compile.decoders.zoo import tiny_llama


@pytest.fixture(scope="session")
def tiny_source() -> DecoderSource:
    return tiny_llama()


@pytest.fixture(scope="session")
def tiny_decoder(tiny_source: DecoderSource, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("decoder") / "tiny"
    export_decoder(tiny_source, out)
    return out


def tiny_prompts(count: int, seed: int = 0) -> list[str]:
    """Prompts in the tiny tokenizer's words (the random model answers them with noise)."""
    import numpy as np

    words = "the quick brown fox jumps over lazy dog to be or not that is question what capital of france"
    vocabulary = words.split()
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(vocabulary, size=int(rng.integers(3, 9)))) for _ in range(count)]


@pytest.fixture(scope="session")
def tiny_with_exits(tiny_source: DecoderSource, tiny_decoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny package with exits after layers 1, 2 and 3 (the last drafts for speculation)."""
    import shutil

    from edgeexit.compile.decoders.exits import ExitTraining
    from edgeexit.compile.decoders.train_exits import add_exits

    out = tmp_path_factory.mktemp("decoder-exits") / "tiny"
    shutil.copytree(tiny_decoder, out)
    training = ExitTraining(steps=80, answer_tokens=16)
    add_exits(out, tiny_source, [1, 2, 3], tiny_prompts(96), training=training, draft_exit=2)
    return out
