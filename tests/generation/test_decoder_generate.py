"""Generating on the device: greedy equals transformers, seeded sampling, stop tokens, bad input, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeexit.compile.decoders.export import DecoderSource
from edgeexit.errors import InputError, UsageError
from edgeexit.generation import DecoderEngine
from edgeexit.generation.sampling import Sampler


@pytest.fixture(scope="module")
def engine(tiny_decoder: Path) -> DecoderEngine:
    return DecoderEngine(tiny_decoder)


def test_greedy_is_token_for_token_transformers_generate(engine: DecoderEngine, tiny_source: DecoderSource) -> None:
    rng = np.random.default_rng(1)
    for length in (1, 2, 5, 9, 17, 33):
        ids = [int(t) for t in rng.integers(3, 512, size=length)]
        with torch.no_grad():
            theirs = tiny_source.model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False,
                                                pad_token_id=0, eos_token_id=None)  # fmt: skip
        ours = engine.generate(ids, 20, stop=())
        assert list(ours.tokens) == theirs[0, length:].tolist(), f"prompt of {length} tokens"
        assert ours.finish == "length"
        assert ours.mean_layers == 4.0
        assert ours.mode == "full"


def test_text_prompts_and_the_chat_frame(engine: DecoderEngine) -> None:
    plain = engine.codec.encode("the quick brown fox")
    assert plain == [6, 7, 8, 9]
    chat = engine.codec.encode("the fox", chat=True)
    assert chat == [1, 3, 6, 9, 2, 1, 4]  # <|im_start|> user the fox <|im_end|> <|im_start|> assistant
    result = engine.generate("the fox", 5, chat=True, stop=())
    assert result.prompt_tokens == 7
    assert len(result.tokens) == 5
    assert isinstance(result.text, str)


def test_seeded_sampling_repeats_and_greedy_is_temperature_zero(engine: DecoderEngine) -> None:
    first = engine.generate([5, 6, 7], 16, temperature=1.0, seed=3, stop=())
    again = engine.generate([5, 6, 7], 16, temperature=1.0, seed=3, stop=())
    other = engine.generate([5, 6, 7], 16, temperature=1.0, seed=4, stop=())
    assert first.tokens == again.tokens
    assert first.tokens != other.tokens
    assert engine.generate([5, 6, 7], 16, stop=()).tokens == engine.generate([5, 6, 7], 16, top_k=5, stop=()).tokens


def test_the_sampler_cuts_to_top_k_and_top_p() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    np.testing.assert_allclose(Sampler(temperature=1.0, top_k=2).distribution(logits), [0.625, 0.375, 0, 0])
    np.testing.assert_allclose(Sampler(temperature=1.0, top_p=0.7).distribution(logits), [0.625, 0.375, 0, 0])
    assert Sampler().pick(logits) == 0
    with pytest.raises(UsageError, match="top_p"):
        Sampler(temperature=1.0, top_p=0)


def test_a_stop_token_ends_the_continuation(engine: DecoderEngine) -> None:
    free = engine.generate([5, 6, 7], 12, stop=())
    stopped = engine.generate([5, 6, 7], 12, stop=[free.tokens[3]])
    assert stopped.finish == "stop"
    assert stopped.tokens == free.tokens[:3]


def test_bad_requests_say_what_was_wrong(engine: DecoderEngine) -> None:
    with pytest.raises(InputError, match="the prompt is empty"):
        engine.generate("   ")
    with pytest.raises(InputError, match="the prompt is empty"):
        engine.generate([])
    with pytest.raises(InputError, match="context is 256"):
        engine.generate([5] * 256)
    with pytest.raises(UsageError, match="unknown mode 'fast'; expected one of full, early-exit, speculative"):
        engine.generate("the fox", mode="fast")
    with pytest.raises(UsageError, match="expected at least 1"):
        engine.generate("the fox", 0)
    assert len(engine.generate([5] * 250, 64, stop=()).tokens) == 6  # the context bounds the continuation


GENERATE_SCRIPT = r"""
from edgeexit.generation import DecoderEngine
result = DecoderEngine(sys.argv[1]).generate("the quick brown fox", 6, stop=())
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "transformers"))
print(json.dumps({"tokens": list(result.tokens), "loaded": loaded, "attempts": attempts}))
"""


def test_generation_needs_no_torch_onnx_or_transformers(tiny_decoder: Path, python_without) -> None:
    found = python_without(GENERATE_SCRIPT, ("torch", "onnx", "transformers"), str(tiny_decoder))
    assert len(found["tokens"]) == 6
    assert found["loaded"] == []
    assert found["attempts"] == []


def test_the_generate_command_prints_json(tiny_decoder: Path) -> None:
    command = [sys.executable, "-m", "edgeexit", "generate", str(tiny_decoder), "--prompt", "to be or not",
               "--max-new-tokens", "5", "--json"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert set(found) >= {"text", "tokens", "tokens_per_s", "mean_layers", "mode"}
    assert found["mode"] == "full"
    assert len(found["tokens"]) <= 5
    assert found["tokens_per_s"] > 0
    bad = subprocess.run([*command[:7], "--mode", "sideways"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert "unknown mode 'sideways'" in bad.stderr
