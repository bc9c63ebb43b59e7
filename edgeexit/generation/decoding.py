"""The three ways a token is decoded: full depth, early exit, and self-speculation.

**Early exit** (CALM): after each layer group with an exit, the exit's adapter maps the token's
hidden state into the final layer's space and a criterion scores it (``max_prob``: the top
probability through the head; ``gate``: the trained gate on the adapter's output, no vocabulary
projection; ``similarity``: MuE's cosine between the hidden state entering and leaving the
group). At the first score that reaches its threshold the token leaves, read through the head.

The layers it skipped still need its keys and values for later tokens. They are computed lazily
(as EE-LLM and FREE do): each layer group keeps the hidden states of the positions it has not seen
(``pending``), and the next token that goes deeper takes them along in one pass over several
positions, which costs a memory-bound CPU little more than one. So every cache entry is exactly
what full depth computes from the hidden states the token really had; a skipped token's entries
arrive late, not approximated. CALM's alternative (``skipped="propagate"``) projects the exit's
hidden state to the skipped layers' keys and values at once (``graphs/propagate_K.onnx``):
cheaper when many tokens leave early, approximate (on SmolLM2 its text agreed with full depth's
less: docs/benchmarks.md).

**Speculative** (Kangaroo, LayerSkip, greedy): the layers up to the draft exit, its adapter and
the head propose tokens one by one, stopping when the draft's top probability falls below
``stop_below`` or at ``max_draft``; the remaining layers then run once over the drafted positions
(their shallow layers' cache entries were computed by the draft and are the full model's own) and
the head gives the model's greedy token at each. The longest agreeing prefix is kept, plus the
model's token where it first disagrees (or after the last draft); the cache is cut back to what
was kept. Every kept token is the full model's greedy choice: the output is full depth's.

A package with a draft head (``edgeexit train-draft``) drafts with it instead of the exit's adapter
and the full head: one attention layer over the exit's hidden states (its own one-layer cache,
filled from the prompt at prefill and kept in step with the kept positions) and a vocabulary cut
to the tokens the model writes. Kangaroo's adapter is such a layer: a per-token adapter after 6 of
SmolLM2's 30 layers agreed with the final layer too rarely for drafting to pay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeexit.errors import PackageError, UsageError
from edgeexit.generation.manifest import EXIT_CRITERIA, DecoderManifest, DraftHead, Speculation
from edgeexit.generation.sampling import Sampler

if TYPE_CHECKING:
    from edgeexit.generation.cache import KVCache
    from edgeexit.generation.engine import DecoderEngine

#: What ``--mode early-exit`` decides with when not told: the gate costs a dot product per exit,
#: max_prob a vocabulary projection (on SmolLM2 the head is as large as 8 of its 30 layers).
DEFAULT_CRITERION = "gate"
#: How the layers a token skipped get its keys and values: computed later from the token's real
#: hidden state (exact), or projected from the exit's hidden state at once (CALM's propagation).
SKIPPED_KV = ("recompute", "propagate")
#: The epsilon of the RMS normalisation a gate's input gets, here and where gates are trained.
GATE_EPS = 1e-5


@dataclass
class Run:
    """One generation's progress: tokens, the layers each ran, why it stopped, what it cost."""

    sampler: Sampler
    stops: frozenset[int]
    budget: int
    #: the prompt's token ids (what a separate draft cache is filled from)
    prompt: tuple[int, ...] = ()
    tokens: list[int] = field(default_factory=list)
    layers: list[float] = field(default_factory=list)
    finish: str = "length"
    counters: dict[str, float] = field(default_factory=dict)
    #: the prompt's hidden states where the draft head reads them (a strategy's prefill keeps them)
    exit_states: np.ndarray | None = None

    def emit(self, token: int, layers: float) -> bool:
        """Take ``token`` (decoded with ``layers`` layers); False when generation is over (a stop
        token, which is not kept, or the budget reached)."""
        if token in self.stops:
            self.finish = "stop"
            return False
        self.tokens.append(token)
        self.layers.append(layers)
        return len(self.tokens) < self.budget

    def count(self, name: str, value: float = 1.0) -> None:
        self.counters[name] = self.counters.get(name, 0.0) + value

    def details(self) -> dict[str, float]:
        return dict(self.counters)


