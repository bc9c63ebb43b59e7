"""TFLite segments of a text encoder: static token lengths, padding in the runtime, parity on real tokens.

litert-torch 0.10.0 converts a masked encoder's segments only with static shapes, so they are
converted at batch 1 and fixed token lengths (one signature per length in each file) and LiteRT
pads a request with masked-out tokens to the shortest length that holds it. Real conversions of
the zoo's tiny masked encoder (``tiny_text``) against real ONNX Runtime sessions; all-MiniLM-L6-v2
is measured in tools/bench_tflite.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeexit.compile import export
from edgeexit.compile.zoo import tiny_text
from edgeexit.compile.zoo import tiny_text_tokens as _tokens
from edgeexit.errors import ExportError, InputError
from edgeexit.package import open_package
from edgeexit.runtime import Engine
from edgeexit.runtime.ort_backend import OrtSegment

pytest.importorskip(
    "litert_torch", reason="needs litert-torch: pip install -c constraints.txt 'edgeexit[tflite-export]'"
)
pytest.importorskip("ai_edge_litert", reason="needs ai-edge-litert: pip install 'edgeexit[tflite]'")

from edgeexit.compile.tflite import add_tflite
from edgeexit.runtime.litert_backend import LiteRtSegment

# litert-torch converts each graph in seconds when the machine is idle; under a loaded 2-core CI the
# conversions passed the suite's 300 s hang guard (a fresh-clone run on an AVX2 EPYC). The guard is
# for hangs, not speed: these modules get more room.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

LENGTHS = (8, 16)  # the token lengths the graphs are converted at
LENGTH = LENGTHS[-1]  # the most they take


@pytest.fixture(scope="module")
def text_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny encoder exported (ONNX, 12-token samples) with its tflite variant at LENGTHS tokens."""
    out = tmp_path_factory.mktemp("text_tflite") / "pkg"
    export(tiny_text(), (1, 12), out, sample=_tokens(6, 12), labels=["neg", "neu", "pos"])
    add_tflite(tiny_text(), out, sequence_length=LENGTHS)
    return out


def _segments(root: Path) -> tuple[list[OrtSegment], list[LiteRtSegment]]:
    package = open_package(root)
    manifest = package.manifest
    files = manifest.variant("tflite").files
    onnx = [
        OrtSegment(package.path(s.file), s, threads=1, cache_dir=None, sha256=manifest.files[s.file])
        for s in manifest.segments
    ]
    lite = [LiteRtSegment(package.path(f), s, threads=1) for s, f in zip(manifest.segments, files, strict=True)]
    return onnx, lite


def test_variant_records_the_static_token_lengths_and_passed_parity(text_tflite: Path) -> None:
    manifest = open_package(text_tflite).manifest
    report = manifest.variant("tflite").report
    assert report["sequence_length"] == LENGTH
    assert report["sequence_lengths"] == list(LENGTHS)
    assert report["batch"] == ["static-1"] * len(manifest.segments)
    assert all(row["ok"] for row in report["parity"])
    assert {
        "tflite segment 0 batch 1",
        f"tflite chain to {len(manifest.segments) - 1}",
        *(f"tflite segment 1 at {n} tokens" for n in LENGTHS),
    } <= {row["graph"] for row in report["parity"]}
    _, lite = _segments(text_tflite)
    assert {segment.sequence_lengths for segment in lite} == {LENGTHS}
    assert {segment.sequence_length for segment in lite} == {LENGTH}


