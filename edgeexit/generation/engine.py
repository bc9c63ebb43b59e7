"""Text generation on the device from a decoder package: ONNX Runtime and ``tokenizers``, no torch.

``DecoderEngine.generate`` tokenizes the prompt (the chat template applied with ``chat=True``),
runs it through the embedding, every layer-group segment and the head in one prefill pass, then
one token at a time: each segment reads its past from the preallocated cache and writes the new
token's keys and values into it in place (``edgeexit.generation.cache``). Greedy by default;
``temperature`` > 0 samples, seeded.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeexit.errors import InputError, PackageError, UsageError
from edgeexit.generation.cache import KVCache
from edgeexit.generation.decoding import DEFAULT_CRITERION, EarlyExit, Run, Speculative, full_depth
from edgeexit.generation.manifest import DecoderManifest, DecoderSegment, DecoderShape, DraftHead
from edgeexit.generation.package import DecoderPackage, open_decoder_package
from edgeexit.generation.sampling import Sampler
from edgeexit.generation.tokenizer import PromptCodec
from edgeexit.signing import TrustedKeys

MODES: tuple[str, ...] = ("full", "early-exit", "speculative")


@dataclass(frozen=True)
class Generation:
    """One prompt's continuation and what it cost."""

    text: str
    #: the generated token ids (the prompt's not included; a stop token that ended it not included)
    tokens: tuple[int, ...]
    prompt_tokens: int
    #: generated tokens per second of the whole call (tokenizing and the prompt's pass included)
    tokens_per_s: float
    #: decoder layers run per generated token (the model's depth at full depth)
    mean_layers: float
    mode: str
    #: "stop" (a stop token), "length" (max_new_tokens reached)
    finish: str
    prefill_ms: float
    total_ms: float
    #: what the mode measured: exits taken, recomputed positions, acceptance of drafts, ...
    details: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "text": self.text,
            "tokens": list(self.tokens),
            "tokens_per_s": self.tokens_per_s,
            "mean_layers": self.mean_layers,
            "mode": self.mode,
            "prompt_tokens": self.prompt_tokens,
            "finish": self.finish,
            "prefill_ms": self.prefill_ms,
            "total_ms": self.total_ms,
            **self.details,
        }


class _GroupRunner:
    """A session over one layer group's cache: its inputs and outputs bound by pointer (no copies)."""

    def __init__(self, session: object, spec: DecoderSegment) -> None:
        self.session = session
        self.spec = spec
        self.layers = list(spec.layers)
        self.binding = session.io_binding()  # type: ignore[attr-defined]

    def _bind(self, hidden: np.ndarray, positions: np.ndarray, cache: KVCache) -> tuple[Any, int, int]:
        """Bind the inputs both graphs take and the new entries' slots; the binding, past and new lengths."""
        past = cache.lengths[self.spec.index]
        new = hidden.shape[1]
        cache.room(self.spec.index, new)
        b = self.binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        b.bind_cpu_input("hidden", hidden)
        b.bind_cpu_input("position_ids", positions)
        offset = past * cache.position_bytes
        shape = (new, *cache.entry_shape)
        for layer in self.layers:
            for kind, buffers in (("key", cache.keys), ("value", cache.values)):
                b.bind_output(f"{kind}_{layer}", "cpu", 0, np.float32, shape, buffers[layer].ctypes.data + offset)
        return b, past, new


class _SegmentRunner(_GroupRunner):
    """A layer group: reads its past from the cache in place, writes its new entries into it."""

    def run(self, hidden: np.ndarray, positions: np.ndarray, mask: np.ndarray, cache: KVCache) -> np.ndarray:
        b, past, new = self._bind(hidden, positions, cache)
        b.bind_cpu_input("attention_mask", mask)
        out = np.empty_like(hidden)
        b.bind_output("hidden_out", "cpu", 0, np.float32, out.shape, out.ctypes.data)
        past_shape = (past, *cache.entry_shape)
        for layer in self.layers:
            for kind, buffers in (("key", cache.keys), ("value", cache.values)):
                b.bind_input(f"past_{kind}_{layer}", "cpu", 0, np.float32, past_shape, buffers[layer].ctypes.data)
        self.session.run_with_iobinding(b)  # type: ignore[attr-defined]
        cache.lengths[self.spec.index] = past + new
        return out


