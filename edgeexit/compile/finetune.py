"""Fine-tune a pretrained CNN with exits on labelled images: one settings record in, a trained
``MultiExitModel`` and a frozen report out (workstation side).

Schemes (``edgeexit.compile.training``):

- ``joint``: backbone, final head and every exit head trained together on the summed label loss
  (BranchyNet / SDN). One pass over the data trains everything.
- ``two_stage``: first the backbone and its final head on the final exit's loss alone, then the
  backbone frozen and the exit heads trained by self-distillation from the final exit
  (``distill``: the frozen backbone runs once over the images, the heads then train on the cached
  boundaries, so each extra head epoch costs a small fraction of a backbone epoch).
- ``both``: ``joint`` then the ``two_stage`` head distillation on top of the jointly trained
  backbone.

Time is reported as wall and process CPU seconds, since the cores are usually shared: CPU time
says what the training costs, wall time what it took on that machine that day.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from edgeexit.compile.model import MultiExitModel
from edgeexit.compile.training import ExitAccuracy, TrainReport, distill, evaluate, train
from edgeexit.compile.zoo_workloads import FASHION_EXITS, efficientnet_lite0_fashion
from edgeexit.console import console
from edgeexit.data import LabelledData, builtin_images
from edgeexit.errors import ModelError

SCHEMES = ("joint", "two_stage", "both")


@dataclass(frozen=True)
class FineTuneSettings:
    """Everything that decides a fine-tuning run. The defaults are the measured choice
    (docs/benchmarks.md, EfficientNet-Lite0 on Fashion-MNIST: 7.2x faster with early exit at
    -0.66 points on the 10k test images after one joint epoch at 32 px)."""

    #: 32: one epoch of 54k images is ~9 CPU-minutes; 64 measured +3.8 points at the final exit
    #: for 2.4x the CPU (subset), and no better early exits
    resolution: int = 32
    scheme: str = "joint"
    epochs: int = 1
    #: head epochs of the distillation stage (two_stage, both): on cached features, cheap
    distill_epochs: int = 20
    exits: tuple[int | str, ...] = FASHION_EXITS
    head: str = "conv"
    width: int = 64
    pretrained: bool = True
    lr: float = 2e-3
    batch_size: int = 64
    #: batch-norm momentum while fine-tuning (PyTorch's convention); None keeps the backbone's own
    #: (EfficientNet-Lite0: 0.01, so the running statistics take ~500 steps to leave ImageNet's:
    #: a short run evaluates with the wrong statistics unless this is raised, e.g. to 0.1)
    bn_momentum: float | None = None
    #: share of the training images held out for validation (calibration uses the same split)
    validation_fraction: float = 0.1
    seed: int = 0
    #: use only the first ``limit`` training images (a quick run); None: all
    limit: int | None = None
    #: train on only the first ``train_limit`` images of the training split, after the validation
    #: split is taken: unlike ``limit`` the validation split stays the one ``init_checkpoint`` was
    #: trained beside, so a model continued from it is never calibrated on images it trained on
    train_limit: int | None = None
    #: start from these weights (a checkpoint of this model at any resolution: the weights do not
    #: depend on it, the resize is in the graph) instead of ImageNet's or random ones, e.g. to train
    #: at 96 px a model trained at 32 px first (progressive resizing: most of the learning happens at
    #: the cheap resolution)
    init_checkpoint: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.scheme not in SCHEMES:
            problems.append(f"scheme {self.scheme!r} is unknown; expected one of {SCHEMES}")
        if not 16 <= self.resolution <= 512:
            problems.append(f"resolution {self.resolution} is out of range; expected 16..512 pixels")
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1; got {self.epochs}")
        if self.scheme != "joint" and self.distill_epochs < 1:
            problems.append(f"scheme {self.scheme!r} needs distill_epochs >= 1; got {self.distill_epochs}")
        if not self.exits:
            problems.append("exits is empty; expected at least one early exit, e.g. ('stage1', 'stage2')")
        if self.width < 1 or self.batch_size < 1:
            problems.append(f"width and batch_size must be >= 1; got {self.width} and {self.batch_size}")
        if self.bn_momentum is not None and not 0 < self.bn_momentum <= 1:
            problems.append(f"bn_momentum must be in (0, 1] or None; got {self.bn_momentum}")
        if not self.lr > 0:
            problems.append(f"lr must be > 0; got {self.lr}")
        if not 0 < self.validation_fraction < 1:
            problems.append(f"validation_fraction must be in (0, 1); got {self.validation_fraction}")
        if self.limit is not None and self.limit < 20:
            problems.append(f"limit {self.limit} is too small; expected None (all images) or >= 20")
        if self.train_limit is not None and self.train_limit < 1:
            problems.append(f"train_limit must be None (the whole training split) or >= 1; got {self.train_limit}")
        if problems:
            raise ModelError("invalid fine-tuning settings: " + "; ".join(problems))


@dataclass(frozen=True)
class StageReport:
    name: str  # "joint", "backbone" (two-stage stage 1) or "distill"
    train: TrainReport
    wall_seconds: float
    cpu_seconds: float


@dataclass(frozen=True)
class FineTuneReport:
    settings: FineTuneSettings
    data_source: str
    train_samples: int
    validation_samples: int
    stages: tuple[StageReport, ...]
    #: each exit's accuracy on the validation split, evaluated on its own (every sample to that exit)
    validation_accuracy: tuple[ExitAccuracy, ...]

    @property
    def wall_seconds(self) -> float:
        return sum(s.wall_seconds for s in self.stages)

    @property
    def cpu_seconds(self) -> float:
        return sum(s.cpu_seconds for s in self.stages)


def build_model(settings: FineTuneSettings, data: LabelledData) -> MultiExitModel:
    model = efficientnet_lite0_fashion(
        resolution=settings.resolution,
        exits=settings.exits,
        head=settings.head,
        width=settings.width,
        num_classes=data.num_classes,
        in_channels=data.sample_shape[0],
        size=data.sample_shape[-1],
        pretrained=settings.pretrained,
    )
    if settings.init_checkpoint is not None:
        from edgeexit.compile.checkpoint import load_checkpoint

        load_checkpoint(model, settings.init_checkpoint)
    if settings.bn_momentum is not None:
        for module in model.segments.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = settings.bn_momentum
    return model


def _init_name(settings: FineTuneSettings) -> str:
    if settings.init_checkpoint is not None:
        return f"weights from {settings.init_checkpoint}"
    return "ImageNet weights" if settings.pretrained else "random init"


def split_data(settings: FineTuneSettings, data: LabelledData) -> tuple[LabelledData, LabelledData]:
    """(validation, training): the same seeded split the calibration must use (``train_limit``
    shortens the training part only)."""
    if settings.limit is not None:
        data = data.head(settings.limit)
    validation, train_data = data.split(settings.validation_fraction, seed=settings.seed)
    if settings.train_limit is not None and settings.train_limit < len(train_data):
        train_data = train_data.head(settings.train_limit)
    return validation, train_data


def fine_tune(
    settings: FineTuneSettings, data: LabelledData | None = None, *, progress: bool = True
) -> tuple[MultiExitModel, FineTuneReport]:
    """Build EfficientNet-Lite0 with exits for ``data`` (default: ``builtin_images("train")``) and
    train it by ``settings.scheme``; accuracy is measured on the held-out validation split."""
    data = data if data is not None else builtin_images("train")
    validation, train_data = split_data(settings, data)
    model = build_model(settings, data)
    say = console.print if progress else (lambda *a, **k: None)
    say(
        f"[bold]fine-tune[/] efficientnet_lite0 ({_init_name(settings)}) at "
        f"{settings.resolution}px, scheme {settings.scheme}: {len(train_data)} training / {len(validation)} "
        f"validation images ({data.source})",
        highlight=False,
    )
    stages: list[StageReport] = []
    if settings.scheme in ("joint", "both"):
        stages.append(_stage("joint", lambda: _train(model, train_data, validation, settings, None, progress), say))
    if settings.scheme == "two_stage":
        final_only = [0.0] * (model.num_exits - 1) + [1.0]
        stages.append(
            _stage("backbone", lambda: _train(model, train_data, validation, settings, final_only, progress), say)
        )
    if settings.scheme in ("two_stage", "both"):
        stages.append(
            _stage(
                "distill",
                lambda: distill(
                    model,
                    train_data,
                    epochs=settings.distill_epochs,
                    batch_size=256,
                    lr=settings.lr,
                    validation=validation,
                    seed=settings.seed,
                    progress=progress,
                ),
                say,
            )
        )
    accuracy = tuple(evaluate(model, validation))
    say("validation accuracy per exit: " + ", ".join(f"{a.boundary} {100 * (a.accuracy or 0):.2f}%" for a in accuracy))
    report = FineTuneReport(
        settings=settings,
        data_source=data.source,
        train_samples=len(train_data),
        validation_samples=len(validation),
        stages=tuple(stages),
        validation_accuracy=accuracy,
    )
    return model, report


def _train(
    model: MultiExitModel,
    data: LabelledData,
    validation: LabelledData,
    settings: FineTuneSettings,
    weights: list[float] | None,
    progress: bool,
) -> TrainReport:
    return train(
        model, data, epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
        exit_weights=weights, validation=validation, seed=settings.seed, progress=progress,
    )  # fmt: skip


def _stage(name: str, run: Callable[[], TrainReport], say: Callable[..., None]) -> StageReport:
    wall, cpu = time.perf_counter(), time.process_time()
    report = run()
    stage = StageReport(
        name=name, train=report, wall_seconds=time.perf_counter() - wall, cpu_seconds=time.process_time() - cpu
    )
    say(
        f"  stage {name}: {stage.wall_seconds:.0f} s wall, {stage.cpu_seconds:.0f} s CPU; "
        + ", ".join(f"exit {a.exit} {100 * (a.accuracy or 0):.2f}%" for a in report.accuracy)
        + (" (agreement with the final exit)" if report.metric == "agreement" else ""),
        highlight=False,
    )
    return stage


def replace(settings: FineTuneSettings, **changes: object) -> FineTuneSettings:
    """``dataclasses.replace`` with the same validation (a quick run from the defaults)."""
    return dataclasses.replace(settings, **changes)  # type: ignore[arg-type]


__all__ = ["SCHEMES", "FineTuneReport", "FineTuneSettings", "StageReport", "build_model", "fine_tune", "split_data"]
