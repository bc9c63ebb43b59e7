"""Exporting a decoder: graphs, cache layout, tokenizer and chat frame, parity with PyTorch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeexit.compile.decoders.export import DecoderSource, default_boundaries, export_decoder
from edgeexit.compile.decoders.llama import split_llama
from edgeexit.compile.decoders.zoo import tiny_llama
from edgeexit.errors import ExportError, ModelError, PackageError
from edgeexit.generation import DecoderEngine, open_decoder_package
from edgeexit.generation.cache import KVCache


def test_the_package_holds_every_part_and_its_parity(tiny_decoder: Path) -> None:
    manifest = open_decoder_package(tiny_decoder).manifest
    assert [(s.first_layer, s.stop_layer) for s in manifest.segments] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert manifest.tokenizer == "tokenizer.json"
    assert (tiny_decoder / "tokenizer.json").is_file()
    assert manifest.chat_template
    assert manifest.metadata["chat_frame"][1].endswith("assistant ")
    graphs = manifest.reference["graphs"]
    assert {row["graph"] for row in graphs} >= {"embedding", "head logits", "segment 3 cache", "segment 0 hidden"}
    assert all(row["max_abs_diff"] <= 1e-4 * max(row["max_abs"], 1.0) for row in graphs)
    assert [row["identical"] for row in manifest.reference["greedy"]] == [True, True]
    names = [t.name for t in manifest.segments[2].graph.inputs]
    assert names == ["hidden", "position_ids", "attention_mask", "past_key_2", "past_value_2"]


def test_the_cache_is_written_in_place_as_pytorch_computes_it(tiny_decoder: Path, tiny_source: DecoderSource) -> None:
    """A prefill then three single-token steps: the engine's preallocated buffers (the same arrays
    throughout) hold exactly the keys and values the PyTorch layers produce, position by position."""
    engine = DecoderEngine(tiny_decoder)
    manifest = engine.manifest
    cache = KVCache(manifest.shape, [s.layers for s in manifest.segments], batch=1, capacity=12)
    buffers = [id(k) for k in cache.keys]
    ids = [5, 9, 30, 40, 41]
    engine.forward(np.asarray([ids], dtype=np.int64), cache)
    for token in (7, 8, 9):
        engine.forward(np.asarray([[token]], dtype=np.int64), cache)
        ids.append(token)
    assert [id(k) for k in cache.keys] == buffers
    assert cache.lengths == [8] * 4
    with torch.no_grad():
        out = tiny_source.model(torch.tensor([ids]), use_cache=True)
    for layer in range(manifest.shape.layers):
        keys, values = out.past_key_values[layer]  # (1, kv, 8, d)
        np.testing.assert_allclose(cache.keys[layer][:8], keys.permute(2, 0, 1, 3).numpy(), atol=1e-5)
        np.testing.assert_allclose(cache.values[layer][:8], values.permute(2, 0, 1, 3).numpy(), atol=1e-5)


def test_split_parts_chain_to_the_models_logits(tiny_source: DecoderSource) -> None:
    embedding, groups, head, shape = split_llama(tiny_source.model, [2, 4])
    ids = torch.randint(0, shape.vocab, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.int64)
    with torch.no_grad():
        hidden = embedding(ids)
        for group in groups:
            empty = [torch.zeros(0, 2, shape.kv_heads, shape.head_dim)] * (2 * len(group.layers))
            hidden = group(hidden, torch.arange(6).expand(2, 6), mask, *empty)[0]
        ours = head(hidden)
        theirs = tiny_source.model(ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_boundaries_that_do_not_cover_the_model_are_refused(tiny_source: DecoderSource, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="must increase"):
        export_decoder(tiny_source, tmp_path / "bad", boundaries=[2, 3])
    assert not (tmp_path / "bad").exists()
    assert default_boundaries(30) == (6, 12, 18, 24, 30)
    assert default_boundaries(4, 8) == (1, 2, 3, 4)


def test_an_existing_directory_needs_overwrite(tiny_decoder: Path, tiny_source: DecoderSource) -> None:
    with pytest.raises(ExportError, match="already exists"):
        export_decoder(tiny_source, tiny_decoder)


def test_a_corrupt_graph_is_refused_before_it_loads(tiny_decoder: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_decoder, tmp_path / "copy")
    graph = copy / "graphs" / "segment_1.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"segment_1\.onnx was altered"):
        DecoderEngine(copy)


def test_a_manifest_field_of_the_wrong_type_names_its_path(tiny_decoder: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_decoder, tmp_path / "copy")
    raw = json.loads((copy / "manifest.json").read_text())
    raw["shape"]["kv_heads"] = "two"
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(PackageError, match=r"shape\.kv_heads: expected an integer"):
        open_decoder_package(copy)


def test_the_export_command_writes_a_decoder_package(tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    command = [sys.executable, "-m", "edgeexit", "export", "tiny_llama", "--out", str(out), "-a", "layers=2",
               "--boundaries", "1,2"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "identical to transformers' generate on 2 of 2 prompts" in done.stdout
    assert len(open_decoder_package(out).manifest.segments) == 2
    shape = subprocess.run([sys.executable, "-m", "edgeexit", "export", "tiny_resnet", "--out", str(tmp_path / "x")],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert shape.returncode == 1
    assert "--input-shape is required" in shape.stderr


def test_tiny_llama_is_the_real_architecture() -> None:
    config = tiny_llama(layers=2).model.config
    assert config.num_attention_heads % config.num_key_value_heads == 0
    assert config.tie_word_embeddings


def test_classifier_commands_say_a_decoder_package_is_for_generate(tiny_decoder: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "edgeexit", "inspect", str(tiny_decoder)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1
    assert "is a decoder (LLM) package" in done.stderr
    assert "edgeexit generate" in done.stderr
