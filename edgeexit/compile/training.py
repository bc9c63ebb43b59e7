"""Training the exits: joint training, or heads-only with self-distillation (two-stage).

Joint training (BranchyNet / SDN) sums weighted cross-entropy over every exit. For a pretrained
backbone whose weights must not move, the two-stage scheme (LGViT) freezes the backbone and its
final classifier and trains each early head to match the final exit's softened predictions
(KL at temperature T, scaled by T^2) mixed with the label loss. ``distill`` is the same scheme
with no labels at all: the final head is the only teacher, so any images will do (the heads then
learn to mimic the final head on that image distribution), and it reports each exit's top-1
agreement with the final exit instead of accuracy.

With the backbone frozen (eval mode, no drop connect or dropout) its output for an image never
changes, yet an uncached epoch re-runs it on every image, which is nearly all of the cost
(EfficientNet-Lite0: ~250 s per epoch over 1,700 images on one core). So ``distill`` by default
runs it once, keeps each head's input and the teacher's logits, and trains the heads on those for
as many epochs as wanted (``edgeexit.compile.text_training`` does the same for text encoders).
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
    #: Of ``seconds``, the one pass of the frozen backbone that cached the heads' inputs
    #: (``distill(cache_features=True)``); 0 when every epoch ran the backbone.
    feature_seconds: float = 0.0


class ImageSource(Protocol):
    """Unlabelled images, handed out batch by batch (``edgeexit.data.unlabelled.UnlabelledImages``).

    Batches are float32 NCHW built on demand, so a set of a few thousand 224x224 images can stay
    uint8 in memory (a quarter of the float32 size). ``batch`` must give the same pixels for the
    same indices every time: ``distill`` caches what the frozen backbone makes of them. A source
    that augments on every call needs ``distill(..., cache_features=False)``."""

    def __len__(self) -> int: ...

    def batch(self, indices: np.ndarray) -> np.ndarray: ...


Loss = Callable[[list[torch.Tensor | None], torch.Tensor | None], torch.Tensor]
#: One step's forward pass: sample positions -> (every exit's logits, labels or None).
Forward = Callable[[torch.Tensor], tuple[list[torch.Tensor | None], torch.Tensor | None]]

#: Cached heads' inputs up to this size stay float32 (bit-identical training); above it float16.
CACHE_FLOAT32_BYTES = 2 * 1024**3
#: Beyond this (in float16) the cache is refused: fewer images, or cache_features=False.
CACHE_MAX_BYTES = 8 * 1024**3


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
    further = [torch.from_numpy(data.extra[name]) for name in _further_inputs(model)]

    def loss(logits: list[torch.Tensor | None], y: torch.Tensor | None) -> torch.Tensor:
        assert y is not None
        if freeze_backbone:
            return _distillation_loss(logits, y, weights, distill_temperature, distill_alpha)
        return _joint_loss(logits, y, weights)

    def batch(idx: torch.Tensor) -> tuple[list[torch.Tensor | None], torch.Tensor]:
        return model(x_all[idx], *(t[idx] for t in further)), y_all[idx]  # type: ignore[return-value]

    loss_value, seconds = _fit(
        model, len(data), data.sample_shape, batch, loss,
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
    cache_features: bool = True,
) -> TrainReport:
    """Label-free two-stage training: the backbone and its final classifier stay frozen (weights and
    batch-norm statistics untouched); each early head learns to match the final exit's softened
    predictions (KL at ``temperature``, scaled by T^2). Labels of a ``LabelledData`` are ignored.

    Returns each exit's top-1 agreement with the final exit (``metric="agreement"``) on
    ``validation`` when given, else on ``images``. Agreement is what an early exit can promise
    here: the final exit's accuracy is the ceiling, and agreement says how often an exit answers
    as the full model would.

    With ``cache_features`` (the default) the frozen backbone runs once over ``images`` and every
    epoch trains the heads on the kept head inputs and teacher logits: the same losses and updates
    as re-running it (float32 up to ``CACHE_FLOAT32_BYTES`` of cache, float16 above), at a fraction
    of the cost per epoch. It needs ``images.batch`` to be deterministic; pass ``False`` for a
    source that augments on every call.
    """
    if model.infos[-1].head != "backbone":
        raise ModelError(
            f"label-free distillation needs a trained final classifier as the teacher; model {model.name!r}'s "
            f"final exit is a new {model.infos[-1].head!r} head. Keep the backbone's own classifier "
            "(no final_head=...) or train with labels (train(..., freeze_backbone=True))"
        )
    if not any(model.head(k) is not None for k in range(model.num_exits - 1)):
        raise ModelError("distillation needs at least one early exit with a head; expected exits with heads")
    if _further_inputs(model):
        raise ModelError(
            f"label-free distillation feeds images alone, and model {model.name!r} also takes "
            f"{list(_further_inputs(model))}; train it with labels instead: train(model, LabelledData(..., extra=...), "
            "freeze_backbone=True) is the same two-stage scheme with the final exit as the teacher"
        )
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

    cache: list[_FrozenPass] = []  # filled by _fit once the heads exist (after seeding), before step 1

    def cache_pass() -> None:
        cache.append(_FrozenPass.run(model, source, batch_size=batch_size, progress=progress))

    def forward(idx: torch.Tensor) -> tuple[list[torch.Tensor | None], None]:
        if cache:
            return cache[0].logits(model, idx), None
        return model(torch.from_numpy(source.batch(idx.numpy()))), None

    loss_value, seconds = _fit(
        model, len(source), sample_shape, forward, loss, epochs=epochs, batch_size=batch_size, lr=lr,
        freeze_backbone=True, seed=seed, progress=progress, prepare=cache_pass if cache_features else None,
    )  # fmt: skip
    feature_seconds = cache[0].seconds if cache else 0.0
    return TrainReport(
        epochs=epochs,
        samples=len(source),
        final_loss=loss_value,
        seconds=seconds + feature_seconds,
        freeze_backbone=True,
        accuracy=tuple(agreement(model, validation if validation is not None else source)),
        metric="agreement",
        feature_seconds=feature_seconds,
    )


@dataclass(frozen=True, eq=False)
class _FrozenPass:
    """One eval-mode pass of the frozen backbone: each early head's input and the teacher's logits.

    ``hidden[k]`` is boundary k for every image, ``(N, *shape)``, kept only where exit k has a head
    (``None`` elsewhere and for the final exit, whose logits are ``teacher``). float32, or float16
    when float32 would pass ``CACHE_FLOAT32_BYTES``: the boundaries of EfficientNet-Lite0 at 224
    are ~69k floats per image, 0.55 GB for 2,000 images in float32.
    """

    hidden: tuple[torch.Tensor | None, ...]
    teacher: torch.Tensor
    seconds: float

    @classmethod
    @torch.no_grad()
    def run(cls, model: MultiExitModel, source: ImageSource, *, batch_size: int, progress: bool) -> _FrozenPass:
        """Needs a materialized model (lazy heads built); draws nothing from torch's RNG (eval mode)."""
        import time

        from edgeexit.console import progress_bar

        started = time.perf_counter()
        model.eval()
        n, last = len(source), model.num_exits - 1
        wanted = [k for k in range(last) if model.head(k) is not None]
        hidden: list[torch.Tensor | None] = [None] * model.num_exits
        teacher: torch.Tensor | None = None
        steps = (n + batch_size - 1) // batch_size
        with progress_bar(progress) as bar:
            task = bar.add_task("frozen backbone, once", total=steps)
            for start in range(0, n, batch_size):
                rows = slice(start, min(start + batch_size, n))
                x = torch.from_numpy(source.batch(np.arange(n)[rows]))
                # return_hidden clones each boundary before the next segment runs (in-place ReLUs).
                outputs, boundaries = model(x, return_hidden=True)
                final = outputs[-1]
                assert final is not None
                if teacher is None:
                    dtype = _cache_dtype(n, [boundaries[k] for k in wanted], final)
                    teacher = torch.empty((n, *final.shape[1:]), dtype=torch.float32)
                    for k in wanted:
                        hidden[k] = torch.empty((n, *boundaries[k].shape[1:]), dtype=dtype)
                teacher[rows] = final
                for k in wanted:
                    stored = hidden[k]
                    assert stored is not None
                    stored[rows] = boundaries[k]
                    if stored.dtype == torch.float16 and not torch.isfinite(stored[rows]).all():
                        raise ModelError(
                            f"boundary {k} ({model.infos[k].boundary}) holds values beyond float16's range "
                            f"(max |x| {float(boundaries[k].abs().max()):.3g} > 65504), so it cannot be cached at "
                            "this size; expected float16-safe activations. Distil on fewer images or pass "
                            "cache_features=False"
                        )
                bar.update(task, advance=1)
        assert teacher is not None
        return cls(hidden=tuple(hidden), teacher=teacher, seconds=time.perf_counter() - started)

    def logits(self, model: MultiExitModel, idx: torch.Tensor) -> list[torch.Tensor | None]:
        """Every exit's logits for the images at ``idx``: early heads run on their cached input
        (an indexed copy, so a head's in-place op cannot touch the cache), the final exit is the cache."""
        out: list[torch.Tensor | None] = []
        for k, stored in enumerate(self.hidden[:-1]):
            head = model.head(k)
            out.append(head(stored[idx].float()) if head is not None and stored is not None else None)
        out.append(self.teacher[idx])
        return out