def test_each_length_is_a_signature_of_one_file(text_tflite: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    package = open_package(text_tflite)
    for file in package.manifest.variant("tflite").files:
        keys = Interpreter(model_path=str(package.path(file))).get_signature_list()
        assert set(keys) == {f"tokens_{n}" for n in LENGTHS}


def test_a_graph_with_one_unnamed_signature_still_runs(tmp_path: Path) -> None:
    # what exports before length signatures wrote: one signature, its length read off its shapes
    import litert_torch
    import torch

    from edgeexit.compile.graphs import SegmentGraph

    model = tiny_text().eval()
    out = tmp_path / "pkg"
    manifest = export(model, (1, 12), out, sample=_tokens(4, 12)).manifest
    spec = manifest.segments[1]
    args = (torch.zeros(1, 12, 16), torch.ones(1, 12, dtype=torch.int64))
    path = tmp_path / "legacy.tflite"
    path.write_bytes(litert_torch.convert(SegmentGraph(model, 1, "max_prob").eval(), args).model_content())
    segment = LiteRtSegment(path, spec, threads=1)
    assert (segment.sequence_length, segment.sequence_lengths) == (12, (12,))
    onnx = OrtSegment(out / spec.file, spec, threads=1, cache_dir=None, sha256=manifest.files[spec.file])
    tokens = _tokens(1, 7, seed=3)
    x = np.random.default_rng(0).standard_normal((1, 7, 16)).astype(np.float32)
    mask = {"attention_mask": tokens["attention_mask"]}
    got, want = segment.run(x, mask), onnx.run(x, mask)
    keep = tokens["attention_mask"].astype(bool)
    np.testing.assert_allclose(got["hidden_1"][keep], want["hidden_1"][keep], atol=1e-4)


@pytest.mark.parametrize(("batch", "length"), [(1, 5), (4, 9), (3, LENGTH)])
def test_shorter_inputs_are_padded_and_cropped_back(text_tflite: Path, batch: int, length: int) -> None:
    onnx, lite = _segments(text_tflite)
    tokens = _tokens(batch, length, seed=length)
    mask = tokens["attention_mask"]
    keep = mask.astype(bool)
    x = tokens["input_ids"]
    for ort_segment, lite_segment in zip(onnx, lite, strict=True):
        expected = ort_segment.run(x, {"attention_mask": mask})
        got = lite_segment.run(x, {"attention_mask": mask})
        assert list(got) == [o.name for o in ort_segment.spec.outputs]
        for name, value in expected.items():
            assert (got[name].shape, got[name].dtype) == (value.shape, value.dtype), name
            if name.startswith("hidden_"):  # token outputs: what padding positions hold is never read
                value, found = value[keep], got[name][keep]
            else:
                found = got[name]
            np.testing.assert_allclose(found, value, atol=1e-4, rtol=1e-3, err_msg=name)
        if ort_segment.spec.hidden is not None:
            x = expected[ort_segment.spec.hidden]


def test_engine_on_tflite_gives_the_onnx_answers(text_tflite: Path) -> None:
    tokens = _tokens(8, 11, seed=4)
    onnx = Engine(text_tflite, cache_dir=None, threshold=0.4).run_batch(tokens)
    lite = Engine(text_tflite, cache_dir=None, threshold=0.4, backend="tflite").run_batch(tokens)
    assert [(r.prediction, r.exit) for r in lite] == [(r.prediction, r.exit) for r in onnx]
    for a, b in zip(lite, onnx, strict=True):
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)


def test_a_request_longer_than_the_graphs_names_the_limit(text_tflite: Path) -> None:
    engine = Engine(text_tflite, cache_dir=None, backend="tflite")
    with pytest.raises(InputError, match=rf"20 tokens .* at most {LENGTH}"):
        engine.run_batch(_tokens(2, 20))
    _, lite = _segments(text_tflite)
    tokens = _tokens(1, 6)
    with pytest.raises(InputError, match="same token count"):
        lite[0].run(tokens["input_ids"], {"attention_mask": tokens["attention_mask"][:, :4]})


def test_samples_longer_than_the_length_and_lengths_for_image_models_are_refused(
    text_tflite: Path, tmp_path: Path, digits_package: Path, digits_model
) -> None:
    target = tmp_path / "text"
    shutil.copytree(text_tflite, target)
    with pytest.raises(ExportError, match=r"12 tokens .* at most 8; pass sequence_length >= 12"):
        add_tflite(tiny_text(), target, sequence_length=8)
    assert open_package(target).manifest.variant("tflite").report["sequence_length"] == LENGTH  # left as it was
    image = tmp_path / "digits"
    shutil.copytree(digits_package, image)
    with pytest.raises(ExportError, match="for text encoders"):
        add_tflite(digits_model, image, sequence_length=64)


def test_export_with_tflite_converts_text_at_the_default_length(tmp_path: Path) -> None:
    from edgeexit.compile.tflite import DEFAULT_SEQUENCE_LENGTH

    package = export(tiny_text(), (1, 10), tmp_path / "pkg", sample=_tokens(4, 10), tflite=True)
    report = package.manifest.variant("tflite").report
    assert report["sequence_length"] == DEFAULT_SEQUENCE_LENGTH
    assert all(row["ok"] for row in report["parity"])
    result = Engine(package.root, cache_dir=None, backend="tflite").run(_tokens(1, 7, seed=9))
    expected = Engine(package.root, cache_dir=None).run(_tokens(1, 7, seed=9))
    assert (result.exit, result.prediction) == (expected.exit, expected.prediction)


def test_verify_checks_the_tflite_text_graphs_on_the_attended_tokens(text_tflite: Path) -> None:
    from edgeexit.runtime.verify import verify_package

    report = verify_package(text_tflite)
    rows = [c for c in report.checks if c.graph.startswith("tflite segment")]
    assert len(rows) == sum(len(s.outputs) for s in open_package(text_tflite).manifest.segments)
    assert all(c.ok for c in rows), rows
