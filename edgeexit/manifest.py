"""The package manifest: everything a runtime needs to know, as versioned, validated JSON.

The manifest is the contract between the workstation (which writes it) and the device and
server (which only read it), so it is plain frozen dataclasses parsed field by field: a wrong
type or a missing field is a ``PackageError`` naming the JSON path, never a ``KeyError`` deep in
the runtime. numpy-free on purpose: the server and device read it before loading anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal, Union

from edgeexit.errors import PackageError

FORMAT_NAME = "edgeexit-package"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"

#: The names an exit's ``criterion`` may take. A plain tuple, so that validating a manifest needs
#: no criterion code; the implementations are registered under the same names in the registry
#: ``edgeexit.criteria.CRITERIA`` (tests/criteria checks that the two agree).
CRITERION_NAMES = ("max_prob", "margin", "entropy", "patience", "similarity", "learned")
#: Criteria whose score the exported graph computes itself (from the exit's logits).
IN_GRAPH_CRITERIA = ("max_prob", "margin", "entropy")
#: The criterion whose in-graph score is a trained gate fed as graph inputs (``ExitSpec.gate_inputs``).
LEARNED_CRITERION = "learned"

DTYPE_BYTES = {"float32": 4, "float16": 2, "int64": 8, "int32": 4, "int8": 1, "uint8": 1, "bool": 1}


@dataclass(frozen=True)
class TensorSpec:
    """A named graph input or output. ``None`` in ``shape`` marks a dynamic axis (the batch)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def sample_bytes(self) -> int | None:
        """Bytes of one sample (all axes but the batch), or None when another axis is dynamic."""
        size = DTYPE_BYTES[self.dtype]
        for dim in self.shape[1:]:
            if dim is None:
                return None
            size *= dim
        return size


@dataclass(frozen=True)
class Preprocessing:
    """How an image file becomes the model input: ``(pixel * scale - mean) / std`` per channel."""

    color_mode: Literal["L", "RGB"]
    size: tuple[int, int]
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)


@dataclass(frozen=True)
class InputSpec:
    """The model input: ``layout`` says what the axes mean (``NCHW`` for images)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    layout: str
    preprocessing: Preprocessing | None = None
    #: Inputs every segment takes besides its hidden tensor, given once per request and carried
    #: unchanged to every segment (a transformer's ``attention_mask``). Empty for image models.
    context: tuple[TensorSpec, ...] = ()
    #: A ``tokenizers`` JSON file in the package that turns text into ``name`` + ``context``
    #: (the device tokenizes; no torch). None for models that take tensors.
    tokenizer: str | None = None

    @property
    def tensor(self) -> TensorSpec:
        return TensorSpec(self.name, self.shape, self.dtype)


@dataclass(frozen=True)
class SegmentSpec:
    """One ONNX graph: a run of backbone stages, ending at a boundary that may carry an exit.

    ``hidden`` names the output that feeds the next segment (None for the last one);
    ``flops`` counts one sample's floating-point operations (a multiply-add is 2).
    ``carries`` names the boundary's further outputs that the next segment takes besides
    ``hidden`` (a skip connection a later layer still reads), in the order the next segment's
    inputs list them; empty when the boundary is one tensor. ``hidden_bytes`` counts them all.
    """

    index: int
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    hidden: str | None
    exit: int | None
    flops: int
    params: int
    hidden_bytes: int | None
    carries: tuple[str, ...] = ()

    @property
    def boundary(self) -> tuple[str, ...]:
        """Every tensor this segment hands to the next, ``hidden`` first (empty for the last)."""
        return () if self.hidden is None else (self.hidden, *self.carries)

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise PackageError(f"segment {self.index} has no output {name!r}")


@dataclass(frozen=True)
class ExitGate:
    """A trained exit gate (the ``learned`` criterion, ``edgeexit.criteria.learned``): a
    two-layer perceptron on the exit's tempered softmax that scores the probability that the
    exit's answer agrees with the final exit's: sigmoid(relu(features @ w1 + b1) @ w2 + b2).

    ``w1`` holds one row per feature (``gate_features``: four summary statistics, then the class
    probabilities for up to 32 classes) and one column per hidden unit; the features'
    standardization is folded into ``w1`` and ``b1``. ``samples``: the calibration samples it was
    trained on (none of them chose or tested its threshold)."""

    w1: tuple[tuple[float, ...], ...] = field(repr=False)
    b1: tuple[float, ...] = field(repr=False)
    w2: tuple[float, ...] = field(repr=False)
    b2: float = field(repr=False)
    samples: int = 0


@dataclass(frozen=True)
class ExitSpec:
    """An exit at the end of segment ``segment``.

    ``logits`` and ``score`` name that segment's outputs; ``score`` is computed in the graph
    for the exit's default criterion where the criterion allows (max_prob, margin, entropy).
    ``temperature_input`` names the segment graph's input (shape (1,), default 1 when not fed)
    that the score's logits are divided by, so the runtime feeds ``temperature`` and reads the
    score with no numpy pass; None (packages before it): the graph scores at temperature 1 and
    the runtime rescores in numpy when ``temperature`` is not 1. ``probabilities`` names the
    output holding the same softmax (at the fed temperature) the score came from, which the
    runtime's Result reports as is. ``head`` is None for an exit without a classifier
    (similarity only). ``gate``: the ``learned`` criterion's trained gate (None: untrained, the
    score is 0.5 and the exit never fires); ``gate_inputs``: the segment graph's inputs (w1, b1,
    w2, b2) its in-graph gate takes, when it was exported with ``--criterion learned``.
    """

    index: int
    segment: int
    head: str | None
    logits: str | None
    score: str | None
    criterion: str
    threshold: float
    temperature: float = 1.0
    final: bool = False
    temperature_input: str | None = None
    probabilities: str | None = None
    gate: ExitGate | None = None
    gate_inputs: tuple[str, ...] = ()


#: "Never exit here" as a manifest stores it (JSON cannot hold inf): no criterion scores this
#: high (confidence and similarity are at most 1, patience at most the number of exits), so the
#: engine does not score an exit whose threshold is this or more.
NEVER_THRESHOLD = 1e9


@dataclass(frozen=True)
class TailSpec:
    """A Triton-layout model that finishes inference from boundary ``boundary`` (docs/offload.md).

    ``file`` is ``tails/<model>/1/model.onnx``: it takes boundary k's hidden tensor encoded with
    ``codec`` and returns the final logits; boundary -1 is the model input (the whole model).
    ``encoded_bytes`` is what one sample costs on the wire, measured by encoding a real sample.
    """

    boundary: int
    model: str
    file: str
    codec: str
    encoded_bytes: int | None

    @property
    def config(self) -> str:
        """The model's Triton ``config.pbtxt``, beside its version directory (hashed like the graph)."""
        return str(PurePosixPath(self.file).parent.parent / "config.pbtxt")