def _cache_dtype(n: int, boundaries: Sequence[torch.Tensor], teacher: torch.Tensor) -> torch.dtype:
    per_image = sum(b[0].numel() for b in boundaries)
    float32 = 4 * n * per_image + 4 * n * teacher[0].numel()
    if float32 <= CACHE_FLOAT32_BYTES:
        return torch.float32
    float16 = 2 * n * per_image + 4 * n * teacher[0].numel()
    if float16 > CACHE_MAX_BYTES:
        raise ModelError(
            f"caching the frozen backbone's features of {n:,} images would take {float16 / 1024**3:.1f} GiB even in "
            f"float16 ({per_image:,} values per image); expected at most {CACHE_MAX_BYTES / 1024**3:.0f} GiB. "
            "Distil on fewer images, or pass cache_features=False (re-runs the backbone every epoch)"
        )
    return torch.float16


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
    forward: Forward,
    loss_fn: Loss,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    freeze_backbone: bool,
    seed: int,
    progress: bool,
    prepare: Callable[[], None] | None = None,
) -> tuple[float, float]:
    """The optimisation loop every scheme shares (AdamW, one-cycle); returns (last loss, seconds).

    ``forward`` maps a step's sample positions to the exits' logits: the model on the inputs, or
    the heads on cached features. ``prepare`` runs once the model is seeded and materialized and
    before the clock starts (the cached-feature pass): it must not draw from torch's RNG, so both
    ways start from the same heads and dropout draws."""
    import time

    from edgeexit.console import progress_bar

    torch.manual_seed(seed)
    model.materialize((1, *sample_shape))
    if prepare is not None:
        prepare()
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
                    logits, y = forward(order[step * batch_size : (step + 1) * batch_size])
                    loss = loss_fn(logits, y)
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
    names = _further_inputs(model)
    for start in range(0, len(data), batch_size):
        x = torch.from_numpy(data.x[start : start + batch_size])
        y = data.y[start : start + batch_size]
        further = (torch.from_numpy(data.extra[name][start : start + batch_size]) for name in names)
        for k, logits in enumerate(model(x, *further)):
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
    wanted = _further_inputs(model)
    if sorted(data.extra) != sorted(wanted):
        raise ModelError(
            f"model {model.name!r} takes the further input(s) {list(wanted)} besides the images; the data has "
            f"{sorted(data.extra) or 'none'} ({data.source}): give LabelledData(extra={{name: (N, ...) float32}})"
        )


def _further_inputs(model: MultiExitModel) -> tuple[str, ...]:
    """The model inputs after the image that training feeds from ``LabelledData.extra`` (a traced
    model's side inputs; a text encoder's mask is not image training's business)."""
    return () if model.context_everywhere else tuple(model.context_names)


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