def full_depth(engine: DecoderEngine, cache: KVCache, first: int, run: Run) -> None:
    token = first
    depth = float(engine.manifest.shape.layers)
    while run.emit(token, depth):
        logits = engine.forward(np.asarray([[token]], dtype=np.int64), cache)
        token = run.sampler.pick(logits[0, -1])


def _gate_score(adapted: np.ndarray, gate: tuple[np.ndarray, float]) -> float:
    """An exit gate's probability that the final layer agrees, from the adapter's output (one token)."""
    x = adapted.reshape(-1)
    normed = x / np.sqrt(np.mean(x * x) + GATE_EPS)
    return float(1.0 / (1.0 + np.exp(-(normed @ gate[0] + gate[1]))))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(-1).astype(np.float64)
    b = b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def _max_prob(logits: np.ndarray) -> float:
    shifted = logits.reshape(-1).astype(np.float64)
    shifted = shifted - shifted.max()
    return float(1.0 / np.exp(shifted).sum())


@dataclass(frozen=True)
class EarlyExit:
    """Per-token early exit with ``criterion`` at ``thresholds`` (exit index -> threshold)."""

    criterion: str
    thresholds: dict[int, float]
    skipped: str = "recompute"
    lookahead: int = 0

    @classmethod
    def from_manifest(cls, manifest: DecoderManifest, criterion: str, skipped: str = "recompute") -> EarlyExit:
        if criterion not in EXIT_CRITERIA:
            raise UsageError(f"unknown exit criterion {criterion!r}; expected one of {', '.join(EXIT_CRITERIA)}")
        if skipped not in SKIPPED_KV:
            raise UsageError(f"skipped {skipped!r}: expected one of {', '.join(SKIPPED_KV)}")
        if skipped == "propagate" and any(s.propagate is None for s in manifest.segments[1:]):
            raise UsageError("this package has no KV projection graphs for state propagation; re-export it")
        thresholds = {i: e.thresholds[criterion] for i, e in enumerate(manifest.exits) if criterion in e.thresholds}
        return cls(criterion, thresholds, skipped)

    def decode(self, engine: DecoderEngine, cache: KVCache, first: int, run: Run) -> None:
        manifest = engine.manifest
        exit_at = {e.segment: i for i, e in enumerate(manifest.exits)}
        gates = engine.gates
        last = len(engine.segments) - 1
        pending: list[np.ndarray | None] = [None] * len(engine.segments)
        token = first
        depth = float(manifest.shape.layers)
        layers = depth
        while run.emit(token, layers):
            block = engine.embed(np.asarray([[token]], dtype=np.int64))
            logits = None
            for index in range(last + 1):
                waiting = pending[index]
                if waiting is not None:  # positions an earlier token skipped: computed now, together
                    block = np.concatenate([waiting, block], axis=1)
                    pending[index] = None
                    run.count("recomputed_positions", waiting.shape[1])
                entering = block[:, -1:]
                block = engine.segment(index, block, cache)
                chosen = exit_at.get(index)
                if index == last or chosen is None or chosen not in self.thresholds:
                    continue
                leaving = block[:, -1:]
                adapted = engine.adapt(chosen, leaving)
                if self.criterion == "max_prob":
                    logits = engine.logits(adapted)
                    score = _max_prob(logits)
                elif self.criterion == "gate":
                    score = _gate_score(adapted, gates[chosen])
                else:
                    score = _cosine(entering, leaving)
                if score >= self.thresholds[chosen]:
                    if self.skipped == "propagate":  # CALM: the exit's hidden state stands in for the skipped layers'
                        for skipped in range(index + 1, last + 1):
                            engine.propagate(skipped, leaving, cache)
                    else:  # the next token that goes deeper computes them
                        later = pending[index + 1]
                        pending[index + 1] = block if later is None else np.concatenate([later, block], axis=1)
                    if logits is None:
                        logits = engine.logits(adapted)
                    layers = float(manifest.exits[chosen].layer)
                    run.count(f"exit_{manifest.exits[chosen].layer}")
                    break
                logits = None
            else:
                logits = engine.logits(block[:, -1:])
                layers = depth
                run.count("full_depth")
            token = run.sampler.pick(logits.reshape(-1))