@dataclass(frozen=True)
class ExitCalibration:
    exit: int
    threshold: float
    temperature: float
    accuracy: float
    exit_rate: float


@dataclass(frozen=True)
class RiskGuarantee:
    """What a risk-controlled calibration certified (``edgeexit.calibration.risk_control``): on
    new data from the calibration data's distribution, the loss exceeds ``eps`` with probability
    at most ``delta``.

    ``against``: the loss, ``final`` (the early answer disagrees with the final exit's) or
    ``labels`` (the final exit is right and the early answer wrong); both bound the accuracy drop.
    ``tested``: the calibration samples that tested the candidates (the rest ordered them);
    ``loss``: the chosen thresholds' mean loss on them; ``bound``: its (1 - delta) upper
    confidence bound; ``certified``: False when no early exit could be certified at this many
    samples (the thresholds are then full depth); ``candidates``: threshold sets tested in
    sequence; ``seed``: of the split into ordering and testing samples."""

    method: str
    against: str
    eps: float
    delta: float
    tested: int
    loss: float
    bound: float
    certified: bool
    candidates: int
    seed: int = 0


@dataclass(frozen=True)
class CalibrationRecord:
    """What chose the thresholds: the target, the data it was measured on and the outcome."""

    criterion: str
    max_drop: float
    samples: int
    data_sha256: str
    final_accuracy: float
    accuracy: float
    expected_latency_ms: float
    exits: tuple[ExitCalibration, ...]
    #: standard errors of the accuracy drop kept in reserve for unseen data (0: none)
    margin: float = 0.0
    #: how the thresholds were chosen: ``margin`` (the drop on this data plus ``margin`` standard
    #: errors within ``max_drop``: a heuristic), ``ltt`` (Learn-then-Test: ``guarantee``) or
    #: ``budget`` (the most accurate thresholds whose expected latency fits ``budget_ms``)
    method: str = "margin"
    #: the statistical guarantee of an ``ltt`` calibration (None otherwise)
    guarantee: RiskGuarantee | None = None
    #: a ``budget`` calibration's limit on the expected latency per sample, in the calibration
    #: pass's measured segment times (None otherwise)
    budget_ms: float | None = None


