"""Training the exits: joint training, or heads-only with self-distillation (two-stage).

Joint training (BranchyNet / SDN) sums weighted cross-entropy over every exit. For a pretrained
backbone whose weights must not move, the two-stage scheme (LGViT) freezes the backbone and its
final classifier and trains each early head to match the final exit's softened predictions
(KL at temperature T, scaled by T^2) mixed with the label loss. ``distill`` is the same scheme
with no labels at all: the final head is the only teacher, so any images will do (the heads then
learn to mimic the final head on that image distribution), and it reports each exit's top-1
agreement with the final exit instead of accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeexit.compile.model import MultiExitModel
from edgeexit.data import LabelledData
from edgeexit.errors import ModelError


@dataclass(frozen=True)
class ExitAccuracy:
    exit: int
    boundary: str
    head: str | None
    accuracy: float | None  # None for an exit without a classifier


@dataclass(frozen=True)
class TrainReport:
    epochs: int
    samples: int
    final_loss: float
    seconds: float
    freeze_backbone: bool
    accuracy: tuple[ExitAccuracy, ...]  # on the evaluation data (validation if given, else training)
    #: What ``accuracy`` measures: "accuracy" against labels (``train``), or "agreement": the share
    #: of samples whose top-1 class equals the final exit's (``distill``, no labels).
    metric: str = "accuracy"


class ImageSource(Protocol):
    """Unlabelled images, handed out batch by batch (``edgeexit.data.unlabelled.UnlabelledImages``).

    Batches are float32 NCHW built on demand, so a set of a few thousand 224x224 images can stay
    uint8 in memory (a quarter of the float32 size)."""

    def __len__(self) -> int: ...

    def batch(self, indices: np.ndarray) -> np.ndarray: ...


Loss = Callable[[list[torch.Tensor | None], torch.Tensor | None], torch.Tensor]


def train(
    model: MultiExitModel,
    data: LabelledData,
    *,
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 2e-3,
    exit_weights: Sequence[float] | None = None,
    freeze_backbone: bool = False,
    distill_temperature: float = 3.0,
    distill_alpha: float = 0.7,
    validation: LabelledData | None = None,
    seed: int = 0,
    progress: bool = True,
) -> TrainReport:
    """Train in place and return the per-exit accuracy (on ``validation`` when given)."""
    _check_data(model, data)
    weights = list(exit_weights) if exit_weights is not None else [1.0] * model.num_exits
    if len(weights) != model.num_exits:
        raise ModelError(f"got {len(weights)} exit weights for {model.num_exits} exits; expected one per exit")
    x_all = torch.from_numpy(data.x)
    y_all = torch.from_numpy(data.y)

    def loss(logits: list[torch.Tensor | None], y: torch.Tensor | None) -> torch.Tensor:
        assert y is not None
        if freeze_backbone:
            return _distillation_loss(logits, y, weights, distill_temperature, distill_alpha)
        return _joint_loss(logits, y, weights)

    loss_value, seconds = _fit(
        model, len(data), data.sample_shape, lambda idx: (x_all[idx], y_all[idx]), loss,
        epochs=epochs, batch_size=batch_size, lr=lr, freeze_backbone=freeze_backbone, seed=seed, progress=progress,
    )  # fmt: skip
    return TrainReport(
        epochs=epochs,
        samples=len(data),
        final_loss=loss_value,
        seconds=seconds,
        freeze_backbone=freeze_backbone,
        accuracy=tuple(evaluate(model, validation or data)),
    )


def distill(
    model: MultiExitModel,
    images: ImageSource | LabelledData | np.ndarray,
    *,
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 2e-3,
    temperature: float = 3.0,
    exit_weights: Sequence[float] | None = None,
    validation: ImageSource | LabelledData | np.ndarray | None = None,
    seed: int = 0,
    progress: bool = True,
) -> TrainReport:
    """Label-free two-stage training: the backbone and its final classifier stay frozen (weights and
    batch-norm statistics untouched); each early head learns to match the final exit's softened
    predictions (KL at ``temperature``, scaled by T^2). Labels of a ``LabelledData`` are ignored.

    Returns each exit's top-1 agreement with the final exit (``metric="agreement"``) on
    ``validation`` when given, else on ``images``. Agreement is what an early exit can promise
    here: the final exit's accuracy is the ceiling, and agreement says how often an exit answers
    as the full model would.
    """
    if model.infos[-1].head != "backbone":
        raise ModelError(
            f"label-free distillation needs a trained final classifier as the teacher; model {model.name!r}'s "
            f"final exit is a new {model.infos[-1].head!r} head. Keep the backbone's own classifier "
            "(no final_head=...) or train with labels (train(..., freeze_backbone=True))"
        )
    if not any(model.head(k) is not None for k in range(model.num_exits - 1)):
        raise ModelError("distillation needs at least one early exit with a head; expected exits with heads")
    weights = list(exit_weights) if exit_weights is not None else [1.0] * model.num_exits
    if len(weights) != model.num_exits:
        raise ModelError(f"got {len(weights)} exit weights for {model.num_exits} exits; expected one per exit")
    source = _as_source(images)
    if len(source) == 0:
        raise ModelError("distillation got no images; expected at least one batch of unlabelled images")
    sample_shape = tuple(int(d) for d in source.batch(np.arange(1)).shape[1:])

    def loss(logits: list[torch.Tensor | None], _: torch.Tensor | None) -> torch.Tensor:
        teacher = logits[-1]
        assert teacher is not None
        target = F.softmax(teacher.detach() / temperature, dim=1)
        terms = [
            w * _soft_kl(z, target, temperature)
            for z, w in zip(logits[:-1], weights[:-1], strict=True)
            if z is not None
        ]
        return torch.stack(terms).sum()

    loss_value, seconds = _fit(
        model, len(source), sample_shape, lambda idx: (torch.from_numpy(source.batch(idx.numpy())), None), loss,
        epochs=epochs, batch_size=batch_size, lr=lr, freeze_backbone=True, seed=seed, progress=progress,
    )  # fmt: skip
    return TrainReport(
        epochs=epochs,
        samples=len(source),
        final_loss=loss_value,
        seconds=seconds,
        freeze_backbone=True,
        accuracy=tuple(agreement(model, validation if validation is not None else source)),
        metric="agreement",
    )


@torch.no_grad()
def agreement(
    model: MultiExitModel, images: ImageSource | LabelledData | np.ndarray, batch_size: int = 64
) -> list[ExitAccuracy]:
    """Per exit, the share of images whose top-1 class equals the final exit's (the final exit: 1.0)."""
    source = _as_source(images)
    model.eval()
    same = np.zeros(model.num_exits)
    for start in range(0, len(source), batch_size):
        idx = np.arange(start, min(start + batch_size, len(source)))
        logits = model(torch.from_numpy(source.batch(idx)))
        final = logits[-1].argmax(dim=1)  # type: ignore[union-attr]
        for k, z in enumerate(logits):
            if z is not None:
                same[k] += int((z.argmax(dim=1) == final).sum())
    return [
        ExitAccuracy(
            exit=k,
            boundary=model.infos[k].boundary,
            head=model.infos[k].head,
            accuracy=float(same[k] / max(1, len(source))) if model.head(k) is not None else None,
        )
        for k in range(model.num_exits)
    ]


