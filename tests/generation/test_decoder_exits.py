"""Exits for generation: trained adapters, calibrated thresholds, early exit with lazily recomputed
KV entries, and self-speculative decoding that gives full depth's greedy text token for token."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeexit.errors import PackageError, UsageError
from edgeexit.generation import DecoderEngine, open_decoder_package
from edgeexit.generation.decoding import EarlyExit, Run
from edgeexit.generation.sampling import Sampler
from tests.conftest import assert_speculation_is_full_depth, tiny_token_prompts


@pytest.fixture(scope="module")
def engine(tiny_with_exits: Path) -> DecoderEngine:
    return DecoderEngine(tiny_with_exits)


def test_training_records_adapters_gates_and_certified_thresholds(tiny_with_exits: Path) -> None:
    manifest = open_decoder_package(tiny_with_exits).manifest
    assert [(e.segment, e.layer) for e in manifest.exits] == [(0, 1), (1, 2), (2, 3)]
    for found in manifest.exits:
        assert (tiny_with_exits / found.graph.file).is_file()
        assert len(found.gate_weights) == manifest.shape.hidden
        assert 0.0 <= found.record["held_out_top1_agreement"] <= 1.0
        assert found.record["loss_every_50_steps"][-1] < found.record["loss_every_50_steps"][0]
    calibration = manifest.exit_calibration
    assert calibration["method"].startswith("learn-then-test")
    assert set(calibration) >= {"max_prob", "gate", "similarity", "calibration_tokens"}
    assert manifest.speculation is not None
    assert manifest.speculation.exit == 2


@pytest.mark.parametrize(("max_draft", "draft_variant"), [(1, None), (3, None), (6, None), (3, "int8"), (5, "int4")])
def test_speculative_decoding_is_full_depth_token_for_token(engine: DecoderEngine, max_draft: int,
                                                            draft_variant: str | None) -> None:  # fmt: skip
    """Drafting with the engine's own layers or a quantized variant's: full depth's tokens either way."""
    assert_speculation_is_full_depth(engine, max_draft, draft_variant=draft_variant, gate_below=0.0)


def test_speculation_stops_at_a_stop_token_and_the_budget(engine: DecoderEngine) -> None:
    ids = tiny_token_prompts(1, seed=9)[0]
    free = engine.generate(ids, 20, stop=())
    stop = free.tokens[7]
    full = engine.generate(ids, 20, stop=[stop])
    fast = engine.generate(ids, 20, stop=[stop], mode="speculative", stop_below=0.0)
    assert fast.tokens == full.tokens
    assert fast.finish == full.finish == "stop"
    short = engine.generate(ids, 5, stop=(), mode="speculative", stop_below=0.0, max_draft=4)
    assert short.tokens == free.tokens[:5]


@pytest.mark.parametrize("criterion", ["max_prob", "gate", "similarity"])
def test_early_exit_fills_every_cache_entry_as_full_depth_would(engine: DecoderEngine, criterion: str) -> None:
    """Run early exit with every exit open (threshold 0 at the first exit): the cache entries that
    exist, those computed late for skipped tokens included, equal full depth's for the same text."""
    manifest = engine.manifest
    for ids in tiny_token_prompts(3, seed=11):
        cache = engine.new_cache(len(ids) + 16)
        logits = engine.forward(np.asarray([ids], dtype=np.int64), cache)
        run = Run(sampler=Sampler(), stops=frozenset(), budget=12)
        thresholds = {0: 0.0 if len(ids) % 2 else 2.0, 1: 0.0, 2: 2.0}  # some leave at 1, some at 2
        EarlyExit(criterion, thresholds).decode(engine, cache, int(np.argmax(logits[0, -1])), run)
        assert run.counters.get("exit_1", 0) + run.counters.get("exit_2", 0) > 0
        text = [*ids, *run.tokens[:-1]]  # the last token was emitted but never run
        reference = engine.new_cache(len(text))
        engine.forward(np.asarray([text], dtype=np.int64), reference)
        for segment in manifest.segments:
            filled = cache.lengths[segment.index]
            assert filled >= len(ids)
            for layer in segment.layers:
                np.testing.assert_allclose(cache.keys[layer][:filled], reference.keys[layer][:filled], atol=1e-4)
                np.testing.assert_allclose(cache.values[layer][:filled], reference.values[layer][:filled], atol=1e-4)