@dataclass(frozen=True)
class SegmentVariant:
    """Another build of the same segments, for another runtime or precision.

    ``files[k]`` replaces ``segments[k].file`` and keeps its tensor names and shapes, so the
    engine runs it unchanged: ``backend`` says what loads it (``onnxruntime`` or ``tflite``),
    ``precision`` what its weights and activations are (``int8``: statically quantized).
    ``exits`` are thresholds and temperatures calibrated on this variant's own outputs (empty:
    the manifest's exits apply); ``report`` holds how it was built and what it measured
    (parity against the ONNX segments, per-exit accuracy change). The ``package_id`` does not
    cover variant files: they are derived from the same weights, and a tail server accepts
    their hidden tensors.
    """

    name: str
    backend: Literal["onnxruntime", "tflite"]
    precision: Literal["fp32", "int8"]
    files: tuple[str, ...]
    exits: tuple[ExitSpec, ...] = ()
    calibration: CalibrationRecord | None = None
    report: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reference:
    """A stored input and PyTorch's outputs for it; ``edgeexit verify`` re-runs and compares."""

    file: str
    atol: float
    rtol: float


@dataclass(frozen=True)
class Manifest:
    format_version: int
    model_name: str
    package_id: str
    edgeexit_version: str
    opset: int
    input: InputSpec
    labels: tuple[str, ...]
    segments: tuple[SegmentSpec, ...]
    exits: tuple[ExitSpec, ...]
    files: dict[str, str]
    reference: Reference | None = None
    monolithic: str | None = None
    tails: tuple[TailSpec, ...] = ()
    calibration: CalibrationRecord | None = None
    variants: tuple[SegmentVariant, ...] = ()
    format: str = FORMAT_NAME
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def exit_of_segment(self, segment: int) -> ExitSpec | None:
        for spec in self.exits:
            if spec.segment == segment:
                return spec
        return None

    def with_exits(
        self, exits: tuple[ExitSpec, ...], calibration: CalibrationRecord | None, *, variant: str | None = None
    ) -> Manifest:
        """Thresholds change, weights do not: the package_id stays the same. With ``variant``,
        that variant's own exits and calibration change instead."""
        if variant is None:
            return dataclasses.replace(self, exits=exits, calibration=calibration)
        chosen = self.variant(variant)
        changed = dataclasses.replace(chosen, exits=exits, calibration=calibration)
        return dataclasses.replace(self, variants=tuple(changed if v is chosen else v for v in self.variants))

    def with_variant(self, variant: SegmentVariant, hashes: dict[str, str]) -> Manifest:
        """Add (or replace, by name) a variant whose files have the given sha256 hashes."""
        kept = tuple(v for v in self.variants if v.name != variant.name)
        in_use = {s.file for s in self.segments} | {f for v in kept for f in v.files} | set(variant.files)
        stale = {f for v in self.variants if v.name == variant.name for f in v.files} - in_use
        files = {k: h for k, h in self.files.items() if k not in stale} | hashes
        return dataclasses.replace(self, variants=(*kept, variant), files=files)

    def variant(self, name: str) -> SegmentVariant:
        for found in self.variants:
            if found.name == name:
                return found
        have = ", ".join(v.name for v in self.variants) or "none"
        raise PackageError(f"the package has no {name!r} variant (it has: {have}); build it first")

    def find_variant(self, backend: str, precision: str) -> SegmentVariant | None:
        """The variant for this backend and precision; None for the ONNX fp32 segments themselves."""
        if (backend, precision) == ("onnxruntime", "fp32"):
            return None
        for found in self.variants:
            if (found.backend, found.precision) == (backend, precision):
                return found
        have = ", ".join(f"{v.backend}/{v.precision}" for v in self.variants)
        hint = {
            "int8": "run `edgeexit quantize PKG --data calib.npz`",
            "tflite": "re-export with `edgeexit export ... --tflite`",
        }
        fix = hint["int8" if precision == "int8" else "tflite"]
        raise PackageError(
            f"the package has no {backend} {precision} segments (it has onnxruntime/fp32"
            f"{', ' + have if have else ''}); {fix}"
        )

    def exits_for(self, variant: SegmentVariant | None) -> tuple[ExitSpec, ...]:
        return variant.exits if variant is not None and variant.exits else self.exits

    def validate(self) -> None:
        """Cross-field rules the field types alone cannot express."""
        if self.format != FORMAT_NAME:
            raise PackageError(f"manifest format is {self.format!r}; expected {FORMAT_NAME!r}")
        if not self.segments:
            raise PackageError("manifest lists no segments; expected at least one")
        for position, segment in enumerate(self.segments):
            if segment.index != position:
                raise PackageError(f"segments[{position}].index is {segment.index}; expected {position}")
            if segment.file not in self.files:
                raise PackageError(f"segment {position} file {segment.file!r} has no sha256 in 'files'")
            last = position == len(self.segments) - 1
            if (segment.hidden is None) != last:
                raise PackageError(
                    f"segment {position}: only the last segment may lack a hidden output "
                    f"(found hidden={segment.hidden!r})"
                )
            for name in segment.boundary:
                segment.output(name)
            if not last:
                taken = tuple(spec.name for spec in self.segments[position + 1].inputs[: len(segment.boundary)])
                if taken != segment.boundary:
                    raise PackageError(
                        f"segment {position + 1} takes {list(taken)} first; expected boundary {position}'s tensors "
                        f"{list(segment.boundary)} in that order"
                    )
        for position, spec in enumerate(self.exits):
            if spec.index != position:
                raise PackageError(f"exits[{position}].index is {spec.index}; expected {position}")
            if not 0 <= spec.segment < len(self.segments):
                raise PackageError(f"exit {position} sits on segment {spec.segment}, which does not exist")
            if self.segments[spec.segment].exit != position:
                raise PackageError(f"exit {position} and segment {spec.segment} do not point at each other")
            if spec.criterion not in CRITERION_NAMES:
                raise PackageError(
                    f"exits[{position}].criterion {spec.criterion!r} is unknown; expected one of {CRITERION_NAMES}"
                )
            if spec.head is None and spec.criterion != "similarity":
                raise PackageError(f"exit {position} has no head, so only the 'similarity' criterion can stop it")
            for name in (spec.logits, spec.score):
                if name is not None:
                    self.segments[spec.segment].output(name)
            gate = spec.gate
            if gate is not None and not (gate.w1 and {len(row) for row in gate.w1} == {len(gate.b1)} == {len(gate.w2)}):
                raise PackageError(
                    f"exit {position}'s gate has inconsistent shapes (w1 rows of {sorted({len(r) for r in gate.w1})} "
                    f"units, b1 {len(gate.b1)}, w2 {len(gate.w2)}); expected one width throughout: recalibrate"
                )
        self._validate_tails()
        self._validate_variants()
        referenced = [
            ("monolithic", self.monolithic),
            ("reference.file", self.reference.file if self.reference else None),
            *((f"tails[{i}].file", tail.file) for i, tail in enumerate(self.tails)),
            *((f"tails[{i}] config", tail.config) for i, tail in enumerate(self.tails)),
            ("input.tokenizer", self.input.tokenizer),
            *((f"variants[{i}].files", f) for i, v in enumerate(self.variants) for f in v.files),
        ]
        for where, name in referenced:
            if name is not None and name not in self.files:
                raise PackageError(f"{where} {name!r} has no sha256 in 'files'; every file the package uses is hashed")
        if len(self.exits) != len(self.segments):
            raise PackageError(
                f"the manifest has {len(self.exits)} exits for {len(self.segments)} segments; expected one exit "
                "at the end of every segment (an exit without a classifier has head null)"
            )
        if not self.exits or not self.exits[-1].final or self.exits[-1].segment != len(self.segments) - 1:
            raise PackageError("the last exit must be the final exit, at the end of the last segment")
        if self.package_id != package_id_of(self.files, [s.file for s in self.segments]):
            raise PackageError(
                "manifest package_id does not match the hashes of its segment graphs; "
                "the manifest was edited by hand or the package is corrupt: re-export it"
            )

    def _validate_tails(self) -> None:
        """Each tail sits in its own Triton model directory and starts at a boundary with a later segment."""
        seen: set[str] = set()
        for position, tail in enumerate(self.tails):
            if not -1 <= tail.boundary < len(self.segments) - 1:
                raise PackageError(
                    f"tails[{position}] starts at boundary {tail.boundary}; expected one of "
                    f"0..{len(self.segments) - 2} (a boundary with a later segment) or -1 (the model input)"
                )
            path = PurePosixPath(tail.file)
            if len(path.parts) < 3 or path.parent.parent.name != tail.model or not path.parent.name.isdigit():
                raise PackageError(
                    f"tails[{position}].file {tail.file!r} is not in the Triton layout; expected "
                    f"'tails/{tail.model}/1/model.onnx' (model directory, version directory, graph)"
                )
            if tail.model in seen:
                raise PackageError(f"tails[{position}] repeats the model name {tail.model!r}; every tail needs its own")
            seen.add(tail.model)

    def _validate_variants(self) -> None:
        seen: set[str] = set()
        for position, variant in enumerate(self.variants):
            if variant.name in seen:
                raise PackageError(f"variants[{position}] repeats the name {variant.name!r}")
            seen.add(variant.name)
            if len(variant.files) != len(self.segments):
                raise PackageError(
                    f"variants[{position}] ({variant.name}) lists {len(variant.files)} files for "
                    f"{len(self.segments)} segments; expected one per segment"
                )
            if variant.exits and [e.segment for e in variant.exits] != [e.segment for e in self.exits]:
                raise PackageError(f"variants[{position}].exits must sit on the same segments as the manifest's exits")

    def to_json(self) -> str:
        return json.dumps(_to_plain(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str = "manifest.json") -> Manifest:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise PackageError(f"{source} is not valid JSON ({err}); expected an edgeexit manifest") from None
        return cls.from_dict(raw, source=source)

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "manifest.json") -> Manifest:
        if not isinstance(raw, dict):
            raise PackageError(f"{source}: expected a JSON object, found {type(raw).__name__}")
        if raw.get("format") == "edgeexit-decoder":
            raise PackageError(
                f"{source} is a decoder (LLM) package; this command takes classifier packages: run it with "
                "`edgeexit generate` (its hashes are checked when it loads), check it with `edgeexit verify`"
            )
        if raw.get("format") != FORMAT_NAME:
            raise PackageError(f"{source}: 'format' is {raw.get('format')!r}; expected {FORMAT_NAME!r}")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise PackageError(
                f"{source}: format_version {version!r} is not supported by this edgeexit "
                f"(it reads version {FORMAT_VERSION}); re-export the package with a matching edgeexit"
            )
        try:
            manifest = _parse(cls, raw, "")
            manifest.validate()
        except PackageError as err:
            raise PackageError(f"{source}: {err}") from None
        return manifest