class _PropagationRunner(_GroupRunner):
    """A group's KV projection (CALM's state propagation): the new entries from one hidden state."""

    def run(self, hidden: np.ndarray, positions: np.ndarray, cache: KVCache) -> None:
        b, past, new = self._bind(hidden, positions, cache)
        self.session.run_with_iobinding(b)  # type: ignore[attr-defined]
        cache.lengths[self.spec.index] = past + new


class _DraftHeadRunner(_GroupRunner):
    """The draft head (``DraftHead``): one layer over its own one-layer cache, and the draft's top
    token and its probability at every new position."""

    def __init__(self, session: object, spec: DraftHead) -> None:
        super().__init__(session, DecoderSegment(index=0, first_layer=0, stop_layer=1, graph=spec.graph))
        self.head = spec

    def new_cache(self, shape: DecoderShape, capacity: int) -> KVCache:
        return KVCache(dataclasses.replace(shape, layers=1), [range(1)], batch=1, capacity=capacity)

    def run(self, hidden: np.ndarray, cache: KVCache) -> tuple[np.ndarray, np.ndarray]:
        """``hidden`` ``(1, S, H)``, the exit's states at the positions after those ``cache`` holds:
        the draft's token ids and probabilities there ``(1, S)``; the cache gains the S positions."""
        start = cache.lengths[0]
        length = hidden.shape[1]
        positions = np.arange(start, start + length, dtype=np.int64)[None]
        b, past, new = self._bind(hidden, positions, cache)
        b.bind_cpu_input("attention_mask", np.ones((1, start + length), dtype=np.int64))
        past_shape = (past, *cache.entry_shape)
        for kind, buffers in (("key", cache.keys), ("value", cache.values)):
            b.bind_input(f"past_{kind}_0", "cpu", 0, np.float32, past_shape, buffers[0].ctypes.data)
        tokens = np.empty((1, length), dtype=np.int64)
        probabilities = np.empty((1, length), dtype=np.float32)
        b.bind_output("token", "cpu", 0, np.int64, tokens.shape, tokens.ctypes.data)
        b.bind_output("probability", "cpu", 0, np.float32, probabilities.shape, probabilities.ctypes.data)
        self.session.run_with_iobinding(b)  # type: ignore[attr-defined]
        cache.lengths[0] = past + new
        return tokens, probabilities


