"""Train a text encoder's exit heads with the backbone frozen, cheaply.

With the backbone frozen, every head reads the same hidden states on every epoch, and a text
head only ever sees them pooled (``PooledHead.features``: the masked mean or the [CLS] token).
So the backbone runs once over the data, without gradients, in batches of similar length (little
padding), and keeps one pooled vector per text and exit; the heads then train on those vectors
for as many epochs as wanted in a fraction of a second each. The same pass records how much each
segment changed the representation (the MuE similarity), pooled and per token.

Loss per exit: cross-entropy on the labels; with ``distill_alpha > 0`` the early heads also match
the final head's softened predictions (KL at temperature T, scaled by T^2), as in the two-stage
scheme of ``edgeexit.compile.training``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from edgeexit.compile.adapters.bert import PooledHead, masked_mean
from edgeexit.compile.model import MultiExitModel
from edgeexit.compile.training import ExitAccuracy
from edgeexit.data.tweets import TextData
from edgeexit.errors import ModelError
from edgeexit.runtime.text import TextEncoder

SIMILARITIES = ("pooled", "token")


@dataclass(frozen=True, eq=False)
class FrozenFeatures:
    """One pass of the frozen backbone over ``texts``.

    ``features[k]`` is exit k's head input ``(N, F)`` (``None`` where the exit has no head);
    ``similarity[name]`` is ``(N, num_exits)``: column k compares boundary k with boundary k-1
    (column 0 is 0, as the runtime scores the first boundary). ``pooled``: cosine of the masked
    mean vectors; ``token``: per-token cosine averaged over the attended tokens. Both ignore
    padding, so they do not depend on what else was in the batch.
    """

    features: tuple[np.ndarray | None, ...]
    y: np.ndarray
    similarity: dict[str, np.ndarray]
    mean_tokens: float
    seconds: float  # wall clock
    cpu_seconds: float  # this process, all threads: what a shared, busy machine cannot inflate


@dataclass(frozen=True)
class TextTrainReport:
    samples: int
    epochs: int
    max_length: int
    precompute_seconds: float  # the frozen backbone over train + validation, wall clock
    precompute_cpu_seconds: float  # the same, CPU time of this process
    train_seconds: float  # the heads, wall clock
    final_loss: float
    accuracy: tuple[ExitAccuracy, ...]  # on the validation texts
    similarity: dict[str, tuple[float, ...]]  # mean validation similarity per boundary


def _pooled_heads(model: MultiExitModel) -> list[PooledHead | None]:
    heads = [model.head(k) for k in range(model.num_exits)]
    for k, head in enumerate(heads):
        if head is not None and not isinstance(head, PooledHead):
            raise ModelError(
                f"exit {k}'s head is a {type(head).__name__}; training on precomputed features needs the text "
                "heads the 'bert' adapter builds (PooledHead: pool with the mask, then a classifier)"
            )
    return heads  # type: ignore[return-value]


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.double(), b.double(), dim=-1, eps=1e-12)


@torch.no_grad()
def precompute_features(
    model: MultiExitModel, data: TextData, encoder: TextEncoder, *, batch_size: int = 64, threads: int | None = None
) -> FrozenFeatures:
    """Run the frozen backbone once over ``data`` (eval mode, batches sorted by length).

    ``threads`` sets torch's intra-op threads for the pass (restored after). Measured on a busy
    2-core box: 1 thread took 59 s CPU for 8,000 tweets, 2 threads about 6x that (spinning).
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _precompute(model, data, encoder, batch_size)
    finally:
        torch.set_num_threads(before)


def _precompute(model: MultiExitModel, data: TextData, encoder: TextEncoder, batch_size: int) -> FrozenFeatures:
    heads = _pooled_heads(model)
    start, cpu_start = time.perf_counter(), time.process_time()
    was_training = model.training
    model.eval()
    tokens = encoder.encode(list(data.texts))
    ids, mask = torch.from_numpy(tokens["input_ids"]), torch.from_numpy(tokens["attention_mask"])
    lengths = mask.sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    n, exits = len(data), model.num_exits
    features: list[np.ndarray | None] = [None] * exits
    similarity = {name: np.zeros((n, exits), dtype=np.float32) for name in SIMILARITIES}
    try:
        for first in range(0, n, batch_size):
            rows = order[first : first + batch_size]
            width = int(lengths[rows].max())
            hidden, batch_mask = ids[rows, :width], mask[rows, :width]
            previous: torch.Tensor | None = None
            for k, segment in enumerate(model.segments):
                hidden = segment(hidden, batch_mask)
                head = heads[k]
                if head is not None:
                    pooled = head.features(hidden, batch_mask).float().numpy()
                    if features[k] is None:
                        features[k] = np.zeros((n, pooled.shape[1]), dtype=np.float32)
                    features[k][rows.numpy()] = pooled  # type: ignore[index]
                if previous is not None:
                    weights = batch_mask.double()
                    token = (_cosine(hidden, previous) * weights).sum(dim=1) / weights.sum(dim=1)
                    pooled_cos = _cosine(masked_mean(hidden, batch_mask), masked_mean(previous, batch_mask))
                    similarity["token"][rows.numpy(), k] = token.float().numpy()
                    similarity["pooled"][rows.numpy(), k] = pooled_cos.float().numpy()
                previous = hidden
    finally:
        model.train(was_training)
    return FrozenFeatures(
        features=tuple(features),
        y=data.y.copy(),
        similarity=similarity,
        mean_tokens=float(lengths.double().mean()),
        seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - cpu_start,
    )