def _accepted(drafts: list[int], verdict: np.ndarray, run: Run) -> int:
    """How many drafts, from the first, are the model's own greedy tokens (``verdict[i]`` is its
    token after the i-th verified position); counted into ``run``."""
    accepted = 0
    while accepted < len(drafts) and drafts[accepted] == int(verdict[accepted]):
        accepted += 1
    run.count("rounds")
    run.count("drafted", len(drafts))
    run.count("accepted", accepted)
    return accepted


@dataclass(frozen=True)
class Speculative:
    """Greedy self-speculation drafting with exit ``exit`` (its layer groups + adapter + head).

    ``drafter``: None drafts with the engine's own layers, whose cache entries verification then
    reuses (the deep groups alone run over the drafted positions). An engine of a weight-only
    variant (int4) drafts with its quantized copies of the same layers and its own small cache,
    several times cheaper per drafted token, and verification runs every layer at full precision
    over the drafted positions: the output is still the full-precision model's greedy text."""

    exit: int
    max_draft: int
    stop_below: float
    drafter: Any = None
    #: the draft exit's gate (weights, bias) and the score below which a draft stops before the head
    gate: tuple[np.ndarray, float] | None = None
    gate_below: float = 0.0
    #: draft with the package's draft head (its layer groups + one attention layer + the cut
    #: vocabulary) instead of the exit's adapter and the full head
    head: DraftHead | None = None

    @property
    def lookahead(self) -> int:
        return self.max_draft + 1

    @classmethod
    def from_manifest(cls, manifest: DecoderManifest, max_draft: int | None, stop_below: float | None,
                      drafter: Any = None, gate_below: float | None = None,
                      gates: Any = None) -> Speculative:  # fmt: skip
        spec = manifest.speculation or Speculation(exit=0)
        drafts = spec.max_draft if max_draft is None else max_draft
        below = spec.stop_below if stop_below is None else stop_below
        if drafts < 1:
            raise UsageError(f"max_draft is {drafts}; expected at least 1 drafted token per round")
        if not 0 <= below < 1:
            raise UsageError(f"stop_below is {below}; expected a probability in [0, 1)")
        if spec.draft_head is not None:  # no adapter, so no gate: the head's probability stops a draft
            return cls(spec.exit, drafts, below, drafter, None, 0.0, spec.draft_head)
        gate_below = spec.gate_below if gate_below is None else gate_below
        if gate_below is None:  # the draft exit's own calibrated gate threshold
            gate_below = manifest.exits[spec.exit].thresholds.get("gate", 0.0)
        if gates is None:
            found = manifest.exits[spec.exit]
            gates = {spec.exit: (np.asarray(found.gate_weights, dtype=np.float32), found.gate_bias)}
        gate = gates[spec.exit] if gate_below > 0 else None
        return cls(spec.exit, drafts, below, drafter, gate, gate_below)

    def prefill(self, engine: DecoderEngine, ids: np.ndarray, cache: KVCache, run: Run) -> np.ndarray:
        """Full depth over the prompt (as ``engine.forward``), keeping the states the draft head
        reads when it drafts with the engine's own layers: its cache is filled from them."""
        if self.head is None or self.drafter is not None:
            return engine.forward(ids, cache)
        hidden = engine.embed(ids)
        for index in range(len(engine.segments)):
            hidden = engine.segment(index, hidden, cache)
            if index == self.head.segment:
                run.exit_states = hidden
        return engine.logits(hidden[:, -1:])

    def decode(self, engine: DecoderEngine, cache: KVCache, first: int, run: Run) -> None:
        try:
            self._decode(engine, cache, first, run)
        finally:
            drafted, rounds = run.counters.get("drafted", 0.0), run.counters.get("rounds", 0.0)
            accepted = run.counters.get("accepted", 0.0)
            run.counters["acceptance_rate"] = accepted / drafted if drafted else 0.0
            run.counters["mean_accepted"] = (accepted + rounds) / rounds if rounds else 0.0

    def _decode(self, engine: DecoderEngine, cache: KVCache, first: int, run: Run) -> None:
        if self.drafter is not None:
            self._decode_apart(engine, cache, first, run)
            return
        proposer: _HeadProposer | _ExitProposer
        if self.head is not None:
            proposer = _HeadProposer(engine, cache.capacity, run)
            last = self.head.segment
        else:
            proposer = _ExitProposer(engine, self)
            last = engine.manifest.exits[self.exit].segment
        shallow, deep = range(last + 1), range(last + 1, len(engine.segments))
        depth = float(engine.manifest.shape.layers)
        token = first
        if not run.emit(token, depth):
            return
        while True:
            start = cache.lengths[0]  # the position of ``token``: no layer has seen it yet
            limit = min(self.max_draft, cache.capacity - start - 1, run.budget - len(run.tokens))
            drafts: list[int] = []
            entering: list[np.ndarray] = []
            current = token
            while True:
                hidden = engine.embed(np.asarray([[current]], dtype=np.int64))
                for index in shallow:
                    hidden = engine.segment(index, hidden, cache)
                entering.append(hidden)
                proposed = proposer.propose(hidden, drafting=len(drafts) < limit)
                if proposed is None:
                    break
                proposal, probability = proposed
                if probability < self.stop_below or proposal in run.stops:
                    break
                drafts.append(proposal)
                current = proposal
            block = np.concatenate(entering, axis=1)
            for index in deep:
                block = engine.segment(index, block, cache)
            verdict = np.argmax(engine.logits(block)[0], axis=-1)  # the model's greedy token after each position
            accepted = _accepted(drafts, verdict, run)
            cache.truncate(start + accepted + 1)  # keep ``token`` and the accepted drafts
            proposer.keep(start, accepted, entering)
            kept = [*drafts[:accepted], int(verdict[accepted])]
            for produced in kept:  # every kept token went through every layer (drafted or verified)
                if not run.emit(produced, depth):
                    return
            token = kept[-1]

    def _decode_apart(self, engine: DecoderEngine, cache: KVCache, first: int, run: Run) -> None:
        """Drafting with ``drafter`` (its own cache of the shallow groups), verifying with every
        layer of ``engine``."""
        drafter = self.drafter
        head = drafter.draft_head if self.head is not None else None
        last = self.head.segment if self.head is not None else engine.manifest.exits[self.exit].segment
        shallow = range(last + 1)
        depth = float(engine.manifest.shape.layers)
        drafts_cache = drafter.new_cache(cache.capacity)
        head_cache = head.new_cache(engine.manifest.shape, cache.capacity) if head is not None else None
        sequence = list(run.prompt)
        token = first
        if not run.emit(token, depth):
            return
        sequence.append(token)
        while True:
            start = len(sequence) - 1  # the position of ``token``, which no layer has seen yet
            limit = min(self.max_draft, cache.capacity - start - 1, run.budget - len(run.tokens))
            drafts: list[int] = []
            block = sequence[drafts_cache.lengths[0] :]  # what the draft's cache lacks, ``token`` last
            while len(drafts) < limit:
                hidden = drafter.embed(np.asarray([block], dtype=np.int64))
                for index in shallow:
                    hidden = drafter.segment(index, hidden, drafts_cache)
                if head is not None:  # the head's cache takes the same positions as the shallow groups'
                    proposals, probabilities = head.run(hidden, head_cache)
                    proposal, probability = int(proposals[0, -1]), float(probabilities[0, -1])
                else:
                    adapted = drafter.adapt(self.exit, hidden[:, -1:])
                    if self.gate is not None and _gate_score(adapted, self.gate) < self.gate_below:
                        break
                    logits = drafter.logits(adapted)
                    proposal, probability = int(np.argmax(logits.reshape(-1))), _max_prob(logits)
                if probability < self.stop_below or proposal in run.stops:
                    break
                drafts.append(proposal)
                block = [proposal]
            verdict = np.argmax(engine.forward(np.asarray([[token, *drafts]], dtype=np.int64), cache,
                                               every_position=True)[0], axis=-1)  # fmt: skip
            accepted = _accepted(drafts, verdict, run)
            cache.truncate(start + accepted + 1)
            drafts_cache.truncate(start + accepted + 1)
            if head_cache is not None:
                head_cache.truncate(start + accepted + 1)
            kept = [*drafts[:accepted], int(verdict[accepted])]
            for produced in kept:
                if not run.emit(produced, depth):
                    return
                sequence.append(produced)
            token = kept[-1]


