"""A Llama-style decoder cut into exportable parts: embedding, layer groups with their KV cache, head.

The parts reuse the weights of a Hugging Face ``LlamaForCausalLM`` (the modules themselves, not
copies), so a model loaded from a GGUF file, a safetensors checkpoint or a random config exports
the same way. What differs from the Hugging Face forward is only how the cache travels:

- Each layer's keys and values live in one buffer per layer laid out **sequence-major**,
  ``(positions, batch, kv_heads, head_dim)``. The first ``P`` positions of such a buffer are one
  contiguous block, so the device passes the past to a graph as a view of its preallocated buffer
  (no copy), and binds the graph's new-entry output straight to the next ``S`` positions of it:
  the cache is written once per token and never copied whole (``edgeexit.generation.cache``).
- A layer group takes ``past_key_i`` / ``past_value_i`` ``(P, B, kv, d)`` for each of its layers
  and returns only ``key_i`` / ``value_i`` for the new tokens ``(S, B, kv, d)``, keys already
  rotated (RoPE at their absolute positions), as Hugging Face caches them.

``position_ids`` ``(B, S)`` and ``attention_mask`` ``(B, P + S)`` (1: attend, 0: padding) are
inputs of every group, as in Hugging Face and onnxruntime-genai, so left-padded batches work.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from edgeexit.errors import ModelError


def _norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm in float32, as Hugging Face computes it."""
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _Rotary(nn.Module):
    """Llama's rotary position embedding: cos and sin at ``position_ids``, shaped ``(B, 1, S, d)``
    to broadcast over heads, computed in float32 as Hugging Face does."""

    def __init__(self, shape: LlamaShape) -> None:
        super().__init__()
        exponents = torch.arange(0, shape.head_dim, 2, dtype=torch.float32) / shape.head_dim
        self.register_buffer("inv_freq", 1.0 / (shape.rope_theta**exponents), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids.to(torch.float32)[..., None] * self.inv_freq  # (B, S, d/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos()[:, None], emb.sin()[:, None]


class LlamaShape:
    """The dimensions a part needs, read from a Hugging Face Llama config (refusing what the
    parts do not implement: RoPE scaling, attention or MLP biases)."""

    def __init__(self, config: object) -> None:
        get = config.__getattribute__
        self.hidden = int(get("hidden_size"))
        self.heads = int(get("num_attention_heads"))
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or self.hidden // self.heads)
        self.layers = int(get("num_hidden_layers"))
        self.vocab = int(get("vocab_size"))
        self.eps = float(get("rms_norm_eps"))
        self.rope_theta = float(getattr(config, "rope_theta", 10000.0))
        if getattr(config, "rope_scaling", None):
            raise ModelError(
                f"rope_scaling {config.rope_scaling!r} is not supported; expected plain RoPE (rope_scaling null)"  # type: ignore[attr-defined]
            )
        for flag in ("attention_bias", "mlp_bias"):
            if getattr(config, flag, False):
                raise ModelError(f"{flag}=True is not supported; expected a Llama without biases")
        if getattr(config, "hidden_act", "silu") != "silu":
            raise ModelError(f"hidden_act {config.hidden_act!r} is not supported; expected silu")  # type: ignore[attr-defined]
        if self.heads % self.kv_heads:
            raise ModelError(f"{self.heads} heads do not divide into {self.kv_heads} KV heads")


class Embedding(nn.Module):
    """``input_ids (B, S) int64 -> hidden (B, S, H)``."""

    def __init__(self, embed: nn.Embedding) -> None:
        super().__init__()
        self.embed = embed

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids)


