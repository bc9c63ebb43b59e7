"""attach_exits cuts real backbones into segments that share (never copy) the user's weights."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from edgeexit.compile import attach_exits, list_adapters
from edgeexit.compile.model import MultiExitModel
from edgeexit.compile.zoo import TinyResNet, TinyViT
from edgeexit.errors import ModelError


def small_sequential() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 5),
    )


def param_ids(module: nn.Module) -> set[int]:
    return {id(p) for p in module.parameters()}


def assert_shares_weights(model: MultiExitModel, backbone: nn.Module, final_is_backbone: bool = True) -> None:
    """Every backbone parameter is the very object inside the model: no copies anywhere."""
    inside = param_ids(model.segments)
    if final_is_backbone:
        inside |= param_ids(model.head(model.num_exits - 1))
    assert inside == param_ids(backbone)
    model_ptrs = {p.data_ptr() for p in model.parameters()}
    assert {p.data_ptr() for p in backbone.parameters()} <= model_ptrs


# --------------------------------------------------------------------------- nn.Sequential


def test_sequential_exits_after_the_given_indices() -> None:
    backbone = small_sequential().eval()
    model = attach_exits(backbone, exits=[2, 4], head="linear", num_classes=5, input_shape=(1, 1, 8, 8)).eval()

    assert model.num_exits == 3
    assert [len(s) for s in model.segments] == [3, 2, 2]  # children 0..2 | 3..4 | 5..6
    assert model.segments[0][0] is backbone[0]
    assert model.segments[1][0] is backbone[3]
    assert model.segments[2][1] is backbone[6]
    assert [i.boundary for i in model.infos] == ["after stage 2", "after stage 4", "after stage 6"]
    assert [i.head for i in model.infos] == ["linear", "linear", "backbone"]

    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        logits = model(x)
        expected_final = backbone(x)
    assert len(logits) == 3
    assert all(z.shape == (3, 5) for z in logits)
    torch.testing.assert_close(logits[-1], expected_final, rtol=0, atol=0)


def test_sequential_return_hidden_gives_the_boundary_tensors() -> None:
    backbone = small_sequential().eval()
    model = attach_exits(backbone, exits=[2, 4], num_classes=5, input_shape=(1, 1, 8, 8)).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        logits, hidden = model(x, return_hidden=True)
        after2 = backbone[:3](x)
        after4 = backbone[:5](x)
        plain = model(x)
    assert len(hidden) == 3
    torch.testing.assert_close(hidden[0], after2, rtol=0, atol=0)
    torch.testing.assert_close(hidden[1], after4, rtol=0, atol=0)
    torch.testing.assert_close(hidden[2], backbone(x), rtol=0, atol=0)
    for a, b in zip(logits, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # The exit heads read exactly those tensors.
    torch.testing.assert_close(logits[0], model.head(0)(hidden[0]), rtol=0, atol=0)


def test_sequential_segments_share_the_backbone_parameters() -> None:
    backbone = small_sequential()
    model = attach_exits(backbone, exits=[2, 4], num_classes=5, input_shape=(1, 1, 8, 8))
    assert_shares_weights(model, backbone, final_is_backbone=False)  # the final "head" is nn.Identity
    assert model.segments[0][0].weight is backbone[0].weight
    assert model.segments[0][1].running_mean is backbone[1].running_mean
    assert {id(p) for p in model.backbone_parameters()} == param_ids(backbone)
    # Changing the user's module changes the model: they are the same storage.
    x = torch.randn(1, 1, 8, 8)
    model.eval()
    with torch.no_grad():
        before = model(x)[-1].clone()
        backbone[6].bias.add_(1.0)
        after = model(x)[-1]
    torch.testing.assert_close(after, before + 1.0)


def test_sequential_exit_before_an_inplace_relu_keeps_the_boundary_and_trains() -> None:
    """torchvision-style ``Conv, ReLU(inplace=True)``: exiting after the conv must not let the next
    segment overwrite the boundary tensor (returned hidden, and the head's autograd inputs)."""
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(inplace=True)
    )
    model = attach_exits(
        backbone, exits=[0], head="conv", final_head="conv", num_classes=3, head_options={"width": 4},
        input_shape=(1, 1, 6, 6),
    )  # fmt: skip
    x = torch.randn(2, 1, 6, 6)
    model.eval()
    with torch.no_grad():
        _, hidden = model(x, return_hidden=True)
        conv_out = backbone[0](x)
    assert hidden[0].min() < 0  # not clobbered by the ReLU that starts the next segment
    torch.testing.assert_close(hidden[0], conv_out, rtol=0, atol=0)
    model.train()
    loss = sum(z.sum() for z in model(x))
    loss.backward()  # no "modified by an inplace operation"
    assert model.head(0).features[0].weight.grad is not None


