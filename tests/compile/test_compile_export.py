"""Export writes checked, batch-dynamic ONNX segments that agree with PyTorch, or nothing at all."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgeexit.compile import attach_exits
from edgeexit.compile.export import DEFAULT_ATOL, DEFAULT_RTOL, export, parity_rows
from edgeexit.compile.graphs import exit_score
from edgeexit.compile.model import MultiExitModel
from edgeexit.compile.zoo import digits_cnn, tiny_resnet, tiny_vit
from edgeexit.criteria import Boundary, create_criterion
from edgeexit.data import LabelledData
from edgeexit.errors import ExportError, ModelError
from edgeexit.manifest import Manifest, package_id_of
from edgeexit.package import Package, open_package

# --------------------------------------------------------------------------- helpers


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_max_prob(z: np.ndarray) -> np.ndarray:
    return softmax(z).max(axis=-1)


def np_margin(z: np.ndarray) -> np.ndarray:
    p = np.sort(softmax(z), axis=-1)
    return p[:, -1] - p[:, -2]


def np_entropy(z: np.ndarray) -> np.ndarray:
    p = softmax(z.astype(np.float64))
    h = -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=-1)
    return 1.0 - h / math.log(z.shape[-1])


NUMPY_SCORES = {"max_prob": np_max_prob, "margin": np_margin, "entropy": np_entropy}


def run_chain(package: Package, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every segment in turn, each fed the previous one's hidden output, as the device does."""
    manifest = package.manifest
    results: dict[str, np.ndarray] = {}
    feed = x
    for spec in manifest.segments:
        sess = session(package.path(spec.file))
        names = [o.name for o in spec.outputs]
        values = sess.run(names, {spec.inputs[0].name: feed})
        results.update(zip(names, values, strict=True))
        if spec.hidden is not None:
            feed = results[spec.hidden]
    return results


def torch_outputs(model: MultiExitModel, x: np.ndarray) -> tuple[list[np.ndarray | None], list[np.ndarray]]:
    model.eval()
    with torch.no_grad():
        logits, hidden = model(torch.from_numpy(x), return_hidden=True)
    return [None if z is None else z.numpy() for z in logits], [h.numpy() for h in hidden]


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def close(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL)


@pytest.fixture(scope="module")
def package(digits_package: Path) -> Package:
    return open_package(digits_package)


# --------------------------------------------------------------------------- the digits package


def test_every_graph_passes_the_full_onnx_checker(package: Package) -> None:
    manifest = package.manifest
    files = [s.file for s in manifest.segments] + [manifest.monolithic]
    assert files == ["segments/0.onnx", "segments/1.onnx", "segments/2.onnx", "monolithic.onnx"]
    for name in files:
        onnx.checker.check_model(str(package.path(name)), full_check=True)
        assert onnx.load(str(package.path(name))).opset_import  # a self-contained file, no external data
    assert not list(package.root.rglob("*.data"))


def test_graphs_have_a_dynamic_batch_axis(package: Package) -> None:
    manifest = package.manifest
    for spec in manifest.segments:
        graph = onnx.load(str(package.path(spec.file))).graph
        declared = {t.name: t for t in [*spec.inputs, *spec.outputs]}
        temperature = manifest.exits[spec.exit].temperature_input
        values = [v for v in [*graph.input, *graph.output] if v.name != temperature]  # shape (1,): no batch
        assert sorted(v.name for v in values) == sorted(declared)
        for value in values:
            dims = value.type.tensor_type.shape.dim
            assert dims[0].dim_param, (spec.file, value.name)
            assert not dims[0].HasField("dim_value"), (spec.file, value.name)
            assert [d.dim_value for d in dims[1:]] == list(declared[value.name].shape[1:])