class _ExitProposer:
    """Drafts through the draft exit's adapter and the full head, stopped before the head when the
    exit's gate expects the full model to disagree."""

    def __init__(self, engine: DecoderEngine, spec: Speculative) -> None:
        self.engine = engine
        self.spec = spec

    def propose(self, hidden: np.ndarray, *, drafting: bool) -> tuple[int, float] | None:
        if not drafting:
            return None
        adapted = self.engine.adapt(self.spec.exit, hidden)
        if self.spec.gate is not None and _gate_score(adapted, self.spec.gate) < self.spec.gate_below:
            return None  # no head, no draft
        logits = self.engine.logits(adapted)
        return int(np.argmax(logits.reshape(-1))), _max_prob(logits)

    def keep(self, start: int, accepted: int, entering: list[np.ndarray]) -> None:
        """Nothing to cut back: the adapter keeps no state."""


class _HeadProposer:
    """Drafts through the draft head, which keeps a one-layer cache of its own, filled from the
    shallow states of every position: the prompt's from prefill, and a position whose state arrived
    when no draft was wanted (``waiting``) on the head's next call."""

    def __init__(self, engine: DecoderEngine, capacity: int, run: Run) -> None:
        head = engine.draft_head
        if head is None:
            raise PackageError("the package's speculation names a draft head the engine did not load")
        self.head = head
        self.cache = head.new_cache(engine.manifest.shape, capacity)
        self.waiting = [run.exit_states] if run.exit_states is not None else []
        run.exit_states = None

    def propose(self, hidden: np.ndarray, *, drafting: bool) -> tuple[int, float] | None:
        self.waiting.append(hidden)
        if not drafting:
            return None
        proposals, probabilities = self.head.run(np.concatenate(self.waiting, axis=1), self.cache)
        self.waiting = []
        return int(proposals[0, -1]), float(probabilities[0, -1])

    def keep(self, start: int, accepted: int, entering: list[np.ndarray]) -> None:
        """Cut the head's cache back to the kept positions; ``waiting`` then starts where it ends
        (if the head did not run this round, it already did, and loses the rejected positions)."""
        self.cache.truncate(start + accepted + 1)
        seen = self.cache.lengths[0]
        if seen >= start:
            self.waiting = entering[seen - start : accepted + 1]
        else:
            self.waiting = self.waiting[: start + accepted + 1 - seen]