def package_id_of(files: dict[str, str], graphs: list[str]) -> str:
    """Hash over the segment graphs' hashes: it names the weights, not the thresholds."""
    digest = hashlib.sha256()
    for name in graphs:
        digest.update(f"{name}:{files.get(name, '')}\n".encode())
    return digest.hexdigest()[:32]


def parse_json(kind: Any, raw: Any) -> Any:
    """``raw`` (parsed JSON) as ``kind``, a dataclass of this module's field types, checked field by
    field: the parser other package formats (decoder packages) share with this manifest."""
    return _parse(kind, raw, "")


def to_plain(value: Any) -> Any:
    """A dataclass tree as plain JSON values (the inverse of ``parse_json``)."""
    return _to_plain(value)


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    return value


def _describe(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"[:80]


def _parse(kind: Any, value: Any, path: str) -> Any:
    """Convert JSON into ``kind`` (a type hint), raising PackageError with the JSON path."""
    where = path or "manifest"
    origin = typing.get_origin(kind)
    if kind is Any:
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _parse(option, value, path)
            except PackageError as err:
                errors.append(str(err))
        raise PackageError(errors[0] if len(errors) == 1 else f"{where}: unexpected {_describe(value)}")
    if origin is Literal:
        allowed = typing.get_args(kind)
        if value not in allowed:
            raise PackageError(f"{where}: expected one of {allowed}, found {_describe(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise PackageError(f"{where}: expected a list, found {_describe(value)}")
        args = typing.get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise PackageError(f"{where}: expected a list of {len(args)} items, found {len(value)}")
        return tuple(_parse(item, v, f"{path}[{i}]") for i, (item, v) in enumerate(zip(args, value, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            raise PackageError(f"{where}: expected an object, found {_describe(value)}")
        _, item = typing.get_args(kind)
        return {k: _parse(item, v, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise PackageError(f"{where}: expected an object, found {_describe(value)}")
        hints = typing.get_type_hints(kind)
        known = {f.name for f in dataclasses.fields(kind)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise PackageError(f"{where}: unknown field(s) {unknown}; expected only {sorted(known)}")
        kwargs = {}
        for spec in dataclasses.fields(kind):
            child = f"{path}.{spec.name}" if path else spec.name
            if spec.name in value:
                kwargs[spec.name] = _parse(hints[spec.name], value[spec.name], child)
            elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise PackageError(f"{where}: missing required field {spec.name!r}")
        return kind(**kwargs)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PackageError(f"{where}: expected a number, found {_describe(value)}")
        return float(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PackageError(f"{where}: expected an integer, found {_describe(value)}")
        return value
    if kind in (str, bool):
        if not isinstance(value, kind):
            raise PackageError(f"{where}: expected {kind.__name__}, found {_describe(value)}")
        return value
    if kind is type(None):
        if value is not None:
            raise PackageError(f"{where}: expected null, found {_describe(value)}")
        return None
    raise PackageError(f"{where}: cannot parse type {kind!r}")  # a bug in the schema, not the file