def train_heads(
    model: MultiExitModel,
    train: FrozenFeatures,
    *,
    epochs: int = 30,
    batch_size: int = 256,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    distill_alpha: float = 0.0,
    distill_temperature: float = 3.0,
    seed: int = 0,
) -> float:
    """Train every head on precomputed features (the backbone is not touched); returns the last loss."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (256, 384) batches: a second thread only adds synchronisation, slow on a busy box
    try:
        return _train_heads(
            model, train, epochs, batch_size, lr, weight_decay, distill_alpha, distill_temperature, seed
        )
    finally:
        torch.set_num_threads(threads)


def _train_heads(
    model: MultiExitModel,
    train: FrozenFeatures,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    distill_alpha: float,
    distill_temperature: float,
    seed: int,
) -> float:
    heads = _pooled_heads(model)
    trained = [k for k, head in enumerate(heads) if head is not None]
    if epochs < 1 or batch_size < 1:
        raise ModelError(f"epochs and batch_size must be positive; got {epochs} and {batch_size}")
    final = model.num_exits - 1
    generator = torch.Generator().manual_seed(seed)
    x = {k: torch.from_numpy(train.features[k]) for k in trained}  # type: ignore[arg-type]
    y = torch.from_numpy(train.y)
    params = [p for k in trained for p in heads[k].classifier.parameters()]  # type: ignore[union-attr]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    for k in trained:
        heads[k].train()  # type: ignore[union-attr]
    loss = torch.zeros(())
    t = distill_temperature
    for _ in range(epochs):
        for rows in torch.randperm(len(y), generator=generator).split(batch_size):
            logits = {k: heads[k].classifier(x[k][rows]) for k in trained}  # type: ignore[union-attr]
            teacher = F.softmax(logits[final].detach() / t, dim=1)
            loss = torch.zeros(())
            for k in trained:
                term = F.cross_entropy(logits[k], y[rows])
                if distill_alpha > 0 and k != final:
                    kl = F.kl_div(F.log_softmax(logits[k] / t, dim=1), teacher, reduction="batchmean") * t * t
                    term = (1 - distill_alpha) * term + distill_alpha * kl
                loss = loss + term
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    return float(loss.detach())


@torch.no_grad()
def exit_accuracy(model: MultiExitModel, data: FrozenFeatures) -> tuple[float | None, ...]:
    heads = _pooled_heads(model)
    y = torch.from_numpy(data.y)
    found: list[float | None] = []
    for k, head in enumerate(heads):
        if head is None:
            found.append(None)
            continue
        predicted = head.eval().classifier(torch.from_numpy(data.features[k])).argmax(dim=1)  # type: ignore[arg-type]
        found.append(float((predicted == y).double().mean()))
    return tuple(found)


def fit_text_heads(
    model: MultiExitModel,
    train: TextData,
    validation: TextData,
    encoder: TextEncoder,
    *,
    epochs: int = 30,
    batch_size: int = 256,
    lr: float = 2e-3,
    distill_alpha: float = 0.0,
    backbone_batch: int = 64,
    threads: int | None = None,
    seed: int = 0,
) -> TextTrainReport:
    """Freeze the backbone, precompute its features on both sets, train the heads, measure them."""
    for param in model.segments.parameters():
        param.requires_grad_(False)
    train_features = precompute_features(model, train, encoder, batch_size=backbone_batch, threads=threads)
    validation_features = precompute_features(model, validation, encoder, batch_size=backbone_batch, threads=threads)
    start = time.perf_counter()
    loss = train_heads(
        model, train_features, epochs=epochs, batch_size=batch_size, lr=lr, distill_alpha=distill_alpha, seed=seed
    )
    seconds = time.perf_counter() - start
    accuracy = exit_accuracy(model, validation_features)
    return TextTrainReport(
        samples=len(train),
        epochs=epochs,
        max_length=encoder.max_length,
        precompute_seconds=train_features.seconds + validation_features.seconds,
        precompute_cpu_seconds=train_features.cpu_seconds + validation_features.cpu_seconds,
        train_seconds=seconds,
        final_loss=loss,
        accuracy=tuple(
            ExitAccuracy(k, info.boundary, info.head, acc)
            for k, (info, acc) in enumerate(zip(model.infos, accuracy, strict=True))
        ),
        similarity={
            name: tuple(float(v) for v in values.mean(axis=0))
            for name, values in validation_features.similarity.items()
        },
    )


def mean_similarity(features: FrozenFeatures, name: str = "pooled") -> Sequence[float]:
    """Mean similarity per boundary (column 0 is the first boundary: 0)."""
    return [float(v) for v in features.similarity[name].mean(axis=0)]