@pytest.mark.parametrize("skipped", ["recompute", "propagate"])
def test_early_exit_takes_fewer_layers_and_reports_them(engine: DecoderEngine, skipped: str) -> None:
    for criterion in ("max_prob", "gate", "similarity"):
        layers = []
        for ids in tiny_token_prompts(6):
            result = engine.generate(ids, 16, stop=(), mode="early-exit", criterion=criterion, skipped=skipped)
            assert result.mode == "early-exit"
            assert 1.0 <= result.mean_layers <= 4.0
            layers.append(result.mean_layers)
        assert min(layers) <= 4.0


def test_modes_refuse_what_they_cannot_do(engine: DecoderEngine, tiny_decoder: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="train them with `edgeexit train-exits`"):
        DecoderEngine(tiny_decoder).generate([5, 6], 4, mode="early-exit")
    with pytest.raises(UsageError, match="unknown exit criterion 'entropy'"):
        engine.generate([5, 6], 4, mode="early-exit", criterion="entropy")
    with pytest.raises(UsageError, match="decodes greedily"):
        engine.generate([5, 6], 4, mode="speculative", temperature=0.7)
    with pytest.raises(UsageError, match="max_draft is 0"):
        engine.generate([5, 6], 4, mode="speculative", max_draft=0)
    copy = shutil.copytree(engine.package.root, tmp_path / "copy")
    raw = json.loads((copy / "manifest.json").read_text())
    raw["exits"][0]["thresholds"] = {"entropy": 0.5}
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(PackageError, match="unknown criteria"):
        open_decoder_package(copy)
    raw["exits"][0]["thresholds"] = {}
    raw["speculation"]["exit"] = 7
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(PackageError, match=r"speculation\.exit 7"):
        open_decoder_package(copy)


def test_train_exits_and_generate_from_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    steps = [
        ["export", "tiny_llama", "--out", str(out), "--variants", ""],
        ["train-exits", str(out), "--layers", "2,3", "--prompts", "48", "--data", "instructions", "--steps", "40",
         "--answer-tokens", "12", "--draft-exit", "1"],
    ]  # fmt: skip
    for step in steps:
        done = subprocess.run([sys.executable, "-m", "edgeexit", *step], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "layers per token expected" in done.stdout
    command = [sys.executable, "-m", "edgeexit", "generate", str(out), "--prompt", "the quick brown fox", "--json"]
    for mode in ("early-exit", "speculative"):
        done = subprocess.run([*command, "--mode", mode], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        found = json.loads(done.stdout)
        assert found["mode"] == mode
        assert found["mean_layers"] <= 4.0
    assert "acceptance_rate" in found


def test_state_propagation_fills_every_group_at_once(engine: DecoderEngine) -> None:
    """CALM's propagation: a token that leaves early gets the skipped groups' entries from its exit's
    hidden state right away, so no group lags behind; the projection graphs match PyTorch at export."""
    manifest = engine.manifest
    assert any(row["graph"] == "propagate 1" for row in manifest.reference["graphs"])
    ids = tiny_token_prompts(1, seed=3)[0]
    cache = engine.new_cache(len(ids) + 16)
    logits = engine.forward(np.asarray([ids], dtype=np.int64), cache)
    run = Run(sampler=Sampler(), stops=frozenset(), budget=12)
    EarlyExit("gate", {0: 0.0}, skipped="propagate").decode(engine, cache, int(np.argmax(logits[0, -1])), run)
    assert run.counters["exit_1"] == 11  # every token but the last left at the first exit
    assert cache.lengths == [len(ids) + 11] * len(manifest.segments)
    with pytest.raises(UsageError, match="skipped 'copy'"):
        engine.generate([5, 6], 4, mode="early-exit", skipped="copy")


def test_the_draft_exits_gate_stops_drafts_before_the_head(engine: DecoderEngine) -> None:
    """A gate threshold of 1 drafts nothing (every round is one full-depth step); the text is the same."""
    ids = tiny_token_prompts(1, seed=4)[0]
    full = engine.generate(ids, 16, stop=())
    gated = engine.generate(ids, 16, stop=(), mode="speculative", stop_below=0.0, gate_below=1.0)
    assert gated.tokens == full.tokens
    assert gated.details["drafted"] == 0
