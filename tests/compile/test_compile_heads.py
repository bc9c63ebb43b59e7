"""Exit heads read feature maps and token sequences alike and always return (N, num_classes)."""

from __future__ import annotations

import pytest
import torch

from edgeexit.compile import create_head, list_heads
from edgeexit.compile.heads import TokenLayout
from edgeexit.compile.heads.base import pool_features, tokens_to_map
from edgeexit.errors import EdgeExitError

HEADS = ["linear", "conv", "attention"]
CLS = TokenLayout(prefix=1, pool="cls")
MEAN = TokenLayout(prefix=1, pool="mean")


def test_the_registry_lists_the_three_heads() -> None:
    assert list_heads() == ["attention", "conv", "linear"]
    assert list_heads("li*") == ["linear"]


def test_unknown_head_lists_the_known_ones() -> None:
    with pytest.raises(EdgeExitError, match="unknown head 'mlp'; expected one of: attention, conv, linear"):
        create_head("mlp", 3)


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("batch", [1, 5])
def test_heads_on_feature_maps(name: str, batch: int) -> None:
    torch.manual_seed(0)
    head = create_head(name, 7, width=8) if name != "linear" else create_head(name, 7)
    logits = head(torch.randn(batch, 6, 4, 5))
    assert logits.shape == (batch, 7)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("layout", [CLS, MEAN], ids=["cls", "mean"])
def test_heads_on_tokens_with_a_class_token(name: str, layout: TokenLayout) -> None:
    torch.manual_seed(0)
    head = create_head(name, 4, layout)
    tokens = torch.randn(3, 1 + 16, 10)  # class token + a 4x4 grid of patches
    logits = head(tokens)
    assert logits.shape == (3, 4)
    assert torch.isfinite(logits).all()


def test_heads_backpropagate_into_their_input() -> None:
    for name in HEADS:
        head = create_head(name, 3, CLS)
        tokens = torch.randn(2, 10, 6, requires_grad=True)
        head(tokens).sum().backward()
        assert tokens.grad is not None, name
        assert tokens.grad.abs().sum() > 0, name


def test_linear_head_pools_as_the_layout_says() -> None:
    tokens = torch.randn(2, 5, 3)
    torch.testing.assert_close(pool_features(tokens, CLS), tokens[:, 0])
    torch.testing.assert_close(pool_features(tokens, MEAN), tokens[:, 1:].mean(dim=1))
    maps = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(pool_features(maps, CLS), maps.mean(dim=(2, 3)))

    head = create_head("linear", 2, CLS)
    out = head(tokens)
    linear = head.classifier[-1]
    torch.testing.assert_close(out, linear(tokens[:, 0]))
    # Changing a patch token leaves a cls-pooled head unmoved.
    changed = tokens.clone()
    changed[:, 3] += 10
    torch.testing.assert_close(head(changed), out)


def test_linear_head_with_hidden_layer_and_dropout() -> None:
    head = create_head("linear", 4, hidden=16, dropout=0.5).eval()
    assert head(torch.randn(3, 8, 2, 2)).shape == (3, 4)
    flat = create_head("linear", 4, hidden=16).eval()
    assert flat(torch.randn(3, 9)).shape == (3, 4)  # flat (N, F) features


def test_tokens_to_map_restores_the_patch_grid() -> None:
    grid = torch.randn(2, 5, 3, 3)  # (N, D, g, g)
    patches = grid.flatten(2).transpose(1, 2)  # how a patch embedding lays them out
    tokens = torch.cat([torch.randn(2, 1, 5), patches], dim=1)
    torch.testing.assert_close(tokens_to_map(tokens, CLS), grid)


def test_conv_head_on_a_non_square_token_grid_raises() -> None:
    head = create_head("conv", 3, CLS)
    with pytest.raises(ValueError, match=r"square grid.*12 tokens after 1 prefix"):
        head(torch.randn(2, 1 + 12, 8))


@pytest.mark.parametrize("name", ["conv", "attention"])
def test_spatial_heads_reject_flat_features(name: str) -> None:
    with pytest.raises(ValueError, match="expects a feature map or tokens"):
        create_head(name, 3)(torch.randn(2, 8))


def test_linear_head_rejects_5d_input() -> None:
    with pytest.raises(ValueError, match=r"got shape \(1, 2, 3, 4, 5\)"):
        create_head("linear", 3)(torch.randn(1, 2, 3, 4, 5))
