"""EfficientNet-Lite0 fine-tuned on 28x28 gray images: the input adaptation lives in segment 0, a
few optimizer steps export with parity, and bad settings fail with one message naming each problem.

Kept small (a 32-pixel model with one early exit, a few dozen images, 3 optimizer steps) so the file
runs in seconds; the real run is tools/workload_image.py. The EfficientNet weights are installed in
CI (requirements-models.txt).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgeexit.compile import create_model
from edgeexit.compile.export import export
from edgeexit.compile.finetune import FineTuneSettings, fine_tune, split_data
from edgeexit.compile.zoo import IMAGENET_MEAN, IMAGENET_STD
from edgeexit.compile.zoo_workloads import InputAdapter, efficientnet_lite0_fashion
from edgeexit.data import LabelledData
from edgeexit.errors import ModelError
from edgeexit.runtime import Engine


def _gray(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 28, 28), dtype=np.float32)


def test_segment_zero_resizes_repeats_and_normalizes_in_graph() -> None:
    """The package takes 1x28x28 gray: segment 0 must equal the torch preprocessing done by hand."""
    model = efficientnet_lite0_fashion(resolution=48, exits=("stage1",))
    x = torch.from_numpy(_gray(2))
    adapter, _, stem = model.segments[0]
    assert isinstance(adapter, InputAdapter)
    rgb = F.interpolate(x, size=(48, 48), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    normalized = (rgb - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model.segments[0](x), stem(normalized), rtol=0, atol=0)
        outputs = model(x)
    assert [tuple(o.shape) for o in outputs] == [(2, 10), (2, 10)]
    assert [i.head for i in model.infos] == ["conv", "backbone"]
    assert model.head(1).fc.out_features == 10  # the ImageNet fc is replaced
    # registered like every zoo model, so the CLI and the demo can build it by name
    assert create_model("efficientnet_lite0_fashion", resolution=32, exits=("stage1",)).num_exits == 2


def test_a_few_steps_export_with_parity(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = LabelledData(_gray(40), rng.integers(0, 10, 40), tuple(str(i) for i in range(10)), source="random")
    settings = FineTuneSettings(resolution=32, exits=("stage1",), epochs=1, batch_size=16, limit=40, lr=1e-3)
    before = {
        k: v.clone() for k, v in efficientnet_lite0_fashion(resolution=32, exits=("stage1",)).state_dict().items()
    }
    model, report = fine_tune(settings, data, progress=False)
    assert (report.train_samples, report.validation_samples) == (36, 4)
    assert [s.name for s in report.stages] == ["joint"]
    assert report.wall_seconds > 0
    assert report.cpu_seconds > 0
    moved = [k for k, v in model.state_dict().items() if k in before and v.dtype.is_floating_point]
    assert any(not torch.equal(model.state_dict()[k], before[k]) for k in moved if "segments" in k)

    validation, train_data = split_data(settings, data)
    assert len(validation) == 4
    assert len(train_data) == 36
    x = _gray(4, seed=1)
    package = export(model, (1, 1, 28, 28), tmp_path / "pkg", sample=x, codecs=())
    assert package.manifest.input.shape[1:] == (1, 28, 28)
    with torch.no_grad():
        expected = [o.numpy() for o in model(torch.from_numpy(x))]
    full = Engine(package, threshold=math.inf, cache_dir=None).run_full(x, timing_samples=1)
    for ours, theirs in zip(full.logits, expected, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize(
    ("changes", "needles"),
    [
        ({"scheme": "bogus"}, ["scheme 'bogus'", "joint"]),
        ({"resolution": 8, "epochs": 0}, ["resolution 8", "epochs must be >= 1"]),
        ({"scheme": "two_stage", "distill_epochs": 0}, ["distill_epochs >= 1"]),
        ({"exits": ()}, ["exits is empty"]),
        ({"validation_fraction": 1.0, "limit": 5}, ["validation_fraction", "limit 5"]),
        ({"lr": 0.0, "bn_momentum": 0.0}, ["lr must be > 0", "bn_momentum"]),
    ],
)
def test_settings_name_every_problem(changes: dict, needles: list[str]) -> None:
    with pytest.raises(ModelError, match="invalid fine-tuning settings") as err:
        FineTuneSettings(**changes)
    for needle in needles:
        assert needle in str(err.value)


def test_model_rejects_unsupported_inputs() -> None:
    with pytest.raises(ModelError, match="resolution 8 is out of range"):
        efficientnet_lite0_fashion(resolution=8)
    with pytest.raises(ModelError, match="in_channels 2"):
        efficientnet_lite0_fashion(in_channels=2)


def test_continues_from_a_checkpoint_at_another_resolution_on_part_of_the_same_split(tmp_path: Path) -> None:
    """Progressive resizing: a 32 px model's weights start a 48 px run (the resize is in the graph,
    so every weight fits), and ``train_limit`` shortens the training part only, so the validation
    split stays the one the first run held out (calibrating on images it trained on would flatter it)."""
    from edgeexit.compile.checkpoint import save_checkpoint
    from edgeexit.compile.finetune import build_model

    rng = np.random.default_rng(0)
    data = LabelledData(_gray(40), rng.integers(0, 10, 40), tuple(str(i) for i in range(10)), source="random")
    first = FineTuneSettings(resolution=32, exits=("stage1",), batch_size=16, limit=40)
    trained = build_model(first, data)
    with torch.no_grad():
        trained.head(1).fc.weight.add_(1.0)  # unlike any fresh model's
    save_checkpoint(trained, tmp_path / "model.pt")

    later = FineTuneSettings(
        resolution=48, exits=("stage1",), batch_size=16, limit=40, train_limit=8,
        init_checkpoint=str(tmp_path / "model.pt"), lr=1e-3,
    )  # fmt: skip
    continued = build_model(later, data)
    assert continued.segments[0][0].size == 48
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(continued.state_dict()[key], value, rtol=0, atol=0)

    (val_first, train_first), (val_later, train_later) = split_data(first, data), split_data(later, data)
    np.testing.assert_array_equal(val_later.x, val_first.x)
    np.testing.assert_array_equal(train_later.x, train_first.x[:8])
    _, report = fine_tune(later, data, progress=False)
    assert (report.train_samples, report.validation_samples) == (8, 4)

    with pytest.raises(ModelError, match="train_limit"):
        FineTuneSettings(train_limit=0)
