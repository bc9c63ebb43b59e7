"""A draft head for self-speculative decoding: one attention layer over an exit's hidden states and
a vocabulary projection cut to the tokens the model writes.

Why not the per-token exit adapter: a draft token is worth something only if the full model
agrees with it, and a per-token adapter after 6 of SmolLM2's 30 layers agreed on 20-50% of tokens
(docs/benchmarks.md), too few for drafting to pay. Kangaroo's adapter is an attention layer: the
shallow layers have not yet gathered much context, and one more layer of attention over the
exit's own states gathers it. Here it is a copy of the next decoder layer (it already reads that
layer's input), trained by self-distillation with the backbone frozen; it keeps its own KV cache
(one layer), filled from the exit's hidden states as the draft and prefill pass them.

Why a cut vocabulary: the head of a small model is its largest matrix (SmolLM2: 28M of 135M
weights, as much as 8 of its 30 layers), and a draft needs only the tokens the model writes;
``vocab`` of them (the most frequent in the model's own answers) cost a sixth of the projection
for 49,152. The draft cannot propose a token outside them; verification is unchanged (the full
head), so the output is still full depth's.

The graph takes ``hidden, position_ids, attention_mask, past_key_0, past_value_0`` and returns
``token`` (the draft's top token id, ``(B, S)`` int64), ``probability`` (its probability, for
Kangaroo's stop) and ``key_0, value_0`` (the layer's new cache entries), in the layer groups'
cache layout (``edgeexit.compile.decoders.llama``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeexit.compile.decoders.exits import ExitAdapter
from edgeexit.compile.decoders.llama import LayerGroup, LlamaShape, _norm
from edgeexit.errors import ExportError
from edgeexit.generation.package import DecoderPackage


@dataclass(frozen=True)
class DraftTraining:
    """How the draft head is trained: ``steps`` AdamW steps of ``batch`` sequences at
    ``learning_rate`` (one cycle) against the final layer's ``top_k`` tokens per position; the
    ``vocab`` most frequent tokens of the answers kept; ``held_out`` of the sequences measure it."""

    steps: int = 600
    batch: int = 8
    learning_rate: float = 1e-3
    vocab: int = 8192
    held_out: float = 0.1
    top_k: int = 64
    seed: int = 0


class NormalizedMLP(ExitAdapter):
    """``x + down(silu(gate(x)) * up(x))`` on ``x``, the RMS-normalised input: the exits' SwiGLU block
    working at unit scale, so it learns at a plain learning rate whatever the residual stream's scale
    (SmolLM2's reaches 22,500); it starts as the identity on ``x`` (``down`` zero)."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = _norm(hidden, self.norm, self.eps)
        return x + self.down(nn.functional.silu(self.gate(x)) * self.up(x))


class DraftHead(nn.Module):
    """``(hidden, position_ids, attention_mask, past_key_0, past_value_0) -> (token, probability,
    key_0, value_0)``: a decoder layer (a trainable copy), a normalised SwiGLU block, a norm and the
    cut vocabulary projection. (On SmolLM2 after layer 6, on held-out self-instructed answers: the
    layer alone agreed with the final layer on 40% of tokens, the layer and the block on 46%, a
    per-token residual adapter on 39%.)"""

    def __init__(self, layer: nn.Module, norm_weight: torch.Tensor, head_rows: torch.Tensor, token_ids: torch.Tensor,
                 shape: LlamaShape, width: int) -> None:  # fmt: skip
        super().__init__()
        self.group = LayerGroup([layer], shape)
        self.mlp = NormalizedMLP(shape.hidden, width, shape.eps)
        self.norm = nn.Parameter(norm_weight.detach().clone())
        self.register_buffer("rows", head_rows.detach().clone())
        self.register_buffer("token_ids", token_ids.to(torch.int64))
        self.eps = shape.eps

    def scores(self, hidden: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
               past_key: torch.Tensor, past_value: torch.Tensor) -> tuple[torch.Tensor, ...]:  # fmt: skip
        """Logits over the cut vocabulary and the layer's new cache entries."""
        out, key, value = self.group(hidden, position_ids, attention_mask, past_key, past_value)
        return _norm(self.mlp(out), self.norm, self.eps) @ self.rows.T, key, value

    def forward(self, hidden: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                past_key: torch.Tensor, past_value: torch.Tensor) -> tuple[torch.Tensor, ...]:  # fmt: skip
        logits, key, value = self.scores(hidden, position_ids, attention_mask, past_key, past_value)
        probability, index = torch.softmax(logits, dim=-1).max(dim=-1)
        return self.token_ids[index], probability, key, value


@dataclass
class SequenceFeatures:
    """Per sequence: the exit layer's hidden states ``(S, H)``, the final layer's top ``top_k``
    tokens and probabilities, its greedy token, and where the answer starts."""

    hidden: list[torch.Tensor]
    top_ids: list[torch.Tensor]
    top_probs: list[torch.Tensor]
    greedy: list[torch.Tensor]
    answer_start: list[int]


def sequence_features(model: Any, sequences: Sequence[Sequence[int]], layer: int, answer_starts: Sequence[int],
                      top_k: int) -> SequenceFeatures:  # fmt: skip
    """One forward pass per sequence: what training the draft head needs, kept per sequence (the
    head attends over a sequence, unlike a per-token adapter)."""
    found = SequenceFeatures([], [], [], [], list(answer_starts))
    with torch.no_grad():
        for ids in sequences:
            out = model(torch.tensor([list(ids)]), output_hidden_states=True)
            logits = out.logits[0].float()
            values, indices = torch.softmax(logits, dim=-1).topk(top_k, dim=-1)
            found.hidden.append(out.hidden_states[layer][0].float().clone())
            found.top_ids.append(indices)
            found.top_probs.append(values)
            found.greedy.append(logits.argmax(dim=-1))
    return found


def frequent_tokens(features: SequenceFeatures, rows: Sequence[int], vocab: int, total: int) -> np.ndarray:
    """The ``vocab`` tokens the model most often ranks first or among its top 8 on ``rows``'
    answers, sorted by id (ties broken by id: low BPE ids are the frequent merges)."""
    counts = np.zeros(total, dtype=np.int64)
    for row in rows:
        start = features.answer_start[row]
        np.add.at(counts, features.greedy[row][start:].numpy(), 4)
        np.add.at(counts, features.top_ids[row][start:, :8].reshape(-1).numpy(), 1)
    order = np.lexsort((np.arange(total), -counts))
    return np.sort(order[: min(vocab, total)])


def train_draft_head(model: Any, features: SequenceFeatures, layer: int, shape: LlamaShape,
                     training: DraftTraining) -> tuple[DraftHead, dict[str, Any]]:  # fmt: skip
    """A draft head reading layer ``layer``'s hidden states, trained on most sequences of
    ``features`` against the final layer's top-k distribution over the cut vocabulary; returns it
    and what it measured (held-out agreement of its top token with the final layer's greedy one,
    the cut vocabulary's coverage of those tokens, losses)."""
    started = time.perf_counter()
    count = len(features.hidden)
    rng = np.random.default_rng(training.seed)
    order = rng.permutation(count)
    held = max(1, round(count * training.held_out))
    if count - held < 2:
        raise ExportError(f"{count} sequences are too few to train a draft head and measure it; give more prompts")
    train_rows, test_rows = order[held:], order[:held]
    keep = frequent_tokens(features, train_rows, training.vocab, shape.vocab)
    remap = torch.full((shape.vocab,), -1, dtype=torch.int64)
    remap[torch.from_numpy(keep)] = torch.arange(len(keep))
    core = model.model
    torch.manual_seed(training.seed)
    head = DraftHead(copy.deepcopy(core.layers[layer]), core.norm.weight,
                     model.lm_head.weight[torch.from_numpy(keep)], torch.from_numpy(keep), shape,
                     int(model.config.intermediate_size))  # fmt: skip
    for parameter in head.parameters():
        parameter.requires_grad_(True)
    head.train()
    parameters = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=training.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=training.learning_rate,
                                                   total_steps=training.steps, pct_start=0.05)  # fmt: skip
    losses: list[float] = []
    window: list[float] = []
    for step in range(training.steps):
        picked = rng.choice(train_rows, size=min(training.batch, train_rows.size), replace=False)
        loss = torch.zeros(())
        for row in picked:
            logits = _sequence_logits(head, features.hidden[row], shape)
            loss = loss + _distillation_loss(logits, features.top_ids[row], features.top_probs[row], remap)
        loss = loss / len(picked)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        window.append(loss.item())
        if step % 50 == 49 or step == training.steps - 1:
            losses.append(round(float(np.mean(window)), 4))
            window = []
    head.eval()
    hits = total = covered = 0
    with torch.no_grad():
        for row in test_rows:
            start = features.answer_start[row]
            logits = _sequence_logits(head, features.hidden[row], shape)[start:]
            greedy = features.greedy[row][start:]
            hits += int((head.token_ids[logits.argmax(dim=-1)] == greedy).sum())
            covered += int((remap[greedy] >= 0).sum())
            total += int(greedy.numel())
    record = {
        "layer": layer,
        "vocab": len(keep),
        "train_sequences": int(train_rows.size),
        "held_out_sequences": int(test_rows.size),
        "held_out_answer_tokens": total,
        "held_out_top1_agreement": hits / total if total else float("nan"),
        "vocab_coverage": covered / total if total else float("nan"),
        "loss_every_50_steps": losses,
        "training": dict(training.__dict__),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return head, record


def _sequence_logits(head: DraftHead, hidden: torch.Tensor, shape: LlamaShape) -> torch.Tensor:
    """The draft head over one whole sequence (no past), ``(S, vocab)``."""
    length = hidden.shape[0]
    empty = torch.zeros(0, 1, shape.kv_heads, shape.head_dim)
    logits, _, _ = head.scores(hidden[None], torch.arange(length)[None], torch.ones(1, length, dtype=torch.int64),
                               empty, empty)  # fmt: skip
    return logits[0]


def _distillation_loss(logits: torch.Tensor, top_ids: torch.Tensor, top_probs: torch.Tensor,
                       remap: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Cross-entropy of the head's distribution against the final layer's top-k, renormalised over
    the tokens of the cut vocabulary (a position whose top-k lies wholly outside it adds nothing)."""
    mapped = remap[top_ids]
    inside = mapped >= 0
    target = top_probs * inside
    target = target / target.sum(dim=-1, keepdim=True).clamp_min(1e-9)
    log_q = torch.log_softmax(logits, dim=-1).gather(-1, mapped.clamp_min(0))
    return -(target * log_q).sum(dim=-1).mean()


def add_draft_head(package: str | Path | DecoderPackage, source: Any, layer: int, prompts: Sequence[str], *,
                   training: DraftTraining | None = None, answer_tokens: int = 96) -> DecoderPackage:  # fmt: skip
    """Train a draft head reading the hidden state after ``layer`` layers (where a layer group ends)
    on the model's answers to ``prompts``, export it (checked against PyTorch) with a copy per
    weight variant of the package, and make it what ``--mode speculative`` drafts with."""
    from edgeexit.compile.decoders.exits import answer_prompts, package_for_training, prompt_ids

    started = time.perf_counter()
    package = package_for_training(package, source, [layer])  # refused before the model answers
    sequences = answer_prompts(source.model.eval(), source.tokenizer, prompts, answer_tokens)
    starts = [len(prompt_ids(source.tokenizer, prompt)) for prompt in prompts]
    extra = {
        "prompts": len(prompts),
        "answer_tokens": answer_tokens,
        "answer_seconds": round(time.perf_counter() - started, 1),
    }
    return install_draft_head(package, source, layer, sequences, starts, training=training, extra=extra)


def install_draft_head(package: str | Path | DecoderPackage, source: Any, layer: int,
                       sequences: Sequence[Sequence[int]], answer_starts: Sequence[int], *,
                       training: DraftTraining | None = None, extra: dict[str, Any] | None = None
                       ) -> DecoderPackage:  # fmt: skip
    """``add_draft_head`` from token sequences (prompt + the model's answer, the answer starting at
    ``answer_starts``) instead of prompts; ``extra`` joins the head's record."""
    from edgeexit.compile.decoders.exits import package_for_training
    from edgeexit.compile.decoders.weights import quantize_weights
    from edgeexit.fileio import sha256_file
    from edgeexit.generation.manifest import DecoderManifest, Speculation, WeightVariant
    from edgeexit.generation.manifest import DraftHead as DraftHeadSpec

    started = time.perf_counter()
    training = training or DraftTraining()
    package = package_for_training(package, source, [layer])
    manifest = package.manifest
    if not training.vocab > 0:
        raise ExportError(f"vocab {training.vocab}: expected a number of tokens above 0, e.g. 8192")
    model = source.model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    shape = LlamaShape(model.config)
    features = sequence_features(model, sequences, layer, answer_starts, training.top_k)
    head, record = train_draft_head(model, features, layer, shape, training)
    file = "exits/draft_head.onnx"
    (package.root / "exits").mkdir(exist_ok=True)
    graph = export_draft_head(head, package.path(file), shape)
    files = dict(manifest.files)
    files[file] = sha256_file(package.path(file))
    variants = []
    for variant in manifest.variants:
        target = f"{variant.name}/draft_head.onnx"
        quantize_weights(package.path(file), package.path(target), variant.bits)
        files[target] = sha256_file(package.path(target))
        variants.append(WeightVariant(**{**variant.__dict__, "files": {**variant.files, file: target}}))
    record = {**record, **(extra or {}), "seconds_in_all": round(time.perf_counter() - started, 1)}
    segment = next(s.index for s in manifest.segments if s.stop_layer == layer)
    spec = DraftHeadSpec(segment=segment, layer=layer, graph=graph, vocab=int(head.token_ids.numel()), record=record)
    speculation = manifest.speculation or Speculation(exit=0)
    updated = DecoderManifest(**{
        **manifest.__dict__,
        "files": files,
        "variants": tuple(variants),
        "speculation": Speculation(**{**speculation.__dict__, "draft_head": spec}),
    })  # fmt: skip
    return package.save_manifest(updated)


def export_draft_head(head: DraftHead, path: Path, shape: LlamaShape) -> Any:
    """``head`` as an ONNX graph at ``path`` (dynamic batch, sequence and past), its outputs checked
    against PyTorch on random states with a past; the manifest's graph spec."""
    from edgeexit.compile.exporter import export_graph
    from edgeexit.generation.manifest import GraphSpec
    from edgeexit.manifest import TensorSpec
    from edgeexit.runtime.sessions import load_session

    auto = torch.export.Dim.AUTO
    entry = (None, None, shape.kv_heads, shape.head_dim)
    batch, new, past = 2, 3, 4
    examples = [
        torch.randn(batch, new, shape.hidden),
        torch.arange(past, past + new).expand(batch, new).contiguous(),
        torch.ones(batch, past + new, dtype=torch.int64),
        torch.randn(past, batch, shape.kv_heads, shape.head_dim),
        torch.randn(past, batch, shape.kv_heads, shape.head_dim),
    ]
    names_in = ["hidden", "position_ids", "attention_mask", "past_key_0", "past_value_0"]
    names_out = ["token", "probability", "key_0", "value_0"]
    export_graph(head, examples, path, names_in, names_out, "the draft head",
                 dynamic_shapes=[{0: auto, 1: auto}] * 3 + [{0: auto, 1: auto}] * 2)  # fmt: skip
    session = load_session(path)
    probe = [examples[0] * 20, *examples[1:]]
    with torch.no_grad():
        expected = head(*probe)
    ours = session.run(None, {name: value.numpy() for name, value in zip(names_in, probe, strict=True)})
    if not np.array_equal(ours[0], expected[0].numpy()):
        raise ExportError(f"{path.name}: ONNX Runtime's draft tokens differ from PyTorch's")
    for index in (1, 2, 3):
        want = expected[index].numpy()
        if float(np.max(np.abs(ours[index] - want))) > 1e-4 * max(float(np.max(np.abs(want))), 1.0):
            raise ExportError(f"{path.name}: ONNX Runtime's {names_out[index]} differs from PyTorch beyond 1e-4")
    return GraphSpec(
        f"exits/{path.name}",
        (
            TensorSpec("hidden", (None, None, shape.hidden), "float32"),
            TensorSpec("position_ids", (None, None), "int64"),
            TensorSpec("attention_mask", (None, None), "int64"),
            TensorSpec("past_key_0", entry, "float32"),
            TensorSpec("past_value_0", entry, "float32"),
        ),
        (
            TensorSpec("token", (None, None), "int64"),
            TensorSpec("probability", (None, None), "float32"),
            TensorSpec("key_0", entry, "float32"),
            TensorSpec("value_0", entry, "float32"),
        ),
        params=sum(p.numel() for p in head.parameters()) + int(head.rows.numel()),
    )
