"""Models with context inputs (a text encoder's attention mask) through export and the engine.

A tiny masked encoder stands in for BERT here so the contract is tested in seconds: token ids
and the mask go in once, the mask reaches every segment and head unchanged, the token axis is
dynamic, and early exit, batching and offload-style pausing carry the mask with the samples.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeexit.compile import export
from edgeexit.compile.model import MultiExitModel
from edgeexit.compile.zoo import tiny_text
from edgeexit.compile.zoo import tiny_text_tokens as _tokens
from edgeexit.errors import ExportError, InputError
from edgeexit.package import open_package
from edgeexit.profile import load_profile
from edgeexit.runtime import Engine
from edgeexit.runtime.backends import bind_chain
from edgeexit.runtime.engine import Pending


@pytest.fixture(scope="module")
def text_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("text") / "pkg"
    export(tiny_text(), (1, 12), out, sample=_tokens(6, 12), labels=["neg", "neu", "pos"])
    return out


def _torch_logits(model: MultiExitModel, tokens: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        found = model(torch.from_numpy(tokens["input_ids"]), torch.from_numpy(tokens["attention_mask"]))
    return [t.numpy() for t in found if t is not None]


def test_manifest_names_the_context_and_a_dynamic_token_axis(text_package: Path) -> None:
    engine = Engine(text_package, cache_dir=None)
    spec = engine.manifest.input
    assert (spec.name, spec.dtype, spec.shape) == ("input_ids", "int64", (None, None))
    assert [(c.name, c.shape) for c in spec.context] == [("attention_mask", (None, None))]
    assert engine.manifest.tails == ()  # no tails for models with context inputs yet
    for segment in engine.manifest.segments:
        assert [i.name for i in segment.inputs][1:] == ["attention_mask"]


@pytest.mark.parametrize("length", [5, 12, 31])
def test_full_depth_matches_torch_at_any_token_count(text_package: Path, length: int) -> None:
    model = tiny_text()
    tokens = _tokens(4, length, seed=length)
    engine = Engine(text_package, cache_dir=None, threshold=2.0)  # never exits early
    results = engine.run_batch(tokens)
    expected = _torch_logits(model, tokens)[-1]
    got = np.stack([r.probabilities for r in results])
    want = np.exp(expected - expected.max(axis=1, keepdims=True))
    np.testing.assert_allclose(got, want / want.sum(axis=1, keepdims=True), atol=1e-5)
    assert all(r.exit == 2 for r in results)


def test_padding_does_not_change_the_answer(text_package: Path) -> None:
    engine = Engine(text_package, cache_dir=None, threshold=2.0)
    tokens = _tokens(1, 6, seed=3)
    tokens["attention_mask"][:] = 1
    padded = {name: np.pad(value, ((0, 0), (0, 10))) for name, value in tokens.items()}
    a, b = engine.run(tokens), engine.run(padded)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)


def test_batch_equals_one_by_one_and_compacts_the_mask_with_the_samples(text_package: Path) -> None:
    tokens = _tokens(16, 10, seed=7)
    probe = Engine(text_package, cache_dir=None, threshold=2.0)
    scores = np.array([r.score for r in probe.run_batch(tokens)])  # final exit's score, not needed
    assert scores.shape == (16,)
    full = probe.run_full(tokens)
    top0 = np.exp(full.logits[0]) / np.exp(full.logits[0]).sum(axis=1, keepdims=True)
    engine = Engine(text_package, cache_dir=None, threshold=float(np.median(top0.max(axis=1))))
    batch = engine.run_batch(tokens, batch_size=5)
    singles = [engine.run({name: value[i] for name, value in tokens.items()}) for i in range(16)]
    assert {r.exit for r in batch} >= {0}
    assert len({r.exit for r in batch}) > 1  # some left early, the rest went on with their own masks
    for one, many in zip(singles, batch, strict=True):
        assert (one.exit, one.prediction) == (many.exit, many.prediction)
        np.testing.assert_allclose(one.probabilities, many.probabilities, atol=1e-5)


def test_pending_carries_the_mask_to_resume(text_package: Path) -> None:
    engine = Engine(text_package, cache_dir=None, threshold=2.0)
    tokens = _tokens(3, 9, seed=11)
    progress = engine.run_batch_until(tokens, 0)
    pending = progress.pending
    assert isinstance(pending, Pending)
    np.testing.assert_array_equal(pending.context["attention_mask"], tokens["attention_mask"])
    resumed = engine.resume_batch(pending)
    direct = engine.run_batch(tokens)
    for a, b in zip(resumed, direct, strict=True):
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
    one = engine.run_until({name: value[1] for name, value in tokens.items()}, 0)
    assert isinstance(one, Pending)
    stepped = engine.resume(engine.advance(one, 1))  # type: ignore[arg-type]
    np.testing.assert_allclose(stepped.probabilities, direct[1].probabilities, atol=1e-6)


def test_similarity_exit_without_a_head(tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    export(tiny_text(headless=(1,)), (1, 8), out, sample=_tokens(4, 8))
    engine = Engine(out, cache_dir=None, criterion="similarity", threshold=-1.0)
    result = engine.run(_tokens(1, 8, seed=2))
    assert result.exit == 0  # exit 0 has a head; similarity at exit 0 compares with nothing before it
    assert engine.manifest.exits[1].head is None


def test_no_chain_is_bound_beside_context_inputs(text_package: Path) -> None:
    """The mask is fed beside every hidden tensor, so ONNX Runtime's fixed-buffer chain does not apply."""
    engine = Engine(text_package, cache_dir=None)
    assert bind_chain("onnxruntime", engine.segments, engine.manifest.input) is None


