"""Add trained exits to a decoder package: adapters, gates, calibrated thresholds, the draft's defaults.

``add_exits`` runs the steps of ``edgeexit.compile.decoders.exits`` on the package's source model,
writes each adapter as ``exits/exit_K.onnx`` (checked against PyTorch), and calibrates every
criterion's thresholds on held-out tokens with Learn-then-Test (the calibration issue's guarantee
method): with probability at least ``1 - delta`` over the calibration draw, the share of tokens
whose exit disagrees with the full model's greedy choice is at most ``1 - agreement`` (tokens
treated as exchangeable draws; tokens of one answer are correlated, so the bound is looser in fact
than on paper: the benchmark measures the agreement of generated text directly).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from edgeexit.compile.decoders.exits import (
    ExitAdapter,
    ExitTraining,
    answer_prompts,
    collect_features,
    fit_linear_gate,
    normalized,
    package_for_training,
    train_adapter,
)
from edgeexit.compile.decoders.export import DecoderSource
from edgeexit.compile.decoders.llama import LlamaShape, _norm
from edgeexit.compile.exporter import export_graph
from edgeexit.errors import ExportError
from edgeexit.fileio import sha256_file
from edgeexit.generation.decoding import GATE_EPS
from edgeexit.generation.manifest import DecoderExit, DecoderManifest, GraphSpec, Speculation
from edgeexit.generation.package import DecoderPackage
from edgeexit.manifest import TensorSpec

#: Shares of the held-out sequences: the first fits the gates, the rest calibrates thresholds.
GATE_SHARE = 0.5


def add_exits(
    package: str | DecoderPackage,
    source: DecoderSource,
    layers: Sequence[int],
    prompts: Sequence[str],
    *,
    training: ExitTraining | None = None,
    agreement: float = 0.9,
    delta: float = 0.1,
    draft_exit: int = 0,
) -> DecoderPackage:
    """Train exits after ``layers`` (ends of layer groups) on the model's answers to ``prompts``
    and save them into ``package`` with thresholds for ``agreement`` at confidence ``1 - delta``."""
    started = time.perf_counter()
    training = training or ExitTraining()
    package = package_for_training(package, source, layers)
    manifest = package.manifest
    layers = sorted(set(layers))
    if not 0 < agreement < 1:
        raise ExportError(f"agreement {agreement}: expected a share of tokens in (0, 1), e.g. 0.9")
    model = source.model.eval()
    shape = LlamaShape(model.config)
    width = int(model.config.intermediate_size)
    sequences = answer_prompts(model, source.tokenizer, prompts, training.answer_tokens)
    features = collect_features(model, sequences, layers, training.top_k)
    rng = np.random.default_rng(training.seed)
    order = rng.permutation(len(sequences))
    cut = round(len(sequences) * (1 - training.held_out))
    gate_cut = cut + round((len(sequences) - cut) * GATE_SHARE)
    if cut == 0 or gate_cut == cut or gate_cut == len(sequences):
        raise ExportError(f"{len(sequences)} prompts are too few to train, fit gates and calibrate; give more")
    train_rows = np.flatnonzero(np.isin(features.sequence, order[:cut]))
    gate_rows = np.flatnonzero(np.isin(features.sequence, order[cut:gate_cut]))
    calib_rows = np.flatnonzero(np.isin(features.sequence, order[gate_cut:]))
    norm_weight = model.model.norm.weight.detach()
    lm_head = model.lm_head

    def head(hidden: torch.Tensor) -> torch.Tensor:
        return lm_head(_norm(hidden, norm_weight, shape.eps))

    teacher = features.top_ids[:, 0]
    segment_of = {s.stop_layer: s.index for s in manifest.segments}
    (package.root / "exits").mkdir(exist_ok=True)
    files = dict(manifest.files)
    exits: list[DecoderExit] = []
    scores: dict[str, list[np.ndarray]] = {"max_prob": [], "gate": [], "similarity": []}
    predictions = []
    previous = 0
    for layer in layers:
        tick = time.perf_counter()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        adapter, losses = train_adapter(features, layer, train_rows, shape, head, width, training)
        with torch.no_grad():
            adapted = adapter(torch.from_numpy(features.hidden[layer])).numpy()
        top, probs_max = _head_top(head, adapted)
        agree = top == teacher
        gate_features = normalized(adapted, GATE_EPS)
        weights, bias = fit_linear_gate(gate_features[gate_rows], agree[gate_rows])
        gate = 1.0 / (1.0 + np.exp(-(gate_features @ weights + bias)))
        before, after = features.hidden[previous], features.hidden[layer]
        similarity = np.sum(before * after, axis=-1) / (
            np.linalg.norm(before, axis=-1) * np.linalg.norm(after, axis=-1) + 1e-12
        )
        for name, value in (("max_prob", probs_max), ("gate", gate), ("similarity", similarity)):
            scores[name].append(value)
        predictions.append(top)
        file = f"exits/exit_{layer}.onnx"
        graph = _export_adapter(adapter, package, file, shape)
        files[file] = sha256_file(package.path(file))
        exits.append(
            DecoderExit(
                segment=segment_of[layer],
                layer=layer,
                graph=graph,
                gate_weights=tuple(float(w) for w in weights),
                gate_bias=bias,
                record={
                    "train_tokens": int(train_rows.size),
                    "loss_every_50_steps": [round(v, 4) for v in losses],
                    "held_out_top1_agreement": float(agree[calib_rows].mean()),
                    "gate_auc": _auc(gate[calib_rows], agree[calib_rows]),
                    "max_prob_auc": _auc(probs_max[calib_rows], agree[calib_rows]),
                    "similarity_auc": _auc(similarity[calib_rows], agree[calib_rows]),
                    "seconds": round(time.perf_counter() - tick, 1),
                },
            )
        )
        previous = layer
    thresholds, calibration = _calibrate(scores, predictions, teacher, calib_rows, layers, shape.layers,
                                         agreement, delta, training.seed)  # fmt: skip
    exits = [DecoderExit(**{**e.__dict__, "thresholds": thresholds[i]}) for i, e in enumerate(exits)]
    calibration.update({
        "prompts": len(prompts),
        "tokens": int(teacher.size),
        "train_tokens": int(train_rows.size),
        "gate_tokens": int(gate_rows.size),
        "calibration_tokens": int(calib_rows.size),
        "training": dict(training.__dict__),
        "seconds": round(time.perf_counter() - started, 1),
    })  # fmt: skip
    updated = DecoderManifest(**{
        **manifest.__dict__,
        "files": files,
        "exits": tuple(exits),
        "exit_calibration": calibration,
        "speculation": _speculation(manifest.speculation, min(draft_exit, len(exits) - 1)),
    })  # fmt: skip
    return package.save_manifest(updated)


def _speculation(found: Speculation | None, draft_exit: int) -> Speculation:
    """The package's speculation settings drafting from ``draft_exit``, the rest (a draft head, a
    draft variant, limits) kept: training exits must not drop a draft head the variants still map."""
    return Speculation(exit=draft_exit) if found is None else dataclasses.replace(found, exit=draft_exit)


def _calibrate(scores: dict[str, list[np.ndarray]], predictions: list[np.ndarray], teacher: np.ndarray,
               rows: np.ndarray, layers: Sequence[int], depth: int, agreement: float, delta: float,
               seed: int) -> tuple[list[dict[str, float]], dict[str, Any]]:  # fmt: skip
    """Per criterion, the thresholds Learn-then-Test certifies on ``rows``: the token's exit (the
    first whose score reaches its threshold, else the final layer) disagrees with the final layer's
    greedy token on at most ``1 - agreement`` of tokens, with probability ``1 - delta``."""
    from edgeexit.calibration.risk_control import certify_thresholds

    costs = np.diff([0, *layers, depth]).astype(np.float64)  # layers run per segment
    preds = np.stack([*(p[rows] for p in predictions), teacher[rows]])
    correct = preds == teacher[rows][None, :]
    per_exit: list[dict[str, float]] = [{} for _ in layers]
    found: dict[str, Any] = {"agreement": agreement, "delta": delta, "method": "learn-then-test (Hoeffding-Bentkus)"}
    for name, values in scores.items():
        table = np.stack([*(v[rows] for v in values), np.zeros(rows.size)])
        choice, guarantee = certify_thresholds(table, correct, costs, 1 - agreement, delta, predictions=preds,
                                               against="final", seed=seed)  # fmt: skip
        for index, threshold in enumerate(choice.thresholds[: len(layers)]):
            if np.isfinite(threshold):
                per_exit[index][name] = float(threshold)
        outcome = choice.outcome
        found[name] = {
            "certified": bool(guarantee.certified),
            "expected_layers": float(outcome.expected_ms),
            "agreement": float(outcome.accuracy),
            "exit_rates": [float(r) for r in outcome.exit_rate],
            "bound": float(guarantee.bound),
        }
    return per_exit, found


def _export_adapter(adapter: ExitAdapter, package: DecoderPackage, file: str, shape: LlamaShape) -> GraphSpec:
    auto = torch.export.Dim.AUTO
    example = torch.randn(2, 3, shape.hidden)
    export_graph(adapter, [example], package.path(file), ["hidden"], ["hidden_exit"], f"the adapter {file}",
                 dynamic_shapes=[{0: auto, 1: auto}])  # fmt: skip
    from edgeexit.runtime.sessions import load_session

    session = load_session(package.path(file))
    probe = torch.randn(1, 5, shape.hidden) * 20
    with torch.no_grad():
        expected = adapter(probe).numpy()
    (ours,) = session.run(None, {"hidden": probe.numpy()})
    if float(np.max(np.abs(ours - expected))) > 1e-4 * max(float(np.max(np.abs(expected))), 1.0):
        raise ExportError(f"{file}: ONNX Runtime differs from PyTorch beyond 1e-4 of the largest value")
    spec = TensorSpec("hidden", (None, None, shape.hidden), "float32")
    out = TensorSpec("hidden_exit", (None, None, shape.hidden), "float32")
    return GraphSpec(file, (spec,), (out,), params=sum(p.numel() for p in adapter.parameters()))


def _head_top(head: Any, hidden: np.ndarray, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """The head's top token and its probability for many rows, a chunk at a time (N x 49,152
    logits at once would not fit)."""
    tops, probs = [], []
    with torch.no_grad():
        for start in range(0, len(hidden), chunk):
            p = torch.softmax(head(torch.from_numpy(hidden[start : start + chunk])), dim=-1)
            value, index = p.max(dim=-1)
            tops.append(index.numpy())
            probs.append(value.numpy())
    return np.concatenate(tops), np.concatenate(probs)


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    """The probability that a random agreeing token outscores a random disagreeing one."""
    pos, neg = score[positive], score[~positive]
    if not pos.size or not neg.size:
        return float("nan")
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]))) + 1
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))