class _ArraySource:
    """A float32 array (or a LabelledData's images) as an ImageSource."""

    def __init__(self, x: np.ndarray) -> None:
        if x.dtype != np.float32 or x.ndim < 2:
            raise ModelError(f"images must be a float32 array (N, ...); got {x.dtype} of shape {x.shape}")
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, indices: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.x[indices])


def _as_source(images: ImageSource | LabelledData | np.ndarray) -> ImageSource:
    if isinstance(images, LabelledData):
        return _ArraySource(images.x)
    if isinstance(images, np.ndarray):
        return _ArraySource(images)
    if hasattr(images, "batch") and hasattr(images, "__len__"):
        return images
    raise ModelError(
        f"cannot distil on a {type(images).__name__}; expected UnlabelledImages (edgeexit.data.unlabelled), "
        "LabelledData or a float32 array"
    )


def _fit(
    model: MultiExitModel,
    count: int,
    sample_shape: Sequence[int],
    fetch: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]],
    loss_fn: Loss,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    freeze_backbone: bool,
    seed: int,
    progress: bool,
) -> tuple[float, float]:
    """The optimisation loop both schemes share (AdamW, one-cycle); returns (last loss, seconds)."""
    import time

    from edgeexit.console import progress_bar

    torch.manual_seed(seed)
    model.materialize((1, *sample_shape))
    trainable = _set_trainable(model, freeze_backbone)
    if not trainable:
        raise ModelError("nothing to train: every parameter is frozen")
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=1e-4)
    steps_per_epoch = (count + batch_size - 1) // batch_size
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch))
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    loss_value = float("nan")
    try:
        with progress_bar(progress) as bar:
            task = bar.add_task("training", total=epochs * steps_per_epoch)
            for epoch in range(epochs):
                _train_mode(model, freeze_backbone)
                order = torch.randperm(count, generator=generator)
                for step in range(steps_per_epoch):
                    x, y = fetch(order[step * batch_size : (step + 1) * batch_size])
                    loss = loss_fn(model(x), y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    loss_value = float(loss.detach())
                    bar.update(task, advance=1, description=f"epoch {epoch + 1}/{epochs} loss {loss_value:.3f}")
    finally:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(True)
    return loss_value, time.perf_counter() - started


@torch.no_grad()
def evaluate(model: MultiExitModel, data: LabelledData, batch_size: int = 512) -> list[ExitAccuracy]:
    """Accuracy of every exit on its own (as if every sample went to full depth)."""
    _check_data(model, data)
    model.eval()
    correct = np.zeros(model.num_exits)
    for start in range(0, len(data), batch_size):
        x = torch.from_numpy(data.x[start : start + batch_size])
        y = data.y[start : start + batch_size]
        for k, logits in enumerate(model(x)):
            if logits is not None:
                correct[k] += int((logits.argmax(dim=1).numpy() == y).sum())
    return [
        ExitAccuracy(
            exit=k,
            boundary=model.infos[k].boundary,
            head=model.infos[k].head,
            accuracy=float(correct[k] / len(data)) if model.head(k) is not None else None,
        )
        for k in range(model.num_exits)
    ]


def _check_data(model: MultiExitModel, data: LabelledData) -> None:
    if data.num_classes > model.num_classes:
        raise ModelError(
            f"the data has {data.num_classes} classes ({data.source}) but the model has {model.num_classes} outputs"
        )


def _set_trainable(model: MultiExitModel, freeze_backbone: bool) -> list[nn.Parameter]:
    frozen = {id(p) for p in model.backbone_parameters()} if freeze_backbone else set()
    trainable = []
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)
        if id(p) not in frozen:
            trainable.append(p)
    return trainable


