"""Joint and two-stage training on real data: exits learn, a frozen backbone does not move."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgeexit.compile import attach_exits, training
from edgeexit.compile.model import MultiExitModel
from edgeexit.compile.training import TrainReport, distill, evaluate, train
from edgeexit.data import LabelledData
from edgeexit.errors import ModelError


def build(num_classes: int = 10, final_head: str | None = None) -> MultiExitModel:
    """Small enough to train in a second; batch norm in the backbone, so its statistics can drift.

    With ``final_head`` the backbone ends in features and the head replaces its classifier."""
    torch.manual_seed(0)
    classifier = [] if final_head else [nn.Flatten(), nn.Linear(32 * 4 * 4, num_classes)]
    backbone = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        *classifier,
    )
    return attach_exits(
        backbone, exits=[3, 5], head="conv", head_options={"width": 16}, final_head=final_head,
        num_classes=num_classes, input_shape=(1, 1, 8, 8),
    )  # fmt: skip


def subset(data: LabelledData, n: int) -> LabelledData:
    return LabelledData(data.x[:n], data.y[:n], data.labels, data.source)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def untrained_accuracy(digits: LabelledData) -> list[float]:
    return [a.accuracy for a in evaluate(build(), digits)]


@pytest.fixture(scope="module")
def jointly_trained(digits: LabelledData) -> tuple[MultiExitModel, TrainReport]:
    model = build()
    report = train(model, digits, epochs=2, batch_size=64, lr=1e-2, progress=False)
    return model, report


def test_joint_training_lifts_every_exit_above_chance(
    jointly_trained: tuple[MultiExitModel, TrainReport], untrained_accuracy: list[float], digits: LabelledData
) -> None:
    model, report = jointly_trained
    chance = 1 / digits.num_classes
    accuracy = [a.accuracy for a in report.accuracy]
    assert len(accuracy) == model.num_exits == 3
    for k, (before, after) in enumerate(zip(untrained_accuracy, accuracy, strict=True)):
        assert after > max(0.5, 3 * chance), f"exit {k}: {after:.3f}"
        assert after > before + 0.2, f"exit {k}: {before:.3f} -> {after:.3f}"
    assert accuracy[-1] > 0.9
    assert [a.boundary for a in report.accuracy] == [i.boundary for i in model.infos]
    assert [a.head for a in report.accuracy] == ["conv", "conv", "backbone"]


def test_train_report_and_model_state(
    jointly_trained: tuple[MultiExitModel, TrainReport], digits: LabelledData
) -> None:
    model, report = jointly_trained
    assert report.epochs == 2
    assert report.samples == len(digits)
    assert report.freeze_backbone is False
    assert np.isfinite(report.final_loss)
    assert report.final_loss > 0
    assert report.seconds > 0
    assert not model.training
    assert all(p.requires_grad for p in model.parameters())
    # evaluate() measures the same thing the report recorded (no data given for validation).
    assert [a.accuracy for a in evaluate(model, digits)] == pytest.approx([a.accuracy for a in report.accuracy])


def test_validation_data_is_what_the_report_measures(digits: LabelledData) -> None:
    model = build()
    validation = LabelledData(digits.x[-100:], digits.y[-100:], digits.labels, "held out")
    report = train(model, subset(digits, 128), epochs=1, batch_size=64, validation=validation, progress=False)
    assert [a.accuracy for a in report.accuracy] == [a.accuracy for a in evaluate(model, validation)]
    for a in report.accuracy:
        assert a.accuracy is not None
        assert (a.accuracy * 100) == pytest.approx(round(a.accuracy * 100))  # a count out of 100


def test_two_stage_freezes_backbone_and_its_statistics(
    jointly_trained: tuple[MultiExitModel, TrainReport], digits: LabelledData
) -> None:
    model = copy.deepcopy(jointly_trained[0])
    backbone_before = snapshot(model.segments)
    final_before = snapshot(model.head(2))
    heads_before = [snapshot(model.head(k)) for k in (0, 1)]
    # Backbone batch-norm layers have seen data: their statistics are not the defaults.
    assert not torch.equal(backbone_before["0.1.running_mean"], torch.zeros(16))

    report = train(model, subset(digits, 512), epochs=1, batch_size=128, lr=1e-2, freeze_backbone=True, progress=False)
    assert report.freeze_backbone is True

    backbone_after = snapshot(model.segments)
    assert backbone_after.keys() == backbone_before.keys()
    moved = [k for k in backbone_before if not torch.equal(backbone_before[k], backbone_after[k])]
    assert moved == []  # weights, biases, running_mean/var and num_batches_tracked all bit-identical
    assert all(torch.equal(final_before[k], v) for k, v in snapshot(model.head(2)).items())
    for k, before in enumerate(heads_before):
        after = snapshot(model.head(k))
        changed = [name for name in before if not torch.equal(before[name], after[name])]
        assert "classifier.weight" in changed, f"head {k} did not train"
        assert "features.0.weight" in changed, f"head {k} did not train"
    assert all(p.requires_grad for p in model.parameters())


def test_two_stage_trains_a_replaced_final_head(digits: LabelledData) -> None:
    model = build(final_head="conv")
    backbone_before = snapshot(model.segments)
    final_before = snapshot(model.head(2))
    train(model, subset(digits, 256), epochs=1, batch_size=128, freeze_backbone=True, progress=False)
    assert all(torch.equal(backbone_before[k], v) for k, v in snapshot(model.segments).items())
    assert any(not torch.equal(final_before[k], v) for k, v in snapshot(model.head(2)).items())


def test_exits_without_a_classifier_are_skipped(digits: LabelledData) -> None:
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    )  # fmt: skip
    model = attach_exits(backbone, exits=[1, 3], head=[None, "linear"], num_classes=10, input_shape=(1, 1, 8, 8))
    report = train(model, subset(digits, 128), epochs=1, batch_size=64, progress=False)
    assert np.isfinite(report.final_loss)
    assert report.accuracy[0].accuracy is None
    assert report.accuracy[0].head is None
    assert report.accuracy[1].accuracy is not None
    silent = attach_exits(
        nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10)), exits=[1], head=[None],
        num_classes=10, input_shape=(1, 1, 8, 8),
    )  # fmt: skip
    with pytest.raises(ModelError, match="nothing to train: every parameter is frozen"):
        train(silent, subset(digits, 64), epochs=1, freeze_backbone=True, progress=False)


def test_exit_weights_of_the_wrong_length(digits: LabelledData) -> None:
    with pytest.raises(ModelError, match="2 exit weights for 3 exits"):
        train(build(), subset(digits, 64), exit_weights=[1.0, 1.0], progress=False)


def test_exit_weights_of_the_right_length_train(digits: LabelledData) -> None:
    report = train(build(), subset(digits, 64), epochs=1, exit_weights=[0.3, 0.3, 1.0], progress=False)
    assert np.isfinite(report.final_loss)


def test_more_classes_in_the_data_than_the_model_has(digits: LabelledData) -> None:
    model = build(num_classes=5)
    with pytest.raises(ModelError, match=r"10 classes.*5 outputs"):
        train(model, subset(digits, 64), progress=False)
    with pytest.raises(ModelError, match=r"10 classes.*5 outputs"):
        evaluate(model, subset(digits, 64))


def test_data_of_another_shape_names_the_shape() -> None:
    rng = np.random.default_rng(0)
    data = LabelledData(rng.random((8, 3, 8, 8), dtype=np.float32), np.zeros(8, np.int64), ("a", "b"), "rgb")
    with pytest.raises(ModelError, match=r"\(1, 3, 8, 8\)"):
        train(build(), data, progress=False)


def distilled(
    model: MultiExitModel, images: np.ndarray, *, cache_features: bool, epochs: int, batch_size: int
) -> tuple[MultiExitModel, TrainReport]:
    model = copy.deepcopy(model)
    report = distill(
        model, images, epochs=epochs, batch_size=batch_size, lr=1e-2, cache_features=cache_features, progress=False
    )
    return model, report


def test_cached_features_take_the_same_steps_as_rerunning_the_backbone(
    jointly_trained: tuple[MultiExitModel, TrainReport], digits: LabelledData
) -> None:
    teacher = jointly_trained[0]
    images = digits.x[:96]
    backbone_before = snapshot(teacher.segments) | {f"final.{k}": v for k, v in snapshot(teacher.head(2)).items()}

    # One step over every image: the same loss and the same update, whichever way the heads were fed.
    one = {flag: distilled(teacher, images, cache_features=flag, epochs=1, batch_size=96) for flag in (True, False)}
    assert one[True][1].final_loss == pytest.approx(one[False][1].final_loss, rel=1e-6)
    for k in (0, 1):
        cached, rerun = snapshot(one[True][0].head(k)), snapshot(one[False][0].head(k))
        for name, value in rerun.items():
            torch.testing.assert_close(cached[name], value, rtol=1e-5, atol=1e-7, msg=f"head {k} {name}")
        assert not torch.equal(cached["classifier.weight"], snapshot(teacher.head(k))["classifier.weight"])

    # Several epochs of shuffled batches: still the same training, and the same agreement.
    many = {flag: distilled(teacher, images, cache_features=flag, epochs=3, batch_size=32) for flag in (True, False)}
    (cached_model, cached), (rerun_model, rerun) = many[True], many[False]
    assert cached.final_loss == pytest.approx(rerun.final_loss, rel=1e-4)
    assert [a.accuracy for a in cached.accuracy] == pytest.approx([a.accuracy for a in rerun.accuracy], abs=2 / 96)
    for k in (0, 1):
        for name, value in snapshot(rerun_model.head(k)).items():
            torch.testing.assert_close(snapshot(cached_model.head(k))[name], value, rtol=1e-4, atol=1e-5)
    assert cached.feature_seconds > 0
    assert cached.seconds > cached.feature_seconds
    assert rerun.feature_seconds == 0.0

    # Neither way moves the backbone or the final classifier, bit for bit (batch-norm statistics too).
    for trained, _ in (*one.values(), *many.values()):
        after = snapshot(trained.segments) | {f"final.{k}": v for k, v in snapshot(trained.head(2)).items()}
        assert [k for k in backbone_before if not torch.equal(backbone_before[k], after[k])] == []
        assert not trained.training
        assert all(p.requires_grad for p in trained.parameters())


def test_a_cache_beyond_the_float32_budget_is_kept_in_float16(
    jointly_trained: tuple[MultiExitModel, TrainReport], digits: LabelledData, monkeypatch: pytest.MonkeyPatch
) -> None:
    teacher = jointly_trained[0]
    images = digits.x[:64]
    source = training._as_source(images)
    kept = training._FrozenPass.run(copy.deepcopy(teacher), source, batch_size=64, progress=False)
    exact, exact_report = distilled(teacher, images, cache_features=True, epochs=1, batch_size=64)
    monkeypatch.setattr(training, "CACHE_FLOAT32_BYTES", 0)
    rounded = training._FrozenPass.run(copy.deepcopy(teacher), source, batch_size=64, progress=False)
    # The cache itself, not the trained weights: whether rounding the heads' inputs changes a weight
    # bit depends on the CPU's kernels (on an AVX2-only EPYC one training step came out identical).
    cached = [(a, b) for a, b in zip(kept.hidden, rounded.hidden, strict=True) if a is not None]
    assert cached
    for full, half in cached:
        assert (full.dtype, half.dtype) == (torch.float32, torch.float16)
        assert torch.equal(half, full.half())  # exactly the float32 features, rounded once
    assert rounded.teacher.dtype == torch.float32  # the teacher's logits are never rounded
    halved, halved_report = distilled(teacher, images, cache_features=True, epochs=1, batch_size=64)
    # float16 keeps ~3 significant digits of the heads' inputs: training lands close to float32's.
    assert halved_report.final_loss == pytest.approx(exact_report.final_loss, rel=1e-2)
    weight = "classifier.weight"
    torch.testing.assert_close(
        halved.head(0).state_dict()[weight], exact.head(0).state_dict()[weight], atol=1e-3, rtol=0
    )

    monkeypatch.setattr(training, "CACHE_MAX_BYTES", 1024)
    with pytest.raises(ModelError, match=r"64 images would take .* cache_features=False"):
        distilled(teacher, images, cache_features=True, epochs=1, batch_size=64)
    _, rerun = distilled(teacher, images, cache_features=False, epochs=1, batch_size=64)  # no cache, no budget
    assert np.isfinite(rerun.final_loss)