def test_sequential_final_head_replaces_the_output() -> None:
    backbone = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1))
    model = attach_exits(
        backbone, exits=[1], head="linear", final_head="linear", num_classes=7, input_shape=(1, 1, 5, 5)
    )
    assert model.infos[-1].head == "linear"
    with torch.no_grad():
        logits = model(torch.randn(2, 1, 5, 5))
    assert [tuple(z.shape) for z in logits] == [(2, 7), (2, 7)]


def test_exits_accept_index_strings() -> None:
    a = attach_exits(small_sequential(), exits=[2, 4], num_classes=5)
    b = attach_exits(small_sequential(), exits=["2", "4"], num_classes=5)
    assert a.infos == b.infos


@pytest.mark.parametrize(
    ("exits", "fragment"),
    [
        ([6], "cannot exit after stage 6"),  # the last child is the final exit
        ([7], "cannot exit after stage 7"),
        ([-1], "cannot exit after stage -1"),
        ([4, 2], "strictly increasing"),
        ([2, 2], "strictly increasing"),
        (["nope"], "no stage 'nope'"),
        ([1.5], "not a stage index"),
    ],
)
def test_bad_exit_positions_raise_model_error(exits: list, fragment: str) -> None:
    with pytest.raises(ModelError, match=fragment.replace("(", r"\(")):
        attach_exits(small_sequential(), exits=exits, num_classes=5)


def test_one_head_name_per_exit_is_required() -> None:
    with pytest.raises(ModelError, match="2 exits but 1 head names"):
        attach_exits(small_sequential(), exits=[2, 4], head=["linear"], num_classes=5)


def test_empty_sequential_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="no stages"):
        attach_exits(nn.Sequential(), exits=[], num_classes=5)


@pytest.mark.parametrize("where", ["head", "final_head"])
def test_unknown_head_lists_the_known_heads(where: str) -> None:
    kwargs = {"head": "bogus"} if where == "head" else {"final_head": "bogus"}
    with pytest.raises(ModelError, match="unknown head 'bogus'") as info:
        attach_exits(small_sequential(), exits=[2], num_classes=5, **kwargs)
    for known in ("attention", "conv", "linear"):
        assert known in str(info.value)


def test_head_options_the_head_rejects_are_a_model_error() -> None:
    with pytest.raises(ModelError, match="rejected options"):
        attach_exits(small_sequential(), exits=[2], num_classes=5, head_options={"colour": "red"})


class Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.mark.parametrize("backbone", [nn.Linear(4, 4), Custom(), nn.ModuleList([nn.ReLU(), nn.ReLU()])])
def test_unsplittable_backbone_names_what_was_expected(backbone: nn.Module) -> None:
    with pytest.raises(ModelError) as info:
        attach_exits(backbone, exits=[0], num_classes=4)
    message = str(info.value)
    assert f"cannot split a {type(backbone).__name__}" in message
    assert "nn.Sequential" in message
    assert "layer1..layer4" in message  # ResNet layout
    assert "cls_token" in message
    assert "conv_proj" in message
    assert {"resnet", "sequential", "vit"} <= set(list_adapters())


@pytest.mark.parametrize("adapter", ["resnet", "vit"])
def test_forcing_an_adapter_that_does_not_fit_is_a_model_error(adapter: str) -> None:
    with pytest.raises(ModelError, match=f"adapter '{adapter}' cannot split a Linear; expected"):
        attach_exits(nn.Linear(4, 4), exits=[0], adapter=adapter)


def test_unknown_adapter_is_a_model_error_listing_adapters() -> None:
    with pytest.raises(ModelError, match=r"unknown adapter 'nope'.*resnet, sequential, vit"):
        attach_exits(small_sequential(), exits=[2], adapter="nope")


def test_materialize_names_a_rejected_shape() -> None:
    model = attach_exits(small_sequential(), exits=[2], num_classes=5)
    with pytest.raises(ModelError, match=r"\(1, 3, 8, 8\)"):
        model.materialize((1, 3, 8, 8))