def _train_mode(model: MultiExitModel, freeze_backbone: bool) -> None:
    """A frozen backbone stays in eval mode so its batch-norm statistics do not drift."""
    model.train()
    if freeze_backbone:
        model.segments.eval()
        if model.infos[-1].head == "backbone":
            model.heads[str(model.num_exits - 1)].eval()


def _joint_loss(logits: list[torch.Tensor | None], y: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    terms = [w * F.cross_entropy(z, y) for z, w in zip(logits, weights, strict=True) if z is not None]
    return torch.stack(terms).sum() / sum(w for z, w in zip(logits, weights, strict=True) if z is not None)


def _distillation_loss(
    logits: list[torch.Tensor | None], y: torch.Tensor, weights: Sequence[float], temperature: float, alpha: float
) -> torch.Tensor:
    teacher = logits[-1]
    assert teacher is not None
    soft_target = F.softmax(teacher.detach() / temperature, dim=1)
    terms = []
    for z, w in zip(logits[:-1], weights[:-1], strict=True):
        if z is None:
            continue
        terms.append(w * (alpha * _soft_kl(z, soft_target, temperature) + (1 - alpha) * F.cross_entropy(z, y)))
    if not terms:
        raise ModelError("two-stage training needs at least one early exit with a head")
    loss = torch.stack(terms).sum()
    if teacher.requires_grad:  # a replaced final head (final_head=...) is trained on labels
        loss = loss + weights[-1] * F.cross_entropy(teacher, y)
    return loss


def _soft_kl(logits: torch.Tensor, soft_target: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) at temperature T, scaled by T^2 so gradients keep their size (Hinton)."""
    log_student = F.log_softmax(logits / temperature, dim=1)
    return F.kl_div(log_student, soft_target, reduction="batchmean") * temperature**2