class DecoderEngine:
    """A decoder package loaded for generation: sessions, tokenizer, a cache sized per call.

    ``variant``: ``fp32`` or a weight-only variant the package holds (``int8``, ``int4``);
    ``threads``: ONNX Runtime intra-op threads (one by default, as for every edgeexit engine)."""

    def __init__(self, package: str | Path | DecoderPackage, *, variant: str = "fp32", threads: int = 1,
                 cache_dir: Path | None = None, trusted_keys: TrustedKeys | None = None) -> None:  # fmt: skip
        from edgeexit.runtime.sessions import load_session

        self.package = (
            package if isinstance(package, DecoderPackage) else open_decoder_package(package, trusted_keys=trusted_keys)
        )
        manifest = self.package.manifest
        self.manifest: DecoderManifest = manifest
        self.variant = variant
        self.threads = threads
        self.cache_dir = cache_dir
        self._drafters: dict[str, DecoderEngine] = {}
        files = {} if variant == "fp32" else manifest.variant(variant).files

        def load(file: str) -> object:
            chosen = files.get(file, file)
            return load_session(self.package.path(chosen), threads, cache_dir=cache_dir,
                                sha256=manifest.files.get(chosen), spin=False)  # fmt: skip

        self.embedding = load(manifest.embedding.file)
        self.segments = [_SegmentRunner(load(s.graph.file), s) for s in manifest.segments]
        self.head = load(manifest.head.file)
        self.exit_sessions = [load(e.graph.file) for e in manifest.exits]
        #: each exit's gate as arrays, converted once (the manifest holds it as JSON numbers)
        self.gates = [(np.asarray(e.gate_weights, dtype=np.float32), e.gate_bias) for e in manifest.exits]
        self.propagators = [
            None if s.propagate is None or not manifest.exits else _PropagationRunner(load(s.propagate.file), s)
            for s in manifest.segments
        ]
        speculation = manifest.speculation
        head = speculation.draft_head if speculation is not None else None
        self.draft_head = None if head is None else _DraftHeadRunner(load(head.graph.file), head)
        self.codec = PromptCodec.from_package(self.package)

    # ---------------------------------------------------------------- generation

    def generate(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int = 64,
        *,
        mode: str = "full",
        chat: bool = False,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[int] | None = None,
        criterion: str | None = None,
        skipped: str = "recompute",
        max_draft: int | None = None,
        stop_below: float | None = None,
        draft_variant: str | None = None,
        gate_below: float | None = None,
    ) -> Generation:
        """Continue ``prompt`` (text, or token ids as the package's tokenizer gives them) by up to
        ``max_new_tokens`` tokens, stopping early at a stop token (the package's by default).

        ``mode``: ``full`` (every layer for every token), ``early-exit`` (a token leaves at the
        first exit whose ``criterion`` score reaches its calibrated threshold; the package's
        default criterion: ``gate``; the layers a token skipped get its keys and values by
        ``skipped``: ``recompute``, exactly, when the next deeper token runs them, or ``propagate``,
        CALM's copy of the exit's hidden state), or ``speculative`` (the layers up to the draft
        exit propose up to ``max_draft`` tokens, a draft stopping early when its exit's gate scores
        below ``gate_below`` or its top probability falls below ``stop_below``, and one pass of the
        remaining layers keeps those the model agrees with: the same greedy text as ``full``;
        ``draft_variant``, e.g. ``int4``: draft with that weight variant's layers instead, and
        verify with all of this engine's; ``own``: this engine's). Unset, these come from the
        package."""
        strategy = self._strategy(mode, criterion, max_draft, stop_below, temperature, draft_variant, skipped,
                                  gate_below)  # fmt: skip
        started = time.perf_counter()  # after loading a draft variant's sessions (once per engine)
        if max_new_tokens < 1:
            raise UsageError(f"max_new_tokens is {max_new_tokens}; expected at least 1")
        ids = self.codec.encode(prompt, chat=chat) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise InputError("the prompt is empty; expected text (or token ids) to continue")
        context = self.manifest.shape.max_context
        if len(ids) >= context:
            raise InputError(
                f"the prompt is {len(ids)} tokens; the model's context is {context}: shorten it to leave room for "
                "the continuation"
            )
        budget = min(max_new_tokens, context - len(ids))
        sampler = Sampler(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        stops = frozenset(self.manifest.tokens.stop if stop is None else stop)
        cache = self.new_cache(min(context, len(ids) + budget + (strategy.lookahead if strategy else 0)))
        run = Run(sampler=sampler, stops=stops, budget=budget, prompt=tuple(ids))
        prompt_ids = np.asarray([ids], dtype=np.int64)
        prefill = getattr(strategy, "prefill", None)
        logits = self.forward(prompt_ids, cache) if prefill is None else prefill(self, prompt_ids, cache, run)
        prefill_ms = (time.perf_counter() - started) * 1e3
        first = sampler.pick(logits[0, -1])
        if strategy is None:
            full_depth(self, cache, first, run)
        else:
            strategy.decode(self, cache, first, run)
        total = time.perf_counter() - started
        return Generation(
            text=self.codec.decode(run.tokens),
            tokens=tuple(run.tokens),
            prompt_tokens=len(ids),
            tokens_per_s=len(run.tokens) / total if total > 0 else 0.0,
            mean_layers=float(np.mean(run.layers)) if run.layers else float(self.manifest.shape.layers),
            mode=mode,
            finish=run.finish,
            prefill_ms=prefill_ms,
            total_ms=total * 1e3,
            details=run.details(),
        )

    def _strategy(self, mode: str, criterion: str | None, max_draft: int | None, stop_below: float | None,
                  temperature: float, draft_variant: str | None, skipped: str,
                  gate_below: float | None = None) -> Any:  # fmt: skip
        if mode not in MODES:
            raise UsageError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        if mode == "full":
            return None
        manifest = self.manifest
        drafts_with_head = mode == "speculative" and self.draft_head is not None
        if not manifest.exits and not drafts_with_head:
            raise UsageError(
                f"mode {mode!r} needs exit adapters, and this package has none: train them with "
                "`edgeexit train-exits`, or generate with --mode full"
            )
        if mode == "early-exit":
            return EarlyExit.from_manifest(manifest, criterion or DEFAULT_CRITERION, skipped)
        if temperature > 0:
            raise UsageError("speculative mode decodes greedily (its output is full depth's); drop --temperature")
        if draft_variant is None and manifest.speculation is not None:
            draft_variant = manifest.speculation.draft_variant
        drafter = None if draft_variant in (None, "own", self.variant) else self._drafter(draft_variant)
        return Speculative.from_manifest(manifest, max_draft, stop_below, drafter, gate_below, self.gates)

    def _drafter(self, variant: str) -> DecoderEngine:
        """An engine of weight variant ``variant`` to draft with, loaded once and kept."""
        found = self._drafters.get(variant)
        if found is None:
            self.manifest.variant(variant)  # refuses a variant the package does not have
            found = DecoderEngine(self.package, variant=variant, threads=self.threads, cache_dir=self.cache_dir)
            self._drafters[variant] = found
        return found

    # ---------------------------------------------------------------- the steps every mode is made of

    def new_cache(self, capacity: int) -> KVCache:
        return KVCache(self.manifest.shape, [s.layers for s in self.manifest.segments], batch=1, capacity=capacity)

    def embed(self, ids: np.ndarray) -> np.ndarray:
        (hidden,) = self.embedding.run(None, {"input_ids": ids})  # type: ignore[attr-defined]
        return hidden  # type: ignore[no-any-return]

    def segment(self, index: int, hidden: np.ndarray, cache: KVCache) -> np.ndarray:
        """Layer group ``index`` over ``hidden`` ``(B, S, H)``, the positions after those its cache holds."""
        start = cache.lengths[index]
        batch, length = hidden.shape[:2]
        positions = np.broadcast_to(np.arange(start, start + length, dtype=np.int64), (batch, length)).copy()
        mask = np.ones((batch, start + length), dtype=np.int64)
        return self.segments[index].run(hidden, positions, mask, cache)

    def propagate(self, index: int, hidden: np.ndarray, cache: KVCache) -> None:
        """Fill layer group ``index``'s cache at its next positions from ``hidden`` alone (its layers
        not run): the keys and values a token that skipped the group gets under state propagation."""
        runner = self.propagators[index]
        if runner is None:
            raise PackageError(f"layer group {index} has no KV projection graph; re-export the package")
        start = cache.lengths[index]
        batch, length = hidden.shape[:2]
        positions = np.broadcast_to(np.arange(start, start + length, dtype=np.int64), (batch, length)).copy()
        runner.run(hidden, positions, cache)

    def adapt(self, exit_index: int, hidden: np.ndarray) -> np.ndarray:
        """Exit ``exit_index``'s adapter: ``hidden`` into the final layer's space."""
        (adapted,) = self.exit_sessions[exit_index].run(None, {"hidden": hidden})  # type: ignore[attr-defined]
        return adapted  # type: ignore[no-any-return]

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        """The head (final norm + vocabulary projection) at every position of ``hidden``."""
        (logits,) = self.head.run(None, {"hidden": np.ascontiguousarray(hidden)})  # type: ignore[attr-defined]
        return logits  # type: ignore[no-any-return]

    def forward(self, ids: np.ndarray, cache: KVCache, *, every_position: bool = False) -> np.ndarray:
        """``ids`` ``(B, S)`` after what ``cache`` holds, through every layer: the head's logits at
        the last position ``(B, 1, V)`` (``every_position``: at all S, ``(B, S, V)``); the cache
        gains the S positions."""
        start = cache.lengths[0]
        if any(n != start for n in cache.lengths):
            raise PackageError(f"the cache's segments hold {cache.lengths} positions; full depth needs them equal")
        hidden = self.embed(ids)
        for index in range(len(self.segments)):
            hidden = self.segment(index, hidden, cache)
        return self.logits(hidden if every_position else hidden[:, -1:])