# --------------------------------------------------------------------------- ResNet


def test_resnet_exits_by_index_and_by_name() -> None:
    torch.manual_seed(0)
    backbone = TinyResNet(num_classes=6, width=4).eval()
    by_name = attach_exits(backbone, exits=["layer2"], head="linear", num_classes=6, input_shape=(1, 3, 16, 16))
    by_index = attach_exits(backbone, exits=[2], head="linear", num_classes=6, input_shape=(1, 3, 16, 16))
    assert by_name.infos == by_index.infos
    assert [i.boundary for i in by_name.infos] == ["after layer2", "after layer4"]
    assert by_name.segments[0][2] is backbone.layer2
    assert by_name.segments[1][0] is backbone.layer3
    assert_shares_weights(by_name, backbone)

    x = torch.randn(2, 3, 16, 16)
    by_name.eval()
    with torch.no_grad():
        logits, hidden = by_name(x, return_hidden=True)
        stem = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
        after2 = backbone.layer2(backbone.layer1(stem))
        reference = backbone(x)
    torch.testing.assert_close(hidden[0], after2, rtol=0, atol=0)
    assert hidden[0].shape == (2, 8, 8, 8)
    torch.testing.assert_close(logits[-1], reference, rtol=0, atol=0)
    assert logits[0].shape == (2, 6)


def test_resnet_three_exits_with_mixed_heads() -> None:
    backbone = TinyResNet(num_classes=4, width=4)
    model = attach_exits(
        backbone, exits=["layer1", "layer2", "layer3"], head=["conv", None, "attention"], num_classes=4,
        head_options={"width": 8}, input_shape=(1, 3, 16, 16),
    )  # fmt: skip
    assert [i.head for i in model.infos] == ["conv", None, "attention", "backbone"]
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 16, 16))
    assert logits[1] is None
    assert [tuple(z.shape) for z in logits if z is not None] == [(2, 4)] * 3


@pytest.mark.parametrize(("exits", "fragment"), [(["layer4"], "cannot exit after stage 4"), (["fc"], "no stage 'fc'")])
def test_resnet_bad_exits(exits: list, fragment: str) -> None:
    with pytest.raises(ModelError, match=fragment):
        attach_exits(TinyResNet(width=4), exits=exits)


# --------------------------------------------------------------------------- ViT


