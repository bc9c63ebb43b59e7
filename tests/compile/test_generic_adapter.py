"""The generic adapter: any traceable network cut at named modules, boundaries of several tensors.

Each zoo model is exported for real, verified, and run through the ONNX Runtime engine one
sample at a time and in batches, at thresholds that stop every sample at each exit in turn; the
answers must be the PyTorch model's own at that exit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeexit.compile import attach_exits, create_model
from edgeexit.compile.adapters.generic import GraphSegment
from edgeexit.compile.export import export
from edgeexit.compile.zoo import TinyResNet, TinyViT
from edgeexit.compile.zoo_graphs import ImageWithMetadata, MobileNetV2, UNetClassifier
from edgeexit.errors import ModelError
from edgeexit.runtime import Engine
from edgeexit.runtime.backends import bind_chain
from edgeexit.runtime.verify import verify_package

#: zoo name -> the tensors each boundary carries besides its hidden one
CARRIED = {
    "graph_mobilenet_v2": ((), ()),
    "graph_unet": (("hidden_0_1", "hidden_0_2"), ("hidden_1_1",)),
    "graph_convnext": ((), (), ()),
    "graph_two_inputs": (("hidden_0_1",), ("hidden_1_1",)),
}


def _inputs(model: nn.Module, n: int, seed: int = 1) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(e.shape, generator=generator) for e in model.example_inputs((n,)))


def _feed(model: nn.Module, values: tuple[torch.Tensor, ...], rows: slice) -> object:
    if not model.context_names:
        return values[0][rows].numpy()
    names = (model.input_name, *model.context_names)
    return {name: v[rows].numpy() for name, v in zip(names, values, strict=True)}


@pytest.fixture(scope="module", params=sorted(CARRIED))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, nn.Module, Path]:
    torch.manual_seed(0)
    model = create_model(request.param).eval()
    shape = (1, *model.example_inputs((1,))[0].shape[1:])
    out = tmp_path_factory.mktemp(request.param) / "package"
    export(model, shape, out, monolithic=True)
    return request.param, model, out


def test_boundaries_carry_every_tensor_a_later_segment_reads(exported: tuple[str, nn.Module, Path]) -> None:
    name, model, out = exported
    manifest = Engine(out).manifest
    assert model.carried == CARRIED[name]
    for k, carried in enumerate(CARRIED[name]):
        spec, after = manifest.segments[k], manifest.segments[k + 1]
        assert spec.carries == carried
        assert tuple(i.name for i in after.inputs) == (f"hidden_{k}", *carried)  # the recorded order
        assert spec.hidden_bytes == sum(spec.output(n).sample_bytes() for n in spec.boundary)
    report = verify_package(out)
    assert report.ok
    assert any(c.graph == "monolithic" for c in report.checks)


def test_every_exit_answers_as_pytorch_does_one_by_one_and_batched(exported: tuple[str, nn.Module, Path]) -> None:
    _, model, out = exported
    values = _inputs(model, 5)
    with torch.no_grad():
        expected = [torch.softmax(logits, dim=-1).numpy() for logits in model(*values)]
    for k in range(model.num_exits):
        # 0: the first exit answers everything; above 1: only the final exit can
        engine = Engine(out, threshold=0.0 if k == 0 else 1.01, cache_dir=None)
        # fixed shapes everywhere: the copy-free chain binds every boundary tensor and side input
        assert bind_chain("onnxruntime", engine.segments, engine.manifest.input) is not None
        one = [engine.run(_feed(model, values, slice(i, i + 1))) for i in range(5)]
        batch = engine.run_batch(_feed(model, values, slice(None)))
        want = 0 if k == 0 else model.num_exits - 1
        for i, (single, batched) in enumerate(zip(one, batch, strict=True)):
            assert single.exit == batched.exit == want
            np.testing.assert_allclose(single.probabilities, expected[want][i], atol=1e-4)
            np.testing.assert_allclose(batched.probabilities, single.probabilities, atol=1e-5)  # other kernels


def test_a_request_split_at_a_boundary_of_several_tensors_resumes_with_the_same_answer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("graph_unet").eval()
    export(model, (1, 1, 28, 28), tmp_path / "unet")
    engine = Engine(tmp_path / "unet", threshold=1.01, cache_dir=None)
    x = _inputs(model, 3)[0].numpy()
    for boundary in (0, 1):
        pending = engine.run_until(x[:1], boundary)
        assert set(engine.manifest.segments[boundary].carries) <= set(pending.context)
        resumed = engine.resume(pending)
        np.testing.assert_allclose(resumed.probabilities, engine.run(x[:1]).probabilities, atol=1e-6)
        survivors = engine.run_batch_until(x, boundary).pending
        assert survivors is not None
        for row, result in enumerate(engine.resume_batch(survivors)):
            np.testing.assert_allclose(result.probabilities, engine.run(x[row : row + 1]).probabilities, atol=1e-5)


def test_the_final_exit_is_the_backbones_own_output_with_its_own_weights() -> None:
    torch.manual_seed(0)
    backbone = UNetClassifier().eval()
    model = attach_exits(backbone, exits=["down3", "up2"], num_classes=10, input_shape=(2, 1, 28, 28)).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[-1], backbone(x))
        backbone.classifier.weight.mul_(2.0)  # the traced segments hold the same parameter tensors
        torch.testing.assert_close(model(x)[-1], backbone(x))


def test_exits_can_be_named_by_exported_node_and_cuts_follow_graph_order() -> None:
    torch.manual_seed(0)
    backbone = MobileNetV2().eval()
    by_module = attach_exits(backbone, exits=["features.3"], num_classes=10, input_shape=(2, 3, 32, 32))
    node = by_module.segments[0].module.graph.output_node().args[0][0].name  # features.3's last node
    by_node = attach_exits(backbone, exits=[node], num_classes=10, input_shape=(2, 3, 32, 32), adapter="generic")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(by_module.segments[0](x)[0], by_node.segments[0](x)[0])


def test_batch_norm_and_dropout_follow_train_and_eval() -> None:
    torch.manual_seed(0)
    backbone = MobileNetV2()
    model = attach_exits(backbone, exits=["features.3"], num_classes=10, input_shape=(2, 3, 32, 32))
    segment = model.segments[0]
    assert isinstance(segment, GraphSegment)
    x = torch.randn(4, 3, 32, 32)
    backbone.eval(), model.eval()
    with torch.no_grad():
        torch.testing.assert_close(segment(x)[0], backbone.features[:4](x))
    backbone.train(), model.train()
    with torch.no_grad():  # batch statistics, as the backbone computes them in training mode
        torch.testing.assert_close(segment(x)[0], backbone.features[:4](x))


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if y.sum() > 0:  # Python control flow on a tensor's value: torch.export cannot trace it
            y = -y
        return self.b(y)


class WithCond(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.inner = nn.Linear(4, 4)
        self.b = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)  # a data-dependent branch torch.export can trace: its body is a subgraph
        y = torch.cond(y.sum() > 0, lambda t: self.inner(t), lambda t: -t, (y,))
        return self.b(y)


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.mid = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.shared(self.mid(self.shared(x))))


SHAPE = {"input_shape": (2, 3, 32, 32)}


@pytest.mark.parametrize(
    ("backbone", "exits", "options", "message"),
    [
        (MobileNetV2(), ["features.99"], SHAPE, r"no module or exported node named 'features\.99'.*features\.0"),
        (MobileNetV2(), ["features.6", "features.3"], SHAPE, "not in the order the model computes them"),
        (MobileNetV2(), ["features.3"], {}, "needs its input: pass input_shape"),
        (MobileNetV2(), ["features.3"], {**SHAPE, "final_head": "linear"}, "keeps the backbone's own output"),
        (MobileNetV2(num_classes=7), ["features.3"], SHAPE, "outputs 7 classes but num_classes is 10"),
        (Branchy(), ["a"], {"input_shape": (2, 4)}, r"torch\.export cannot trace Branchy.*control flow"),
        (Twice(), ["shared"], {"input_shape": (2, 4)}, "module 'shared' runs more than once"),
        (WithCond(), ["inner"], {"input_shape": (2, 4)}, "module 'inner' .* inside a data-dependent branch"),
    ],
)
def test_a_cut_that_cannot_be_made_is_a_clear_error(
    backbone: nn.Module, exits: list[str], options: dict[str, object], message: str
) -> None:
    classes = 3 if isinstance(backbone, (Branchy, Twice, WithCond)) else 10
    with pytest.raises(ModelError, match=message):
        attach_exits(backbone, exits=exits, num_classes=classes, adapter="generic", **options)


def test_a_backbone_no_family_claims_falls_to_the_generic_adapter() -> None:
    model = attach_exits(ImageWithMetadata(), exits=["block1"], num_classes=10,
                         example_inputs=(torch.randn(2, 1, 28, 28), torch.randn(2, 4)))  # fmt: skip
    assert isinstance(model.segments[0], GraphSegment)
    assert (model.input_name, model.context_names) == ("image", ("metadata",))


def test_one_tensor_boundaries_of_a_traced_model_get_working_tails(tmp_path: Path) -> None:
    torch.manual_seed(0)
    package = export(create_model("graph_mobilenet_v2"), (1, 3, 32, 32), tmp_path / "mnv2", codecs=("fp32", "int8"))
    assert {(t.boundary, t.codec) for t in package.manifest.tails} == {
        (b, c) for b in (-1, 0, 1) for c in ("fp32", "int8")
    }
    assert verify_package(tmp_path / "mnv2").ok  # every tail run on the reference and compared


def test_the_generic_path_gives_the_sequential_adapters_segments() -> None:
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 10),
    ).eval()  # fmt: skip
    family = attach_exits(backbone, exits=[1, 3], num_classes=10, input_shape=(2, 1, 8, 8))
    generic = attach_exits(backbone, exits=["1", "3"], num_classes=10, input_shape=(2, 1, 8, 8), adapter="generic")
    assert generic.carried == ((), ())  # one tensor per boundary, as the family adapter cuts
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        _, family_hidden = family(x, return_hidden=True)
        _, generic_hidden = generic(x, return_hidden=True)
    for a, b in zip(family_hidden, generic_hidden, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("backbone", "family_exits", "generic_exits", "shape"),
    [
        (TinyResNet(10, 3, 8, 1), ["layer1", "layer2", "layer3"], ["layer1", "layer2", "layer3"], (2, 3, 32, 32)),
        (TinyViT(10, 1, 28, 7, 16, 3), [0, 1], ["blocks.0", "blocks.1"], (2, 1, 28, 28)),
    ],
    ids=["resnet", "vit"],
)
def test_the_generic_path_cuts_the_families_where_their_adapters_do(
    backbone: nn.Module, family_exits: list[object], generic_exits: list[str], shape: tuple[int, ...]
) -> None:
    """Same boundaries, one tensor each, same values: the family adapters stay for their heads'
    defaults (pooling, token layout), not because the generic path could not cut these models."""
    torch.manual_seed(0)
    backbone.eval()
    family = attach_exits(backbone, exits=family_exits, num_classes=10, input_shape=shape).eval()
    generic = attach_exits(backbone, exits=generic_exits, num_classes=10, input_shape=shape, adapter="generic").eval()
    assert generic.carried == ((),) * len(generic_exits)
    x = torch.randn(*shape)
    with torch.no_grad():
        family_logits, family_hidden = family(x, return_hidden=True)
        generic_logits, generic_hidden = generic(x, return_hidden=True)
    assert len(family_hidden) == len(generic_hidden)
    for a, b in zip(family_hidden[:-1], generic_hidden[:-1], strict=True):  # every boundary with a later segment
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(family_logits[-1], generic_logits[-1])  # both end in the backbone's classifier


def test_a_batch_size_read_after_the_cut_is_derived_again_in_the_later_segment(tmp_path: Path) -> None:
    """A ViT reads ``x.shape[0]`` (the batch) in every attention block: no boundary carries a size,
    each segment takes it from its own input, and the graphs keep their dynamic batch axis."""
    torch.manual_seed(0)
    model = attach_exits(TinyViT(10, 1, 28, 7, 16, 3), exits=["blocks.0", "blocks.1"], num_classes=10,
                         input_shape=(2, 1, 28, 28), adapter="generic").eval()  # fmt: skip
    assert model.carried == ((), ())
    export(model, (1, 1, 28, 28), tmp_path / "vit", codecs=("fp32",))
    assert verify_package(tmp_path / "vit").ok
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        want = torch.softmax(model(x)[-1], dim=-1).numpy()
    got = Engine(tmp_path / "vit", threshold=1.01, cache_dir=None).run_batch(x.numpy())
    np.testing.assert_allclose(np.stack([r.probabilities for r in got]), want, atol=1e-4)


def test_a_model_with_two_inputs_trains_on_images_and_their_side_inputs(tmp_path: Path) -> None:
    """The label is the side vector's argmax, so only a model fed its second input can learn it."""
    from edgeexit.compile import evaluate, train
    from edgeexit.data import LabelledData, load_npz

    rng = np.random.default_rng(0)
    side = rng.normal(size=(96, 4)).astype(np.float32)
    data = LabelledData(
        x=rng.random((96, 1, 28, 28), dtype=np.float32), y=side.argmax(axis=1).astype(np.int64),
        labels=("a", "b", "c", "d"), source="synthetic", extra={"metadata": side},
    )  # fmt: skip
    torch.manual_seed(0)
    model = create_model("graph_two_inputs", num_classes=4)
    report = train(model, data, epochs=40, batch_size=32, lr=1e-2, progress=False)
    final = report.accuracy[-1].accuracy
    assert final is not None
    assert final >= 0.9
    assert evaluate(model, data.subset(np.arange(10)))[-1].accuracy is not None
    with pytest.raises(ModelError, match=r"takes the further input\(s\) \['metadata'\]"):
        train(model, LabelledData(data.x, data.y, data.labels, "images alone"), epochs=1, progress=False)
    data.save_npz(tmp_path / "two.npz")  # the side inputs travel with the images
    np.testing.assert_array_equal(load_npz(tmp_path / "two.npz").subset(np.arange(3)).extra["metadata"], side[:3])