def test_wrong_inputs_say_what_was_expected(text_package: Path) -> None:
    engine = Engine(text_package, cache_dir=None)
    tokens = _tokens(2, 6)
    with pytest.raises(InputError, match="several inputs"):
        engine.run(tokens["input_ids"][0])
    with pytest.raises(InputError, match="expected exactly"):
        engine.run({"input_ids": tokens["input_ids"][0]})
    with pytest.raises(InputError, match="different shapes"):
        engine.run_batch({"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"][:, :3]})
    with pytest.raises(InputError, match="integer"):
        engine.run_batch(
            {"input_ids": tokens["input_ids"].astype(np.float32), "attention_mask": tokens["attention_mask"]}
        )


def test_export_refuses_tails_and_bad_samples_for_text(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="context inputs"):
        export(tiny_text(), (1, 8), tmp_path / "a", codecs=("fp32",))
    with pytest.raises(ExportError, match="input_ids"):
        export(tiny_text(), (1, 8), tmp_path / "b", sample=np.zeros((2, 8), np.float32))
    assert not (tmp_path / "a").exists()
    assert not (tmp_path / "b").exists()


def test_similarity_ignores_padding_tokens(text_package: Path) -> None:
    engine = Engine(text_package, cache_dir=None, criterion="similarity", threshold=2.0)
    tokens = _tokens(1, 6, seed=5)
    tokens["attention_mask"][:] = 1
    padded = {name: np.pad(value, ((0, 0), (0, 9))) for name, value in tokens.items()}
    plain, extra = engine.run_full(tokens, timing_samples=1), engine.run_full(padded, timing_samples=1)
    assert 0.0 < plain.similarity[1][0] < 1.0  # boundary 1 against boundary 0 (the last has no hidden output)
    np.testing.assert_allclose(plain.similarity[1], extra.similarity[1], atol=1e-5)


def test_verify_feeds_the_stored_mask_to_every_segment(text_package: Path) -> None:
    from edgeexit.runtime.verify import verify_package

    report = verify_package(text_package)
    assert report.ok
    assert len(report.checks) >= 3


def test_profile_times_a_text_package_with_its_stored_mask(
    edgeexit_cli: list[str], text_package: Path, tmp_path: Path
) -> None:
    # the profiler feeds the reference sample's mask to every segment, as verify does
    result = subprocess.run(
        [*edgeexit_cli, "profile", str(text_package), "--runs", "5", "--warmup", "1", "--json", tmp_path / "p.json"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    profile = load_profile(tmp_path / "p.json")
    assert len(profile.segments) == len(open_package(text_package).manifest.segments)
    assert all(s.latency_p50_ms > 0 for s in profile.segments)
    assert "reference.npz" in profile.inputs