class TorchvisionEncoder(nn.Module):
    def __init__(self, tokens: int, dim: int, depth: int) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.randn(1, tokens, dim) * 0.1)
        self.dropout = nn.Dropout(0.0)
        self.layers = nn.Sequential(
            OrderedDict(
                (f"encoder_layer_{i}", nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU()))
                for i in range(depth)
            )
        )
        self.ln = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class TorchvisionViT(nn.Module):
    """The attribute layout of torchvision.models.VisionTransformer, in miniature."""

    def __init__(self, num_classes: int = 5, size: int = 8, patch: int = 2, dim: int = 12, depth: int = 3) -> None:
        super().__init__()
        self.conv_proj = nn.Conv2d(1, dim, patch, patch)
        self.class_token = nn.Parameter(torch.randn(1, 1, dim))
        self.encoder = TorchvisionEncoder((size // patch) ** 2 + 1, dim, depth)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(dim, num_classes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.conv_proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.class_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        return self.heads(self.encoder(tokens)[:, 0])


def test_vit_timm_layout_cls_pool() -> None:
    torch.manual_seed(0)
    backbone = TinyViT(num_classes=5, size=8, patch=2, dim=16, depth=3).eval()
    model = attach_exits(backbone, exits=[0, 1], head=["linear", "attention"], num_classes=5, input_shape=(1, 1, 8, 8))
    assert [i.boundary for i in model.infos] == ["after block0", "after block1", "after block2"]
    assert model.token_layout.prefix == 1
    assert model.token_layout.pool == "cls"
    assert_shares_weights(model, backbone)
    assert model.segments[0][0][0].cls_token is backbone.cls_token
    assert model.segments[0][0][0].pos_embed is backbone.pos_embed
    assert model.segments[0][0][1] is backbone.blocks[0]

    x = torch.randn(3, 1, 8, 8)
    model.eval()
    with torch.no_grad():
        logits, hidden = model(x, return_hidden=True)
        reference = backbone(x)
    assert [tuple(h.shape) for h in hidden] == [(3, 17, 16)] * 3
    torch.testing.assert_close(logits[-1], reference, rtol=1e-6, atol=1e-6)
    # The early linear head reads the class token.
    torch.testing.assert_close(logits[0], model.head(0).classifier(hidden[0][:, 0]), rtol=0, atol=0)


def test_vit_timm_layout_with_a_bare_conv_patch_embedding() -> None:
    """timm-style models whose patch_embed returns (N, D, h, w) are flattened to tokens."""
    torch.manual_seed(0)
    backbone = TinyViT(num_classes=5, size=8, patch=2, dim=16, depth=2).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        reference = backbone(x)
    backbone.patch_embed = backbone.patch_embed.proj  # the same conv, without the flatten
    model = attach_exits(backbone, exits=[0], num_classes=5, input_shape=(1, 1, 8, 8)).eval()
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(logits[-1], reference, rtol=1e-6, atol=1e-6)


def test_vit_timm_layout_mean_pool() -> None:
    torch.manual_seed(0)
    backbone = TinyViT(num_classes=5, size=8, patch=2, dim=16, depth=3).eval()
    model = attach_exits(backbone, exits=[1], head="linear", num_classes=5, pool="mean", input_shape=(1, 1, 8, 8))
    x = torch.randn(2, 1, 8, 8)
    model.eval()
    with torch.no_grad():
        logits, hidden = model(x, return_hidden=True)
        final = backbone.head(backbone.norm(hidden[-1])[:, 1:].mean(dim=1))
        early = model.head(0).classifier(hidden[0][:, 1:].mean(dim=1))
    torch.testing.assert_close(logits[-1], final, rtol=0, atol=0)
    torch.testing.assert_close(logits[0], early, rtol=0, atol=0)


def test_vit_torchvision_layout_cls_pool_matches_the_backbone() -> None:
    torch.manual_seed(0)
    backbone = TorchvisionViT().eval()
    model = attach_exits(backbone, exits=[0, 1], head=["conv", "linear"], num_classes=5, input_shape=(1, 1, 8, 8))
    assert_shares_weights(model, backbone)
    embedding = model.segments[0][0][0]
    assert embedding.conv_proj is backbone.conv_proj
    assert embedding.class_token is backbone.class_token
    assert embedding.pos_embedding is backbone.encoder.pos_embedding
    assert model.segments[1][0] is backbone.encoder.layers[1]

    x = torch.randn(4, 1, 8, 8)
    model.eval()
    with torch.no_grad():
        logits, hidden = model(x, return_hidden=True)
        reference = backbone(x)
    assert [tuple(h.shape) for h in hidden] == [(4, 17, 12)] * 3
    torch.testing.assert_close(logits[-1], reference, rtol=1e-6, atol=1e-6)
    assert [tuple(z.shape) for z in logits] == [(4, 5)] * 3


def test_vit_torchvision_layout_mean_pool_and_no_classifier_exit() -> None:
    torch.manual_seed(0)
    backbone = TorchvisionViT().eval()
    model = attach_exits(backbone, exits=[0, 1], head=[None, "linear"], pool="mean", num_classes=5)
    assert [i.head for i in model.infos] == [None, "linear", "backbone"]
    assert model.head(0) is None
    x = torch.randn(2, 1, 8, 8)
    model.eval()
    with torch.no_grad():
        logits, hidden = model(x, return_hidden=True)
        final = backbone.heads(backbone.encoder.ln(hidden[-1])[:, 1:].mean(dim=1))
        early = model.head(1).classifier(hidden[1][:, 1:].mean(dim=1))
    assert logits[0] is None
    torch.testing.assert_close(logits[1], early, rtol=0, atol=0)
    torch.testing.assert_close(logits[2], final, rtol=0, atol=0)


def test_vit_rejects_an_unknown_pool_and_bad_exits() -> None:
    with pytest.raises(ModelError, match=r"'cls'.*'mean'.*got 'max'"):
        attach_exits(TorchvisionViT(), exits=[0], pool="max")
    with pytest.raises(ModelError, match="cannot exit after stage 2"):
        attach_exits(TorchvisionViT(depth=3), exits=[2])


def test_last_exit_needs_a_classifier() -> None:
    backbone = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU())
    with pytest.raises(ModelError, match="final exit"):
        MultiExitModel([backbone], [None], [object()], name="x", num_classes=2)  # type: ignore[list-item]