@pytest.mark.parametrize("batch", [1, 7])
def test_segments_match_torch_at_any_batch(
    package: Package, digits_model: MultiExitModel, digits: LabelledData, batch: int
) -> None:
    x = digits.x[100 : 100 + batch]
    logits, hidden = torch_outputs(digits_model, x)
    for k, spec in enumerate(package.manifest.segments):
        feed = x if k == 0 else hidden[k - 1]
        names = [o.name for o in spec.outputs]
        got = dict(zip(names, session(package.path(spec.file)).run(names, {spec.inputs[0].name: feed}), strict=True))
        if spec.hidden:
            assert got[spec.hidden].shape[0] == batch
            close(got[spec.hidden], hidden[k])
        assert got[f"exit_{k}_logits"].shape == (batch, 10)
        close(got[f"exit_{k}_logits"], logits[k])
        close(got[f"exit_{k}_score"], np_max_prob(logits[k]))
        close(got[f"exit_{k}_score"], np_max_prob(got[f"exit_{k}_logits"]))
        close(got[f"exit_{k}_probabilities"], softmax(got[f"exit_{k}_logits"]))


@pytest.mark.parametrize("temperature", [0.25, 3.0])
def test_the_temperature_input_rescales_score_and_probabilities(
    package: Package, digits: LabelledData, temperature: float
) -> None:
    """Fed, the exit's temperature divides the logits before the softmax, as calibration means it."""
    x = digits.x[:9]
    spec = package.manifest.segments[0]
    names = [o.name for o in spec.outputs]
    feed = {spec.inputs[0].name: x, "exit_0_temperature": np.array([temperature], np.float32)}
    got = dict(zip(names, session(package.path(spec.file)).run(names, feed), strict=True))
    expected = softmax(got["exit_0_logits"] / temperature)
    close(got["exit_0_probabilities"], expected)
    close(got["exit_0_score"], expected.max(axis=-1))


def test_outputs_are_what_the_manifest_says(package: Package) -> None:
    manifest = package.manifest
    assert manifest.input.name == "input"
    assert manifest.input.shape == (None, 1, 8, 8)
    for k, spec in enumerate(manifest.segments):
        exit_outputs = [f"exit_{k}_logits", f"exit_{k}_score", f"exit_{k}_probabilities"]
        expected = ([f"hidden_{k}"] if k < 2 else []) + exit_outputs
        assert [o.name for o in spec.outputs] == expected
        assert spec.inputs[0].name == ("input" if k == 0 else f"hidden_{k - 1}")
        assert spec.hidden == (f"hidden_{k}" if k < 2 else None)
        if k > 0:
            previous = manifest.segments[k - 1]
            assert spec.inputs[0] == previous.output(previous.hidden)
        sess = session(package.path(spec.file))
        assert [i.name for i in sess.get_inputs()] == [spec.inputs[0].name]
        # the exit temperature: an input with a stored default of 1, fed by the engine
        assert [i.name for i in sess.get_overridable_initializers()] == [f"exit_{k}_temperature"]
        assert [o.name for o in sess.get_outputs()] == expected
        for out, declared in zip(sess.get_outputs(), spec.outputs, strict=True):
            assert out.type == "tensor(float)"
            assert declared.dtype == "float32"
            assert isinstance(out.shape[0], str)  # symbolic batch
            assert tuple(out.shape[1:]) == declared.shape[1:]
        exit_spec = manifest.exits[k]
        assert (exit_spec.logits, exit_spec.score) == (f"exit_{k}_logits", f"exit_{k}_score")
        assert (exit_spec.temperature_input, exit_spec.probabilities) == (
            f"exit_{k}_temperature",
            f"exit_{k}_probabilities",
        )
        assert exit_spec.criterion == "max_prob"
        assert exit_spec.final == (k == 2)
        assert exit_spec.threshold == (0.0 if k == 2 else 0.9)


def test_chained_segments_equal_the_monolithic_graph(package: Package, digits: LabelledData) -> None:
    x = digits.x[:7]
    chained = run_chain(package, x)
    mono = session(package.path(package.manifest.monolithic))
    names = [o.name for o in mono.get_outputs()]
    assert names == [f"exit_{k}_{kind}" for k in range(3) for kind in ("logits", "score", "probabilities")]
    for name, value in zip(names, mono.run(names, {"input": x}), strict=True):
        np.testing.assert_allclose(value, chained[name], rtol=1e-5, atol=1e-5)


