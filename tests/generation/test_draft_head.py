"""The draft head: one attention layer with its own cache and a cut vocabulary, trained by
self-distillation; speculative decoding that drafts with it still gives full depth's greedy text."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeexit.errors import PackageError
from edgeexit.generation import DecoderEngine, open_decoder_package
from tests.conftest import assert_speculation_is_full_depth, tiny_prompts, tiny_token_prompts


@pytest.fixture(scope="module")
def engine(tiny_with_draft: Path) -> DecoderEngine:
    return DecoderEngine(tiny_with_draft)


def test_the_draft_head_is_recorded_hashed_and_quantized_per_variant(tiny_with_draft: Path) -> None:
    manifest = open_decoder_package(tiny_with_draft).manifest
    assert not manifest.exits
    head = manifest.speculation.draft_head
    assert (head.segment, head.layer, head.vocab) == (1, 2, 128)
    assert head.graph.file in manifest.files
    for variant in manifest.variants:
        assert (tiny_with_draft / variant.files[head.graph.file]).is_file()
    record = head.record
    assert 0.0 <= record["held_out_top1_agreement"] <= 1.0
    assert 0.0 < record["vocab_coverage"] <= 1.0
    assert record["train_sequences"] + record["held_out_sequences"] == 64


@pytest.mark.parametrize(("max_draft", "draft_variant"), [(1, None), (3, None), (6, None), (3, "int8"), (5, "int4")])
def test_drafting_with_the_head_gives_full_depth_token_for_token(engine: DecoderEngine, max_draft: int,
                                                                 draft_variant: str | None) -> None:  # fmt: skip
    """The engine's own shallow layers or a quantized variant's, with the head's own cache kept in
    step across accepted and rejected drafts: full depth's tokens either way."""
    assert_speculation_is_full_depth(engine, max_draft, draft_variant=draft_variant)


def test_the_heads_probability_stops_a_draft(engine: DecoderEngine) -> None:
    ids = tiny_token_prompts(1, seed=3)[0]
    full = engine.generate(ids, 16, stop=())
    never = engine.generate(ids, 16, stop=(), mode="speculative", stop_below=0.999999)
    assert never.tokens == full.tokens
    assert never.details["drafted"] == 0


def test_the_heads_cache_matches_its_graph_run_over_the_whole_text(engine: DecoderEngine) -> None:
    """After a generation, the draft head's cache entries equal one pass of its graph over the
    text's exit states: the entries kept across rounds are the ones the text gives."""
    ids = tiny_token_prompts(1, seed=8)[0]
    out = engine.generate(ids, 20, stop=(), mode="speculative", stop_below=0.0, max_draft=3)
    text = np.asarray([[*ids, *out.tokens]], dtype=np.int64)
    head = engine.draft_head
    cache = engine.new_cache(text.shape[1])
    hidden = engine.embed(text)
    for index in range(head.head.segment + 1):
        hidden = engine.segment(index, hidden, cache)
    whole = head.new_cache(engine.manifest.shape, text.shape[1])
    tokens, _ = head.run(hidden, whole)
    steps = head.new_cache(engine.manifest.shape, text.shape[1])
    for position in range(text.shape[1]):  # one position at a time, as drafting feeds it
        token, _ = head.run(hidden[:, position : position + 1], steps)
        assert int(token[0, 0]) == int(tokens[0, position])
    np.testing.assert_allclose(steps.keys[0], whole.keys[0], atol=1e-5)
    np.testing.assert_allclose(steps.values[0], whole.values[0], atol=1e-5)


def test_a_draft_head_where_no_group_ends_is_refused(tiny_with_draft: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_with_draft, broken)
    raw = json.loads((broken / "manifest.json").read_text())
    raw["speculation"]["draft_head"]["layer"] = 3
    (broken / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(PackageError, match="draft_head: after segment 1 at layer 3"):
        open_decoder_package(broken, verify_hashes=False)


def test_self_instruct_asks_the_model_for_requests(tiny_source: Any) -> None:
    from edgeexit.compile.decoders.exits import self_instruct

    asked = self_instruct(tiny_source.model, tiny_source.tokenizer, 6, seed=1, longest=400)
    assert len(asked) == len(set(asked)) == 6
    assert all(len(text) >= 8 for text in asked)


def test_train_draft_cli_trains_and_reports(tiny_decoder: Path, tmp_path: Path) -> None:
    package = tmp_path / "tiny"
    shutil.copytree(tiny_decoder, package)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(tiny_prompts(30, seed=4)) + "\n")
    done = subprocess.run([sys.executable, "-m", "edgeexit", "train-draft", str(package), "--layer", "2",
                           "--data", str(prompts), "--prompts", "24", "--steps", "10", "--vocab", "64",
                           "--answer-tokens", "8"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "draft head after layer 2" in done.stdout
    assert open_decoder_package(package).manifest.speculation.draft_head.vocab == 64
    wrong = subprocess.run([sys.executable, "-m", "edgeexit", "train-draft", str(package), "--layer", "4",
                            "--data", str(prompts)],
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert wrong.returncode != 0
    assert "where a layer group ends" in wrong.stderr + wrong.stdout


def test_training_exits_keeps_the_draft_head(tiny_source: Any, tiny_with_draft: Path, tmp_path: Path) -> None:
    """Exits trained after a draft head: the head (which the variants map) stays what speculation
    drafts with, and the exits are added beside it."""
    from edgeexit.compile.decoders.exits import ExitTraining
    from edgeexit.compile.decoders.train_exits import add_exits

    package = tmp_path / "tiny"
    shutil.copytree(tiny_with_draft, package)
    before = open_decoder_package(package).manifest.speculation.draft_head
    add_exits(package, tiny_source, [1, 2], tiny_prompts(48), training=ExitTraining(steps=20, answer_tokens=8))
    manifest = open_decoder_package(package).manifest
    assert manifest.speculation.draft_head == before
    assert [e.layer for e in manifest.exits] == [1, 2]
    engine = DecoderEngine(package)
    assert_speculation_is_full_depth(engine, 3)
