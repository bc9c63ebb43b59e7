"""Training the exits: joint training, or heads-only with self-distillation (two-stage).

Joint training (BranchyNet / SDN) sums weighted cross-entropy over every exit. For a pretrained
backbone whose weights must not move, the two-stage scheme (LGViT) freezes the backbone and its
final classifier and trains each early head to match the final exit's softened predictions
(KL at temperature T, scaled by T^2) mixed with the label loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
    import time

    from edgeexit.console import progress_bar

    _check_data(model, data)
    weights = list(exit_weights) if exit_weights is not None else [1.0] * model.num_exits
    if len(weights) != model.num_exits:
        raise ModelError(f"got {len(weights)} exit weights for {model.num_exits} exits; expected one per exit")
    torch.manual_seed(seed)
    model.materialize((1, *data.sample_shape))
    trainable = _set_trainable(model, freeze_backbone)
    if not trainable:
        raise ModelError("nothing to train: every parameter is frozen")
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=1e-4)
    steps_per_epoch = (len(data) + batch_size - 1) // batch_size
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch))
    x_all = torch.from_numpy(data.x)
    y_all = torch.from_numpy(data.y)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    loss_value = float("nan")
    with progress_bar(progress) as bar:
        task = bar.add_task("training", total=epochs * steps_per_epoch)
        for epoch in range(epochs):
            _train_mode(model, freeze_backbone)
            order = torch.randperm(len(data), generator=generator)
            for step in range(steps_per_epoch):
                idx = order[step * batch_size : (step + 1) * batch_size]
                logits = model(x_all[idx])
                if freeze_backbone:
                    loss = _distillation_loss(logits, y_all[idx], weights, distill_temperature, distill_alpha)
                else:
                    loss = _joint_loss(logits, y_all[idx], weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss_value = float(loss.detach())
                bar.update(task, advance=1, description=f"epoch {epoch + 1}/{epochs} loss {loss_value:.3f}")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return TrainReport(
        epochs=epochs,
        samples=len(data),
        final_loss=loss_value,
        seconds=time.perf_counter() - started,
        freeze_backbone=freeze_backbone,
        accuracy=tuple(evaluate(model, validation or data)),
    )


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
        kl = F.kl_div(F.log_softmax(z / temperature, dim=1), soft_target, reduction="batchmean") * temperature**2
        terms.append(w * (alpha * kl + (1 - alpha) * F.cross_entropy(z, y)))
    if not terms:
        raise ModelError("two-stage training needs at least one early exit with a head")
    loss = torch.stack(terms).sum()
    if teacher.requires_grad:  # a replaced final head (final_head=...) is trained on labels
        loss = loss + weights[-1] * F.cross_entropy(teacher, y)
    return loss