def test_manifest_records_costs_labels_identity_and_parity(
    package: Package, digits_model: MultiExitModel, digits: LabelledData
) -> None:
    manifest = package.manifest
    assert manifest.model_name == "digits_cnn"
    assert manifest.labels == digits.labels
    assert manifest.opset >= 18
    graphs = [s.file for s in manifest.segments]
    tails = {name for t in manifest.tails for name in (t.file, t.config)}
    assert len(tails) == 18  # fp32, fp16 and int8 tails from the input and boundaries 0 and 1 (test_tails.py)
    assert set(manifest.files) == {*graphs, "monolithic.onnx", "reference.npz", *tails}
    assert manifest.package_id == package_id_of(manifest.files, graphs)
    assert len(manifest.package_id) == 32
    assert int(manifest.package_id, 16) >= 0
    assert Manifest.from_json(manifest.to_json()) == manifest

    for k, spec in enumerate(manifest.segments):
        assert spec.flops > 0
        own = sum(p.numel() for p in digits_model.segments[k].parameters())
        own += sum(p.numel() for p in digits_model.head(k).parameters())
        assert spec.params == own
        if spec.hidden:
            shape = spec.output(spec.hidden).shape
            assert spec.hidden_bytes == 4 * math.prod(shape[1:])
        else:
            assert spec.hidden_bytes is None
    assert manifest.segments[0].hidden_bytes == 4 * 16 * 8 * 8

    record = manifest.metadata["export"]
    assert record["parity_samples"] == 10  # 8 real samples + 2 random
    assert record["boundaries"] == [i.boundary for i in digits_model.infos]
    rows = parity_rows(package)
    assert {(r.graph, r.output) for r in rows} >= {
        (f"{where} {k}", name)
        for k, spec in enumerate(manifest.segments)
        for where in ("segment", "chain to")
        for name in [o.name for o in spec.outputs]
    }
    assert {r.output for r in rows if r.graph == "monolithic"} == {
        f"exit_{k}_{c}" for k in range(3) for c in ("logits", "score", "probabilities")
    }
    assert all(r.ok for r in rows)
    # int8 tails move the logits by design (held to top-1 agreement): every other row is float rounding
    assert all(0 <= r.max_abs_diff < 1e-3 for r in rows if not r.graph.startswith("chain via digits_cnn__from_"))
    assert all(0 <= r.max_abs_diff < 1e-2 for r in rows if not r.graph.endswith("__int8"))
    assert manifest.reference is not None
    assert (manifest.reference.atol, manifest.reference.rtol) == (DEFAULT_ATOL, DEFAULT_RTOL)

    reference = np.load(package.path("reference.npz"))
    np.testing.assert_array_equal(reference["input"], digits.x[:2])
    logits, _ = torch_outputs(digits_model, digits.x[:2])
    close(reference["2/exit_2_logits"], logits[2])


# --------------------------------------------------------------------------- exit scores


@pytest.mark.parametrize("criterion", ["max_prob", "margin", "entropy"])
def test_exit_score_matches_the_numpy_formula(criterion: str) -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(9, 6)).astype(np.float32)
    logits[0] = 0.0  # uniform: max_prob 1/6, margin 0, entropy score 0
    logits[1] = [50, 0, 0, 0, 0, 0]  # certain: every score ~1
    logits[2] = [4, 4, 0, 0, 0, 0]  # a tie at the top: margin 0
    got = exit_score(torch.from_numpy(logits), criterion).numpy()
    assert got.shape == (9,)
    np.testing.assert_allclose(got, NUMPY_SCORES[criterion](logits), rtol=1e-5, atol=1e-6)
    # ... and the runtime's numpy criterion (temperature 1) agrees with the graph.
    runtime = create_criterion(criterion).score(Boundary(logits=logits))
    np.testing.assert_allclose(got, runtime, rtol=1e-5, atol=1e-6)
    assert np.all((got >= -1e-6) & (got <= 1 + 1e-6))
    assert got[1] == pytest.approx(1.0, abs=1e-5)
    expected_uniform = {"max_prob": 1 / 6, "margin": 0.0, "entropy": 0.0}[criterion]
    assert got[0] == pytest.approx(expected_uniform, abs=1e-6)
    if criterion == "margin":
        assert got[2] == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("criterion", ["max_prob", "margin", "entropy"])
