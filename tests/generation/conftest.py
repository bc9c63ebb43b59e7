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