class LayerGroup(nn.Module):
    """Decoder layers ``[start, stop)``: ``(hidden, position_ids, attention_mask, past_key_i,
    past_value_i, ...) -> (hidden, key_i, value_i, ...)`` with the cache layout of the module
    docstring."""

    def __init__(self, layers: Sequence[nn.Module], shape: LlamaShape) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.shape = shape
        self.rotary = _Rotary(shape)

    def forward(
        self, hidden: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor, *past: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        if len(past) != 2 * len(self.layers):
            raise ModelError(f"expected {2 * len(self.layers)} past tensors (key, value per layer), got {len(past)}")
        cos, sin = self.rotary(position_ids)
        total = past[0].shape[0] + hidden.shape[1]
        queries = (past[0].shape[0] + torch.arange(hidden.shape[1]))[:, None]  # absolute positions of the new tokens
        causal = torch.arange(total)[None, :] <= queries  # (S, P + S)
        allowed = causal[None, None, None] & (attention_mask[:, None, None, None, :] > 0)  # (B, 1, 1, S, P + S)
        bias = torch.zeros(allowed.shape, dtype=hidden.dtype).masked_fill(~allowed, torch.finfo(hidden.dtype).min)
        new: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            hidden, key, value = self._layer(layer, hidden, cos, sin, bias, past[2 * i], past[2 * i + 1])
            new += [key, value]
        return (hidden, *new)

    def _layer(
        self,
        layer: nn.Module,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        bias: torch.Tensor,
        past_key: torch.Tensor,
        past_value: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        s = self.shape
        attn = layer.self_attn
        batch, length, _ = hidden.shape
        x = _norm(hidden, layer.input_layernorm.weight, s.eps)
        q = attn.q_proj(x).view(batch, length, s.heads, s.head_dim).transpose(1, 2)  # (B, h, S, d)
        k = attn.k_proj(x).view(batch, length, s.kv_heads, s.head_dim).transpose(1, 2)  # (B, kv, S, d)
        v = attn.v_proj(x).view(batch, length, s.kv_heads, s.head_dim)  # (B, S, kv, d)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        key = k.permute(2, 0, 1, 3)  # (S, B, kv, d): the new cache entries
        value = v.permute(1, 0, 2, 3)
        keys = torch.cat((past_key, key), dim=0).permute(1, 2, 3, 0)  # (B, kv, d, P + S)
        values = torch.cat((past_value, value), dim=0).permute(1, 2, 0, 3)  # (B, kv, P + S, d)
        group = s.heads // s.kv_heads
        q = q.reshape(batch, s.kv_heads, group * length, s.head_dim)  # query heads sharing a KV head, together
        scores = torch.matmul(q, keys) * (s.head_dim**-0.5)  # (B, kv, g * S, P + S)
        scores = scores.view(batch, s.kv_heads, group, length, -1) + bias
        probs = torch.softmax(scores, dim=-1).view(batch, s.kv_heads, group * length, -1)
        out = torch.matmul(probs, values).view(batch, s.heads, length, s.head_dim)
        out = out.transpose(1, 2).reshape(batch, length, s.heads * s.head_dim)
        hidden = hidden + attn.o_proj(out)
        x = _norm(hidden, layer.post_attention_layernorm.weight, s.eps)
        mlp = layer.mlp
        hidden = hidden + mlp.down_proj(nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
        return hidden, key, value


class KVProjection(nn.Module):
    """``(hidden, position_ids) -> (key_i, value_i, ...)`` for every layer ``i`` of a group, each
    computed from the *same* ``hidden`` (the group's layers are not run): CALM's state propagation,
    which gives the layers an early-exiting token skipped the keys and values of its exit's hidden
    state instead of the ones full depth would compute. Same layout as ``LayerGroup``'s outputs."""

    def __init__(self, layers: Sequence[nn.Module], shape: LlamaShape) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.shape = shape
        self.rotary = _Rotary(shape)

    def forward(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s = self.shape
        batch, length, _ = hidden.shape
        cos, sin = self.rotary(position_ids)
        out: list[torch.Tensor] = []
        for layer in self.layers:
            attn = layer.self_attn
            x = _norm(hidden, layer.input_layernorm.weight, s.eps)
            k = attn.k_proj(x).view(batch, length, s.kv_heads, s.head_dim).transpose(1, 2)
            k = k * cos + _rotate_half(k) * sin
            v = attn.v_proj(x).view(batch, length, s.kv_heads, s.head_dim)
            out += [k.permute(2, 0, 1, 3), v.permute(1, 0, 2, 3)]
        return tuple(out)


class Head(nn.Module):
    """``hidden (B, S, H) -> logits (B, S, V)``: the final norm and the LM head. Every exit ends in
    it too (an exit's adapter maps its layer's hidden state into the final layer's space), so the
    vocabulary projection, the largest matrix of a small model, is stored once."""

    def __init__(self, norm_weight: torch.Tensor, lm_head: nn.Linear, eps: float) -> None:
        super().__init__()
        self.norm_weight = norm_weight
        self.lm_head = lm_head
        self.eps = eps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(_norm(hidden, self.norm_weight, self.eps))


def split_llama(model: nn.Module, boundaries: Sequence[int]) -> tuple[Embedding, list[LayerGroup], Head, LlamaShape]:
    """A Hugging Face ``LlamaForCausalLM`` as its parts: layer groups ending after each of
    ``boundaries`` (layer counts, increasing, the last one the model's depth)."""
    shape = LlamaShape(model.config)
    edges = [0, *boundaries]
    if list(boundaries) != sorted(set(boundaries)) or not boundaries or boundaries[-1] != shape.layers or edges[1] <= 0:
        raise ModelError(
            f"boundaries {list(boundaries)} must increase from above 0 to the model's {shape.layers} layers "
            f"(e.g. {', '.join(str(round(shape.layers * k / 5)) for k in range(1, 6))})"
        )
    core = model.model
    groups = [LayerGroup(list(core.layers[a:b]), shape) for a, b in itertools.pairwise(edges)]
    head = Head(core.norm.weight, model.lm_head, shape.eps)
    return Embedding(core.embed_tokens), groups, head, shape