def test_exit_score_of_a_single_class_is_full_confidence(criterion: str) -> None:
    logits = torch.tensor([[0.3], [-2.0]])
    got = exit_score(logits, criterion)
    torch.testing.assert_close(got, torch.ones(2))  # not NaN (entropy would divide 0 by log 1)
    np.testing.assert_allclose(got.numpy(), create_criterion(criterion).score(Boundary(logits=logits.numpy())))


def test_exit_score_refuses_criteria_it_cannot_compute() -> None:
    with pytest.raises(ModelError, match="'patience' cannot be computed inside the graph"):
        exit_score(torch.zeros(1, 3), "patience")


def small_model_with_a_silent_exit() -> MultiExitModel:
    """Three segments; the first boundary has no classifier (similarity only)."""
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 8 * 8, 5),
    )  # fmt: skip
    model = attach_exits(backbone, exits=[0, 2], head=[None, "linear"], num_classes=5, name="silent")
    with torch.no_grad():
        backbone[5].weight.mul_(20)  # confident, distinct scores
    return model


@pytest.mark.parametrize("criterion", ["margin", "entropy"])
def test_in_graph_scores_and_a_classifierless_exit(tmp_path: Path, criterion: str) -> None:
    model = small_model_with_a_silent_exit()
    package = export(model, (1, 1, 8, 8), tmp_path / "pkg", criterion=criterion, labels=list("abcde"))
    manifest = package.manifest
    assert manifest.labels == ("a", "b", "c", "d", "e")
    silent, early, final = manifest.exits
    assert (silent.head, silent.logits, silent.score, silent.criterion) == (None, None, None, "similarity")
    assert [o.name for o in manifest.segments[0].outputs] == ["hidden_0"]
    assert (early.criterion, early.score) == (criterion, "exit_1_score")
    assert (final.criterion, final.score, final.final) == (criterion, "exit_2_score", True)

    x = np.random.default_rng(1).normal(size=(5, 1, 8, 8)).astype(np.float32)
    got = run_chain(package, x)
    logits, hidden = torch_outputs(model, x)
    assert logits[0] is None
    close(got["hidden_0"], hidden[0])
    for k in (1, 2):
        close(got[f"exit_{k}_logits"], logits[k])
        np.testing.assert_allclose(
            got[f"exit_{k}_score"], NUMPY_SCORES[criterion](got[f"exit_{k}_logits"]), rtol=1e-4, atol=1e-5
        )
        runtime = create_criterion(criterion).score(Boundary(logits=got[f"exit_{k}_logits"]))
        np.testing.assert_allclose(got[f"exit_{k}_score"], runtime, rtol=1e-4, atol=1e-5)
    assert np.ptp(got["exit_2_score"]) > 0.01  # the scores are not all the same number


# --------------------------------------------------------------------------- other model families


@pytest.mark.parametrize(
    ("factory", "shape", "heads"),
    [
        (tiny_vit, (1, 1, 28, 28), ["conv", "conv", "attention", "backbone"]),
        (tiny_resnet, (1, 3, 32, 32), ["conv", "conv", "conv", "backbone"]),
    ],
    ids=["tiny_vit", "tiny_resnet"],
)
def test_zoo_models_export(tmp_path: Path, factory, shape: tuple[int, ...], heads: list[str]) -> None:
    model = factory()
    package = export(model, shape, tmp_path / model.name)
    manifest = package.manifest
    assert manifest.model_name == model.name
    assert [e.head for e in manifest.exits] == heads
    assert all(s.flops > 0 for s in manifest.segments)
    assert all(r.ok for r in parity_rows(package))
    for name in manifest.files:
        if name.endswith(".onnx"):
            onnx.checker.check_model(str(package.path(name)), full_check=True)

    x = np.random.default_rng(2).normal(size=(3, *shape[1:])).astype(np.float32)
    got = run_chain(package, x)
    logits, hidden = torch_outputs(model, x)
    for k in range(model.num_exits):
        close(got[f"exit_{k}_logits"], logits[k])
        if k < model.num_exits - 1:
            close(got[f"hidden_{k}"], hidden[k])
    if factory is tiny_vit:
        assert manifest.segments[0].output("hidden_0").shape == (None, 17, 32)  # class token + 4x4 patches


