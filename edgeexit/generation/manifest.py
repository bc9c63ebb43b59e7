"""The manifest of a decoder package: what a device needs to generate text from its graphs.

A decoder package is not a classifier package: no labels, no per-sample exits over a fixed
input, no offload tails. It has an embedding graph, layer-group segments that carry each layer's
KV cache in and the new entries out (layout in ``edgeexit.compile.decoders.llama``), one head
graph (final norm + vocabulary projection) that every exit shares, the tokenizer and the chat
template. Parsed field by field like the classifier manifest (``edgeexit.manifest``'s parser), so
a wrong field is a ``PackageError`` naming its JSON path before anything loads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from edgeexit.errors import PackageError
from edgeexit.manifest import TensorSpec, parse_json, to_plain

DECODER_FORMAT = "edgeexit-decoder"
DECODER_FORMAT_VERSION = 1


@dataclass(frozen=True)
class DecoderShape:
    """The transformer's dimensions: what the device sizes its KV buffers with."""

    #: width of the hidden state every graph passes on
    hidden: int
    #: decoder layers in all
    layers: int
    #: query heads per layer
    heads: int
    #: key/value heads per layer (grouped-query attention: ``heads`` is a multiple of it)
    kv_heads: int
    #: width of one head
    head_dim: int
    #: tokens the vocabulary projection scores
    vocab: int
    #: the longest prompt + continuation the package supports (the model's trained context)
    max_context: int


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of the package and its named inputs and outputs."""

    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    #: weights in the graph
    params: int = 0


@dataclass(frozen=True)
class DecoderSegment:
    """Layers ``[first_layer, stop_layer)`` as one graph: ``hidden, position_ids, attention_mask,
    past_key_i, past_value_i ... -> hidden, key_i, value_i ...`` for its layers ``i``."""

    index: int
    first_layer: int
    stop_layer: int
    graph: GraphSpec
    #: ``hidden, position_ids -> key_i, value_i ...`` from one hidden state for every layer of the
    #: group (CALM's state propagation for tokens that skipped it); None for the first group
    propagate: GraphSpec | None = None

    @property
    def layers(self) -> range:
        return range(self.first_layer, self.stop_layer)


@dataclass(frozen=True)
class Tokens:
    """The token ids generation needs beside the tokenizer."""

    #: generation stops at any of these (end of text, end of turn)
    stop: tuple[int, ...]
    #: fills the batch's shorter prompts on the left
    pad: int


@dataclass(frozen=True)
class WeightVariant:
    """The same graphs with weight-only quantized matrices (ONNX Runtime's MatMulNBits).

    ``files`` maps each fp32 graph file to its quantized counterpart; ``agreement`` records how it
    compares with fp32 on the export's prompts (token agreement of greedy continuations, logit
    differences)."""

    name: str
    bits: int
    block_size: int
    files: dict[str, str]
    agreement: dict[str, Any] = field(default_factory=dict)


#: How an exit can decide that a token may leave: the probability of its top token through the
#: head (CALM's softmax response: a vocabulary projection per attempt), a trained gate on its
#: adapter's output (CALM's hidden-state classifier: a dot product), or the cosine similarity of
#: the hidden state entering and leaving the layer group (MuE).
EXIT_CRITERIA = ("max_prob", "gate", "similarity")


@dataclass(frozen=True)
class DecoderExit:
    """An exit after layer group ``segment`` (``layer`` layers in): an adapter graph ``hidden ->
    hidden`` into the final layer's space, read through the shared head."""

    segment: int
    layer: int
    graph: GraphSpec
    #: the gate: ``sigmoid(gate_weights . rms_normalize(adapter output) + gate_bias)``
    gate_weights: tuple[float, ...]
    gate_bias: float
    #: a token may leave here when the criterion's score reaches this (per criterion; absent: never)
    thresholds: dict[str, float] = field(default_factory=dict)
    #: what training and the held-out tokens measured (top-1 agreement with the final layer, ...)
    record: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DraftHead:
    """A draft head (``edgeexit.compile.decoders.draft``): one attention layer with its own KV cache
    over the hidden state after segment ``segment`` (``layer`` layers in), and a vocabulary
    projection cut to ``vocab`` tokens: ``hidden, position_ids, attention_mask, past_key_0,
    past_value_0 -> token, probability, key_0, value_0``. What speculative decoding drafts with in
    place of an exit's adapter and the full head."""

    segment: int
    layer: int
    graph: GraphSpec
    #: tokens the cut projection scores (the draft can propose only these)
    vocab: int
    #: what training measured (held-out top-1 agreement with the final layer, vocabulary coverage, ...)
    record: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Speculation:
    """Self-speculative decoding's defaults: draft with the layers up to exit ``exit`` (an index
    into ``exits``), at most ``max_draft`` tokens per round, stopping a draft early when the exit's
    gate expects disagreement (``gate_below``) or its top token's probability falls below
    ``stop_below`` (Kangaroo's second early exit)."""

    exit: int
    max_draft: int = 4
    stop_below: float = 0.5
    #: draft with this weight variant's layers (e.g. ``int4``; None: the engine's own)
    draft_variant: str | None = None
    #: stop a draft before the head when the draft exit's gate scores below this (None: the
    #: exit's calibrated gate threshold; 0: never): a dot product instead of a vocabulary projection
    gate_below: float | None = None
    #: draft with this head instead of exit ``exit``'s adapter and the full head (None: the exit)
    draft_head: DraftHead | None = None