# --------------------------------------------------------------------------- failures leave nothing behind


def test_existing_directory_without_overwrite(package_copy: Path) -> None:
    before = tree_digest(package_copy)
    with pytest.raises(ExportError, match="already exists") as info:
        export(digits_cnn(), (1, 1, 8, 8), package_copy, overwrite=False)
    assert "overwrite=True" in str(info.value)
    assert tree_digest(package_copy) == before
    assert sorted(p.name for p in package_copy.parent.iterdir()) == ["pkg"]  # no staging directory
    open_package(package_copy)


def test_failed_parity_raises_with_differences_and_leaves_nothing(
    package: Package, digits_model: MultiExitModel, digits: LabelledData, tmp_path: Path
) -> None:
    # The digits package was exported from the same model and inputs: some outputs differ from
    # PyTorch by float rounding (but no more), so a zero tolerance must fail.
    recorded = parity_rows(package)
    assert any(r.max_abs_diff > 0 for r in recorded)
    out = tmp_path / "strict"
    with pytest.raises(ExportError) as info:
        export(digits_model, (1, 1, 8, 8), out, labels=digits.labels, sample=digits.x[:8], atol=0.0, rtol=0.0)
    message = str(info.value)
    assert "ONNX Runtime disagrees with PyTorch beyond atol=0, rtol=0" in message
    for k in range(3):
        assert f"segment {k} exit_{k}_logits: max |diff|" in message
        assert f"chain to {k} exit_{k}_score: max |diff|" in message
    assert "segment 0 hidden_0: max |diff|" in message
    assert list(tmp_path.iterdir()) == []  # neither the package nor a .partial staging directory


def test_failed_parity_leaves_an_existing_package_untouched(
    digits_model: MultiExitModel, digits: LabelledData, package_copy: Path
) -> None:
    before = tree_digest(package_copy)
    with pytest.raises(ExportError, match="disagrees with PyTorch"):
        export(digits_model, (1, 1, 8, 8), package_copy, sample=digits.x[:8], atol=0.0, rtol=0.0, overwrite=True)
    assert tree_digest(package_copy) == before
    assert sorted(p.name for p in package_copy.parent.iterdir()) == ["pkg"]
    open_package(package_copy)


def test_input_shape_the_model_rejects(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"rejected an input of shape \(1, 3, 8, 8\)"):
        export(digits_cnn(), (1, 3, 8, 8), tmp_path / "pkg")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"criterion": "vibes"}, ExportError, "unknown criterion 'vibes'"),
        ({"labels": ["a", "b"]}, ExportError, "2 labels for a model with 10 classes"),
        ({"input_shape": (1, 0, 8, 8)}, ExportError, "input shape .* is invalid"),
        ({"sample": np.zeros((2, 1, 9, 9), np.float32)}, ExportError, "sample inputs have shape"),
    ],
)
def test_bad_arguments_fail_before_writing(tmp_path: Path, kwargs: dict, error: type, fragment: str) -> None:
    args = {"input_shape": (1, 1, 8, 8), **kwargs}
    with pytest.raises(error, match=fragment):
        export(digits_cnn(), out=tmp_path / "pkg", **args)
    assert list(tmp_path.iterdir()) == []


def test_export_needs_a_multi_exit_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="expects a MultiExitModel; got Linear"):
        export(nn.Linear(2, 2), (1, 2), tmp_path / "pkg")  # type: ignore[arg-type]