@dataclass(frozen=True)
class DecoderManifest:
    model_name: str
    package_id: str
    edgeexit_version: str
    opset: int
    architecture: str
    shape: DecoderShape
    tokens: Tokens
    embedding: GraphSpec
    segments: tuple[DecoderSegment, ...]
    head: GraphSpec
    files: dict[str, str]
    #: a ``tokenizers`` JSON file in the package (the device tokenizes with it; no transformers)
    tokenizer: str | None = None
    #: the model's Jinja chat template (applied on the device for ``--chat``), None: plain prompts only
    chat_template: str | None = None
    variants: tuple[WeightVariant, ...] = ()
    exits: tuple[DecoderExit, ...] = ()
    #: how the exits' thresholds were chosen (target agreement, guarantee, held-out outcome)
    exit_calibration: dict[str, Any] = field(default_factory=dict)
    speculation: Speculation | None = None
    #: parity with the framework the package was exported from (per graph and greedy continuations)
    reference: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    format: str = DECODER_FORMAT
    format_version: int = DECODER_FORMAT_VERSION

    def validate(self) -> None:
        s = self.shape
        if min(s.hidden, s.layers, s.heads, s.kv_heads, s.head_dim, s.vocab, s.max_context) <= 0:
            raise PackageError(f"shape: every dimension must be above 0, found {s}")
        if s.heads % s.kv_heads:
            raise PackageError(f"shape: {s.heads} heads are not a multiple of {s.kv_heads} KV heads")
        if not self.segments:
            raise PackageError("segments: expected at least one layer group")
        expected = 0
        for position, segment in enumerate(self.segments):
            if segment.index != position or segment.first_layer != expected or segment.stop_layer <= expected:
                raise PackageError(
                    f"segments[{position}]: layers [{segment.first_layer}, {segment.stop_layer}) with index "
                    f"{segment.index}; expected index {position} starting at layer {expected}"
                )
            expected = segment.stop_layer
        if expected != s.layers:
            raise PackageError(f"segments end at layer {expected}; expected them to cover all {s.layers} layers")
        graphs = [self.embedding.file, self.head.file, *(seg.graph.file for seg in self.segments)]
        graphs += [seg.propagate.file for seg in self.segments if seg.propagate is not None]
        head = self.speculation.draft_head if self.speculation is not None else None
        if head is not None:
            graphs.append(head.graph.file)
        for variant in self.variants:
            graphs += list(variant.files.values())
            unknown = sorted(set(variant.files) - set(graphs))
            if unknown:
                raise PackageError(f"variant {variant.name!r} replaces {unknown}, which are not graphs of the package")
        ends = {segment.index: segment.stop_layer for segment in self.segments[:-1]}
        for position, found in enumerate(self.exits):
            if ends.get(found.segment) != found.layer:
                raise PackageError(
                    f"exits[{position}]: after segment {found.segment} at layer {found.layer}; expected an exit "
                    f"where a layer group other than the last ends ({ends})"
                )
            if len(found.gate_weights) != s.hidden:
                raise PackageError(f"exits[{position}].gate_weights: {len(found.gate_weights)} weights for {s.hidden}")
            unknown = sorted(set(found.thresholds) - set(EXIT_CRITERIA))
            if unknown:
                raise PackageError(
                    f"exits[{position}].thresholds: unknown criteria {unknown}; expected {EXIT_CRITERIA}"
                )
            graphs.append(found.graph.file)
        if [e.segment for e in self.exits] != sorted({e.segment for e in self.exits}):
            raise PackageError("exits: expected at most one exit per segment, in order")
        spec = self.speculation
        if spec is not None and head is None and not 0 <= spec.exit < len(self.exits):
            raise PackageError(f"speculation.exit {spec.exit}: the package has {len(self.exits)} exits")
        if head is not None:
            if ends.get(head.segment) != head.layer:
                raise PackageError(
                    f"speculation.draft_head: after segment {head.segment} at layer {head.layer}; expected it where "
                    f"a layer group other than the last ends ({ends})"
                )
            if not 0 < head.vocab <= s.vocab:
                raise PackageError(f"speculation.draft_head.vocab {head.vocab}: expected 1 to {s.vocab} tokens")
        draft = self.speculation.draft_variant if self.speculation is not None else None
        if draft is not None and draft not in {v.name for v in self.variants}:
            raise PackageError(f"speculation.draft_variant {draft!r}: the package has no such weight variant")
        if self.tokenizer is not None:
            graphs.append(self.tokenizer)
        missing = sorted(set(graphs) - set(self.files))
        if missing:
            raise PackageError(f"files: no sha256 for {missing}; expected every file the manifest names to be hashed")
        for stop in self.tokens.stop:
            if not 0 <= stop < s.vocab:
                raise PackageError(f"tokens.stop: id {stop} is outside the vocabulary of {s.vocab}")

    def variant(self, name: str) -> WeightVariant:
        for found in self.variants:
            if found.name == name:
                return found
        known = ", ".join(["fp32", *(v.name for v in self.variants)])
        raise PackageError(f"the package has no weight variant {name!r}; it has: {known}")

    def to_json(self) -> str:
        return json.dumps(to_plain(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str = "manifest.json") -> DecoderManifest:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise PackageError(f"{source} is not valid JSON ({err}); expected an edgeexit decoder manifest") from None
        if not isinstance(raw, dict) or raw.get("format") != DECODER_FORMAT:
            found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise PackageError(f"{source}: 'format' is {found!r}; expected {DECODER_FORMAT!r}")
        if raw.get("format_version") != DECODER_FORMAT_VERSION:
            raise PackageError(
                f"{source}: format_version {raw.get('format_version')!r} is not supported (this edgeexit reads "
                f"{DECODER_FORMAT_VERSION}); re-export the package with a matching edgeexit"
            )
        try:
            manifest: DecoderManifest = parse_json(cls, raw)
            manifest.validate()
        except PackageError as err:
            raise PackageError(f"{source}: {err}") from None
        return manifest


def is_decoder_manifest(raw_text: str) -> bool:
    """Whether a manifest file's text is a decoder package's (cheap: the format field only)."""
    try:
        raw = json.loads(raw_text)
    except json.JSONDecodeError:
        return False
    return isinstance(raw, dict) and raw.get("format") == DECODER_FORMAT
