"""Static int8 quantization of a package's segments: ``edgeexit quantize``.

Each segment graph goes through ONNX Runtime's ``quant_pre_process`` (shape inference and the
basic graph optimizations the quantizer expects) and then ``quantize_static`` in the QDQ format
with per-channel weight scales. Activation ranges are calibrated on real data fed through the
package's own fp32 segments: segment k sees boundary k-1's real hidden tensors, exactly what it
will see at run time, rather than random tensors or a whole-model pass it never runs.

Each exit's last layer (the one producing its logits) and its score subgraph (softmax onwards)
stay in float: they cost little, and int8 logits would round every confidence to a step of the
logits' range (measured on digits: top-1 agreement with fp32 97.9% -> 98.3% at the first exit).

Text encoders (packages with context inputs: ``input_ids`` + ``attention_mask``) take their
inputs as the engine does, a mapping of (N, L) arrays; every segment's reader gets its hidden
tensor plus the mask, each batch cut to its longest real sequence so padding columns do not
widen the ranges. Only their MatMul / Gemm nodes are quantized (``TRANSFORMER_OP_TYPES``):
LayerNorm, Softmax, Gelu and the embedding Gather stay float, as ONNX Runtime advises for
transformers, because their outputs need more than 8 bits and cost little. The symbolic shape
inference of ``quant_pre_process`` cannot follow BERT's dynamic token axis (its attention
reshapes), so those graphs fall back to ONNX's own shape inference (recorded in the report).

Every variant uses a saturation-free ``Int8Scheme`` (``edgeexit.int8_schemes``: 7-bit
weights by default), so its integer arithmetic is exact on every CPU. That is checked on this
machine against a float oracle of the same graphs, and the oracle's outputs on the package's
reference sample are stored (``int8/reference.npz``) for ``edgeexit verify`` to hold a device to.

Mixed precision: ``keep_fp32`` names segments whose fp32 graph the variant uses unchanged
(``files[k]`` is then ``segments/k.onnx``), and ``auto`` picks them from the measurements: a
segment stays fp32 when its int8 graph is not faster at batch 1, or when quantizing it alone
drops the final exit's agreement with fp32 below ``min_agreement``.

The int8 segments are a ``SegmentVariant`` of the package (``int8/k.onnx``, hashed in the
manifest), with its own thresholds: calibration (``edgeexit.calibration``) is rerun on the int8
segments' full-depth outputs with the target of the manifest's own calibration record, because
quantization shifts every exit's confidence. The package_id (the fp32 weights) does not change.

Everything is staged beside the package and moved in only when every step succeeded, then the
manifest is replaced atomically: a failed run leaves the package as it was.

Workstation step, but no torch: onnx and onnxruntime.quantization only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeexit.calibration import Choice, calibrate_manifest, check_labels, digest_data
from edgeexit.errors import DataError, ExportError, InputError, PackageError, UnknownNameError, UsageError
from edgeexit.fileio import atomic_write_text, current_umask, sha256_file
from edgeexit.int8_schemes import SCHEMES, Int8Scheme, float_oracle, get_scheme
from edgeexit.manifest import CRITERION_NAMES, MANIFEST_FILE, Manifest, SegmentSpec, SegmentVariant
from edgeexit.package import Package, open_package
from edgeexit.runtime.full_depth import full_depth_outputs
from edgeexit.runtime.results import FullDepth, Inputs
from edgeexit.runtime.sessions import load_session
from edgeexit.runtime.validation import InputCheck
from edgeexit.runtime.verify import INT8_REFERENCE_FILE, KERNEL_TOLERANCE, load_reference, reference_inputs

#: Samples whose activations set the quantization ranges (MinMax needs few; more costs time).
DEFAULT_SAMPLES = 128
#: Samples per calibration batch. ONNX Runtime's MinMax calibrator keeps every batch's intermediate
#: tensors until the end (its ``CalibMaxIntermediateOutputs`` option would bound that, but in 1.32 it
#: drops the collected batches instead of folding them into the ranges), so memory grows with
#: ``samples`` (256 samples peaked at 2.4 GB RSS on EfficientNet-Lite0 at 224x224).
_CALIBRATION_BATCH = 16
#: Target when the manifest has no calibration record: that of ``edgeexit calibrate``'s defaults.
DEFAULT_MAX_DROP = 0.01
DEFAULT_MARGIN = 1.0
VARIANT_NAME = "int8"
#: Op types quantized in a text encoder's segments (every MatMul: the projections' weights per
#: channel, and the attention's two activation products); everything else stays float.
TRANSFORMER_OP_TYPES = ("MatMul", "Gemm")
#: How each kind of package is quantized by default: image models statically (activation ranges
#: calibrated, QDQ), text encoders dynamically (int8 weights, activations quantized per call from
#: their own range: no calibrated ranges, and ONNX Runtime fuses them into DynamicQuantizeMatMul).
#: Measured on all-MiniLM-L6-v2 at batch 1 on short tweets: static QDQ ran ~2x slower than fp32 per
#: segment, dynamic about 0.5x (see tools/bench_int8.py).
MODES = ("static", "dynamic")
#: ``auto``: the final exit's agreement with fp32 a segment's int8 graph must keep on its own.
DEFAULT_MIN_AGREEMENT = 0.98


@dataclass(frozen=True)
class SegmentTiming:
    """One segment's batch-1 latency in fp32 and int8 (medians, measured interleaved) and file sizes."""

    segment: int
    fp32_ms: float
    int8_ms: float
    fp32_bytes: int
    int8_bytes: int

    @property
    def ratio(self) -> float:
        """int8 time over fp32 time: below 1 means int8 pays."""
        return self.int8_ms / self.fp32_ms if self.fp32_ms > 0 else float("nan")


@dataclass(frozen=True)
class SegmentChoice:
    """Which build of segment k the variant runs, and why. ``alone_agreement`` is the final exit's
    top-1 agreement with fp32 when only this segment runs in int8 (the others fp32), on the
    evaluation data: what this segment's quantization costs by itself."""

    segment: int
    precision: str  # "int8" or "fp32"
    reason: str
    alone_agreement: float | None


@dataclass(frozen=True)
class ExitChange:
    """One exit's full-depth accuracy (every sample judged there) in fp32 and int8, and how often
    the two predict the same class. None for an exit without a classifier."""

    exit: int
    fp32: float | None
    int8: float | None
    agreement: float | None

    @property
    def change(self) -> float | None:
        return None if self.fp32 is None or self.int8 is None else self.int8 - self.fp32


@dataclass(frozen=True)
class QuantizeReport:
    """What ``quantize_package`` wrote and measured. ``choice`` is the int8 threshold search's
    outcome on the calibration data; ``exits`` (the variant as written, mixed precision included)
    were measured on ``eval_source``; ``segments`` time every segment's int8 graph, kept or not."""

    package: Package
    variant: SegmentVariant
    segments: tuple[SegmentTiming, ...]
    exits: tuple[ExitChange, ...]
    choice: Choice
    eval_samples: int
    eval_source: str
    calibration_samples: int
    choices: tuple[SegmentChoice, ...] = ()

    @property
    def kept_fp32(self) -> tuple[int, ...]:
        """Segments the variant runs in fp32."""
        return tuple(c.segment for c in self.choices if c.precision == "fp32")


@dataclass(frozen=True, eq=False)
class _Batch:
    """Model inputs, batch first: the input tensor and the context inputs (rows aligned)."""

    x: np.ndarray
    context: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def rows(self, start: int, stop: int) -> _Batch:
        return _Batch(self.x[start:stop], {name: value[start:stop] for name, value in self.context.items()})

    def trimmed(self) -> _Batch:
        """Without the token columns that are padding in every row (right padding, as the tokenizer
        pads): a batch of one is the unpadded sample the device runs."""
        mask = self.context.get("attention_mask")
        if mask is None or mask.ndim != 2:
            return self
        used = np.flatnonzero(mask.any(axis=0))
        stop = int(used[-1]) + 1 if used.size else 1
        if stop == mask.shape[1]:
            return self
        return _Batch(
            np.ascontiguousarray(self.x[:, :stop]),
            {name: np.ascontiguousarray(value[:, :stop]) for name, value in self.context.items()},
        )

    def digest(self, y: np.ndarray) -> str:
        return digest_data({"input": self.x, **self.context} if self.context else self.x, y)


@dataclass(frozen=True)
class _Graph:
    """A segment graph in an ONNX Runtime session, fed and read by the manifest's tensor names."""

    spec: SegmentSpec
    session: Any

    def run(self, x: np.ndarray, context: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.spec.outputs]
        feeds = {self.spec.inputs[0].name: x} | {i.name: context[i.name] for i in self.spec.inputs[1:]}
        return dict(zip(names, self.session.run(names, feeds), strict=True))


@dataclass(frozen=True)
class QuantizeOptions:
    """How ``quantize_package`` quantizes, calibrates and measures: what a user configures (the
    CLI's flags build one).

    ``samples`` of the data calibrate the activation ranges (static mode). ``max_drop``,
    ``criterion`` and ``margin`` default to the manifest's calibration record (else 1 point, each
    exit's own criterion, 1 standard error), so the int8 thresholds meet the target the fp32 ones
    were chosen for. ``op_types`` limits the quantized op types (default: all the quantizer
    supports for image models, ``TRANSFORMER_OP_TYPES`` for text encoders). ``mode``
    (``MODES``) defaults to static for image models and dynamic for text encoders, whose
    activation ranges then need no calibration (the thresholds still do). ``scheme`` names an
    ``Int8Scheme`` (default: the mode's saturation-free one). ``keep_fp32`` lists segments the
    variant runs in fp32; ``auto`` adds those whose int8 graph is not faster at batch 1 or alone
    drops the final exit's agreement with fp32 below ``min_agreement``. ``threads`` and
    ``timing_samples`` set how segments are timed (batch 1); ``data_source`` / ``eval_source``
    name the data in messages and in the variant's report."""

    samples: int = DEFAULT_SAMPLES
    per_channel: bool = True
    max_drop: float | None = None
    criterion: str | None = None
    margin: float | None = None
    threads: int = 1
    timing_samples: int = 32
    data_source: str = "calibration data"
    eval_source: str | None = None
    op_types: tuple[str, ...] | None = None
    mode: str | None = None
    keep_fp32: tuple[int, ...] = ()
    auto: bool = False
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    scheme: str | None = None


@dataclass(frozen=True)
class _Plan:
    """The options resolved against the package: what this run does (``QuantizeOptions`` says
    what the user asked for, None meaning "the package's default")."""

    mode: str
    op_types: tuple[str, ...] | None
    scheme: Int8Scheme
    keep: frozenset[int]
    max_drop: float
    margin: float


def quantize_package(
    package: str | os.PathLike[str] | Package,
    x: Inputs,
    y: np.ndarray,
    options: QuantizeOptions | None = None,
    *,
    eval_x: Inputs | None = None,
    eval_y: np.ndarray | None = None,
) -> QuantizeReport:
    """Quantize the segments of ``package`` to int8 and add them as its ``int8`` variant.

    ``x`` / ``y`` are labelled model-ready inputs (``edgeexit.runtime.inputs.prepare_dataset``, or
    for a text encoder the mapping ``TextEncoder.encode`` gives): the first ``options.samples`` of
    them calibrate the activation ranges, all of them the int8 exits' thresholds. ``eval_x`` /
    ``eval_y`` (default: ``x`` / ``y``) measure each exit's accuracy in fp32 and int8. A scheme
    whose kernels on this machine do not compute what its graphs specify is refused, and nothing
    is written. Every segment is quantized and measured, kept in fp32 or not, so the report says
    what each would cost. Replaces an existing ``int8`` variant.
    """
    options = options or QuantizeOptions()
    data_source, eval_source, threads = options.data_source, options.eval_source, options.threads
    opened = package if isinstance(package, Package) else open_package(package)
    manifest = opened.manifest
    data = _check_inputs(x, manifest, data_source)
    y = check_labels(y, len(data), manifest.num_classes)
    if eval_x is None or eval_y is None:
        if (eval_x is None) != (eval_y is None):
            raise DataError("give both eval_x and eval_y, or neither (then the calibration data is evaluated)")
        evaluation, eval_y, eval_source = data, y, eval_source or data_source
    else:
        evaluation = _check_inputs(eval_x, manifest, eval_source or "evaluation data")
        eval_y = check_labels(eval_y, len(evaluation), manifest.num_classes)
    plan = _plan(options, manifest)
    fp32 = [_Graph(s, load_session(opened.path(s.file), threads)) for s in manifest.segments]
    ranges = 0 if plan.mode == "dynamic" else min(options.samples, len(data))  # dynamic: no calibrated ranges
    inputs = _segment_inputs(fp32, data.rows(0, ranges)) if ranges else [[] for _ in fp32]
    root = opened.root
    stage = Path(tempfile.mkdtemp(prefix=f".{VARIANT_NAME}.", suffix=".partial", dir=root))
    try:
        stage.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 would hide int8/ from a daemon running as another user
        shape_inference: list[str] = []
        with tempfile.TemporaryDirectory(prefix="edgeexit-quantize-") as scratch, _quiet_onnxruntime():
            for segment, batches in zip(manifest.segments, inputs, strict=True):
                shape_inference.append(
                    _quantize_segment(opened.path(segment.file), stage / f"{segment.index}.onnx", segment, batches,
                                      per_channel=options.per_channel, op_types=plan.op_types, mode=plan.mode,
                                      scheme=plan.scheme, scratch=Path(scratch))
                )  # fmt: skip
            # Before timing or calibrating anything: int8 graphs this CPU computes wrongly are refused.
            int8 = [_Graph(s, _load_int8(stage / f"{s.index}.onnx", s, threads)) for s in manifest.segments]
            kernels = _check_kernels(opened, int8, stage, Path(scratch), plan.scheme)
        timings = _time_side_by_side(fp32, int8, data, options.timing_samples, stage, opened)
        alone = _alone_agreement(fp32, int8, manifest, evaluation)
        choices = _choose(timings, alone, plan.keep, options.auto, options.min_agreement)
        if all(c.precision == "fp32" for c in choices):
            raise UsageError(
                "every segment would stay fp32 (" + "; ".join(f"{c.segment}: {c.reason}" for c in choices) + "): "
                "the int8 variant would be the fp32 model; the package is left as it was (lower --min-agreement "
                "or drop --auto / --keep-fp32 to write it anyway)"
            )
        mixed = [a if c.precision == "fp32" else b for a, b, c in zip(fp32, int8, choices, strict=True)]
        segment_ms = tuple(
            t.fp32_ms if c.precision == "fp32" else t.int8_ms for t, c in zip(timings, choices, strict=True)
        )
        full_int8 = _full_depth(mixed, manifest, data, segment_ms)
        calibrated, choice = calibrate_manifest(
            manifest, full_int8, y, criterion=options.criterion, max_drop=plan.max_drop, data_sha256=data.digest(y),
            margin=plan.margin,
        )  # fmt: skip
        changes = _exit_changes(fp32, mixed, manifest, evaluation, eval_y)
        files = tuple(
            s.file if c.precision == "fp32" else f"{VARIANT_NAME}/{s.index}.onnx"
            for s, c in zip(manifest.segments, choices, strict=True)
        )
        for c in choices:  # the stage holds only the files the variant names
            if c.precision == "fp32":
                (stage / f"{c.segment}.onnx").unlink()
        kernel_record = _record_kernels(kernels, fp32, choices, stage)
        # The fp32 segment files keep their hashes: listed again so that replacing a variant that
        # named them (Manifest.with_variant drops the old variant's files) cannot drop them.
        hashes = {s.file: manifest.files[s.file] for s in manifest.segments} | {
            name: sha256_file(stage / Path(name).name)
            for name in (*files, INT8_REFERENCE_FILE)
            if name.startswith(f"{VARIANT_NAME}/")
        }
        report = _variant_report(
            options, plan, ranges, data, y, eval_source, len(eval_y), timings, changes, choices, shape_inference
        )
        report |= {
            "scheme": plan.scheme.record(),
            "activations": (
                f"{plan.scheme.activations} (asymmetric, MinMax)" if plan.mode == "static"
                else "uint8, range of each call's own tensor"
            ),
            "weights": f"{plan.scheme.weights} ({'7-bit, ' if plan.scheme.reduce_range else ''}symmetric)"
            if plan.scheme.weights == "int8" else "uint8 (asymmetric)",
            "kernel_check": kernel_record,
        }  # fmt: skip
        variant = SegmentVariant(
            name=VARIANT_NAME,
            backend="onnxruntime",
            precision="int8",
            files=files,
            exits=calibrated.exits,
            calibration=calibrated.calibration,
            report=report,
        )
        updated = manifest.with_variant(variant, hashes)
        updated.validate()
        _commit(root, stage, updated)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return QuantizeReport(
        package=Package(root, updated),
        variant=variant,
        segments=timings,
        exits=changes,
        choice=choice,
        eval_samples=len(eval_y),
        eval_source=eval_source or data_source,
        calibration_samples=ranges,
        choices=choices,
    )


# ---------------------------------------------------------------- checks


def _plan(options: QuantizeOptions, manifest: Manifest) -> _Plan:
    """``options`` checked and resolved against ``manifest``, before any work: a wrong option
    costs nothing."""
    if options.samples < 1:
        raise DataError(f"samples is {options.samples}; expected at least 1 calibration sample")
    criterion = options.criterion
    if criterion is not None and criterion not in CRITERION_NAMES:
        raise UnknownNameError(f"unknown criterion {criterion!r}; expected one of {', '.join(CRITERION_NAMES)}")
    keep = _check_keep(options.keep_fp32, len(manifest.segments), options.auto)
    if not 0.0 <= options.min_agreement <= 1.0:
        raise UsageError(f"min_agreement is {options.min_agreement}; expected a fraction in [0, 1]")
    text = bool(manifest.input.context)
    mode = options.mode if options.mode is not None else ("dynamic" if text else "static")
    if mode not in MODES:
        raise UnknownNameError(f"unknown quantization mode {options.mode!r}; expected one of {', '.join(MODES)}")
    op_types = options.op_types if options.op_types is not None else (TRANSFORMER_OP_TYPES if text else None)
    scheme = get_scheme(options.scheme, mode)
    if manifest.reference is None:
        raise PackageError(
            "the package has no reference sample (reference.npz) to check the int8 kernels on; re-export it"
        )
    record = manifest.calibration
    max_drop = options.max_drop if options.max_drop is not None else (record.max_drop if record else DEFAULT_MAX_DROP)
    margin = options.margin if options.margin is not None else (record.margin if record else DEFAULT_MARGIN)
    return _Plan(mode, op_types, scheme, keep, max_drop, margin)


def _check_keep(keep_fp32: Sequence[int], segments: int, auto: bool) -> frozenset[int]:
    keep = frozenset(int(k) for k in keep_fp32)
    bad = sorted(k for k in keep if not 0 <= k < segments)
    if bad:
        raise UsageError(f"keep_fp32 names segment(s) {bad}; the package has segments 0..{segments - 1}")
    if len(keep) == segments:
        raise UsageError(
            f"keep_fp32 names every segment ({sorted(keep)}): the int8 variant would be the fp32 model; "
            "keep fewer segments in fp32"
        )
    return keep


def _check_inputs(x: object, manifest: Manifest, source: str) -> _Batch:
    """``x`` checked as the engine checks a batch (``runtime.validation``: one set of rules), a
    mismatch reported as a data set that does not fit the package."""
    check = InputCheck(manifest.input, manifest.segments)
    try:
        array, context = check.inputs(x, batched=True)
    except InputError as err:
        if manifest.input.context:
            wanted = (
                f"takes {list(check.names)}: pass a mapping from each name to its (N, L) array "
                "(edgeexit.runtime.text.TextEncoder.encode gives it)"
            )
        else:
            shape = f"{check.expected_shape()} ({manifest.input.layout})"
            wanted = f"expects {shape}: pass labelled data prepared for this model"
        raise DataError(f"{source} does not fit: {err}; the package {manifest.model_name} {wanted}") from err
    return _Batch(array, context)


# ---------------------------------------------------------------- fp32 boundaries


def _segment_inputs(graphs: Sequence[_Graph], data: _Batch) -> list[list[_Batch]]:
    """Per segment, its real inputs in calibration batches: the model input for segment 0, boundary
    k-1's fp32 hidden tensor for segment k (with the batch's context inputs)."""
    found: list[list[_Batch]] = [[] for _ in graphs]
    for start in range(0, len(data), _CALIBRATION_BATCH):
        current = data.rows(start, start + _CALIBRATION_BATCH).trimmed()
        for k, graph in enumerate(graphs):
            found[k].append(current)
            if graph.spec.hidden is not None:
                current = _Batch(graph.run(current.x, current.context)[graph.spec.hidden], current.context)
    return found


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over precomputed batches."""

    def __init__(self, spec: SegmentSpec, batches: Sequence[_Batch]) -> None:
        self._items: Iterator[dict[str, np.ndarray]] = iter(
            [{spec.inputs[0].name: b.x} | {i.name: b.context[i.name] for i in spec.inputs[1:]} for b in batches]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


# ---------------------------------------------------------------- quantization


def _quantize_segment(
    source: Path,
    target: Path,
    spec: SegmentSpec,
    batches: Sequence[_Batch],
    *,
    per_channel: bool,
    op_types: Sequence[str] | None,
    mode: str,
    scheme: Int8Scheme,
    scratch: Path,
) -> str:
    """Write segment ``spec``'s int8 graph to ``target``; returns the shape inference that prepared it."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_dynamic, quantize_static

    prepared = scratch / f"{spec.index}.pre.onnx"
    where = f"segment {spec.index} ({spec.file})"
    inference = _pre_process(source, prepared, where)
    model = onnx.load(str(prepared))
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"edgeexit_node_{i}"  # the quantizer excludes nodes by name
    excluded = _score_nodes(model, spec)
    onnx.save(model, str(prepared))
    activations, weights = scheme.quant_types()
    try:
        if mode == "dynamic":  # MatMuls with a constant weight only (its MatMulConstBOnly default)
            quantize_dynamic(
                str(prepared),
                str(target),
                op_types_to_quantize=list(op_types) if op_types is not None else None,
                per_channel=per_channel,
                reduce_range=scheme.reduce_range,
                weight_type=weights,
                nodes_to_exclude=excluded,
            )
            return inference
        quantize_static(
            str(prepared),
            str(target),
            _Reader(spec, batches),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types) if op_types is not None else None,
            per_channel=per_channel,
            reduce_range=scheme.reduce_range,
            activation_type=activations,
            weight_type=weights,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=excluded,
        )
    except Exception as err:  # as above: ONNX Runtime's errors are not typed
        raise ExportError(f"{where}: quantize_{mode} failed ({type(err).__name__}: {str(err)[:300]})") from None
    return inference


@contextlib.contextmanager
def _quiet_onnxruntime() -> Iterator[None]:
    """ONNX Runtime's quantizer opens its own sessions at the default log level (warning), and each
    segment's ``exit_k_temperature`` draws "Initializer ... appears in graph inputs" from every one:
    the temperature is an overridable initializer on purpose (the engine feeds the calibrated one).
    Errors still print; the level goes back to ONNX Runtime's default (2) afterwards."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _pre_process(source: Path, prepared: Path, where: str) -> str:
    """``quant_pre_process`` with ONNX Runtime's symbolic shape inference, else ONNX's own.

    The symbolic one gives up on a transformer's dynamic token axis ("Incomplete symbolic shape
    inference": the attention's Reshape targets are computed from Shape ops); ONNX's shape
    inference leaves such axes unnamed, which the quantizer does not need."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        # When it gives up, the symbolic inference saves a debug model (and its external data)
        # into the working directory: run it where that litter lands in our scratch space.
        with _working_directory(prepared.parent):
            quant_pre_process(str(source.resolve()), str(prepared.resolve()))
        return "symbolic"
    except Exception:  # onnxruntime raises untyped errors from shape inference: retry without it
        pass
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        return "onnx"
    except Exception as err:  # as above
        raise ExportError(
            f"{where}: quant_pre_process failed ({type(err).__name__}: {str(err)[:300]}); the graph cannot be quantized"
        ) from None


def _score_nodes(model: Any, spec: SegmentSpec) -> list[str]:
    """Names of the nodes that produce the exit's logits and those downstream (the in-graph
    score): kept in float, so confidence is not rounded to an int8 step of the logits' range."""
    logits = {o.name for o in spec.outputs if o.name.endswith("_logits")}
    tainted = set(logits)
    excluded: list[str] = []
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        if any(name in tainted for name in node.input) or any(name in logits for name in node.output):
            excluded.append(node.name)
            tainted.update(node.output)
    return excluded


def _load_int8(path: Path, spec: SegmentSpec, threads: int) -> Any:
    session = load_session(path, threads)
    found = sorted(o.name for o in session.get_outputs())
    expected = sorted(o.name for o in spec.outputs)
    if found != expected:
        raise ExportError(f"the int8 graph of segment {spec.index} has outputs {found}; expected {expected}")
    return session


# ---------------------------------------------------------------- kernels vs. oracle


@dataclass(frozen=True)
class _Kernels:
    """Each int8 segment graph in this machine's kernels and as its float oracle, the reference
    input they ran on, and how far apart the chained outputs came out (a share of each output's
    range, the worst first)."""

    oracle: tuple[_Graph, ...]
    x: np.ndarray
    context: dict[str, np.ndarray]
    max_error: float
    worst: str


def _check_kernels(package: Package, int8: Sequence[_Graph], stage: Path, scratch: Path,
                   scheme: Int8Scheme) -> _Kernels:  # fmt: skip
    """Run the reference sample through the int8 segments twice, chained: in this machine's integer
    kernels (as the engine runs them) and in the float oracle. Refuse when they differ by more than
    ``KERNEL_TOLERANCE`` of an output's range: then the kernels do not compute what the graph says."""
    x, context = reference_inputs(package.manifest, load_reference(package))
    oracle = []
    for graph in int8:
        built = scratch / f"{graph.spec.index}.oracle.onnx"
        float_oracle(stage / f"{graph.spec.index}.onnx", built)
        oracle.append(_Graph(graph.spec, load_session(built, 1, optimize=False)))
    got, want = _chain(int8, x, context), _chain(oracle, x, context)
    errors = {key: _range_error(got[key], ref) for key, ref in want.items()}
    worst = max(errors, key=errors.__getitem__)
    kernels = _Kernels(tuple(oracle), x, context, errors[worst], worst)
    if kernels.max_error > KERNEL_TOLERANCE:
        from edgeexit.runtime.verify import int8_cpu_features

        safe = ", ".join(name for name, s in SCHEMES.items() if s.saturation_free)
        raise ExportError(
            f"this CPU's int8 kernels ({int8_cpu_features()}) do not compute what the {scheme.name} graphs specify: "
            f"output {worst} is off from exact integer arithmetic by {kernels.max_error:.1%} of its range "
            f"(tolerance {KERNEL_TOLERANCE:.0%}). On x86 without VNNI that is u8 x s8 saturation; a dynamic u8s8 graph "
            f"also drifts through DynamicQuantizeMatMul's own rounding. The package is left as it was. Use a "
            f"saturation-free scheme ({safe}); the defaults are s8s8-7bit (static) and u8u8 (dynamic)"
        )
    return kernels


def _record_kernels(kernels: _Kernels, fp32: Sequence[_Graph], choices: Sequence[SegmentChoice],
                    stage: Path) -> dict[str, Any]:  # fmt: skip
    """Store the variant's oracle outputs on the reference sample (fp32 graphs where a segment stays
    fp32) for verify, and say what was checked here and on which CPU."""
    from edgeexit.profile.record import Machine
    from edgeexit.runtime.verify import int8_cpu_features

    chain = [f if c.precision == "fp32" else o for f, o, c in zip(fp32, kernels.oracle, choices, strict=True)]
    outputs = _chain(chain, kernels.x, kernels.context)
    target = stage / Path(INT8_REFERENCE_FILE).name
    partial = target.with_suffix(".partial.npz")
    np.savez(partial, **outputs)
    os.replace(partial, target)
    return {
        "file": INT8_REFERENCE_FILE,
        "what": "the variant's exit outputs on the reference sample, computed by its float oracle (exact integer "
        "arithmetic); verify holds this machine's kernels to them",
        "tolerance": KERNEL_TOLERANCE,
        "max_error_here": round(kernels.max_error, 6),
        "worst_output": kernels.worst,
        "machine": f"{Machine.current().describe()}; int8 features: {int8_cpu_features()}",
    }


def _chain(graphs: Sequence[_Graph], x: np.ndarray, context: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output but the hidden tensors, keyed ``segment/name``, with each segment fed the previous one's hidden."""
    found: dict[str, np.ndarray] = {}
    for graph in graphs:
        outputs = graph.run(x, context)
        found |= {f"{graph.spec.index}/{name}": v for name, v in outputs.items() if name != graph.spec.hidden}
        if graph.spec.hidden is not None:
            x = outputs[graph.spec.hidden]
    return found


def _range_error(got: np.ndarray, ref: np.ndarray) -> float:
    """The largest difference as a share of the reference's range (its largest magnitude)."""
    scale = float(np.abs(ref).max(initial=0.0))
    diff = float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max(initial=0.0))
    return diff / scale if scale > 0 else diff


# ---------------------------------------------------------------- measurements


def _single_inputs(graphs: Sequence[_Graph], data: _Batch, count: int) -> list[list[_Batch]]:
    """Per segment, its inputs for the first ``count`` samples one at a time (unpadded), as the
    device runs them: boundary k-1's fp32 hidden tensor for segment k."""
    found: list[list[_Batch]] = [[] for _ in graphs]
    for row in range(min(max(count, 1), len(data))):
        current = data.rows(row, row + 1).trimmed()
        for k, graph in enumerate(graphs):
            found[k].append(current)
            if graph.spec.hidden is not None:
                current = _Batch(graph.run(current.x, current.context)[graph.spec.hidden], current.context)
    return found


def _time_side_by_side(
    fp32: Sequence[_Graph],
    int8: Sequence[_Graph],
    data: _Batch,
    count: int,
    stage: Path,
    package: Package,
    warmup: int = 3,
) -> tuple[SegmentTiming, ...]:
    """Batch-1 median latency of every segment in both precisions on the same real inputs, fp32
    and int8 alternating (and swapping which goes first) so machine noise hits both alike."""
    singles = _single_inputs(fp32, data, count)
    timings = []
    for k, (a, b) in enumerate(zip(fp32, int8, strict=True)):
        samples = singles[k]
        times: dict[str, list[float]] = {"fp32": [], "int8": []}
        for i in range(-warmup, len(samples)):
            sample = samples[max(i, 0)]
            order = [("fp32", a), ("int8", b)] if i % 2 == 0 else [("int8", b), ("fp32", a)]
            for name, graph in order:
                tick = time.perf_counter()
                graph.run(sample.x, sample.context)
                if i >= 0:
                    times[name].append((time.perf_counter() - tick) * 1e3)
        spec = a.spec
        timings.append(
            SegmentTiming(
                segment=k,
                fp32_ms=statistics.median(times["fp32"]),
                int8_ms=statistics.median(times["int8"]),
                fp32_bytes=package.path(spec.file).stat().st_size,
                int8_bytes=(stage / f"{k}.onnx").stat().st_size,
            )
        )
    return tuple(timings)


def _chunks(data: _Batch, size: int = 256) -> Iterator[_Batch]:
    for start in range(0, len(data), size):
        yield data.rows(start, start + size).trimmed()


def _full_depth(graphs: Sequence[_Graph], manifest: Manifest, data: _Batch, segment_ms: tuple[float, ...]) -> FullDepth:
    """Every exit's logits and boundary similarity for every sample, as ``Engine.run_full`` records them."""
    chunks = ((chunk.x, chunk.context) for chunk in _chunks(data))
    logits, similarity = full_depth_outputs(graphs, manifest.exits, chunks)  # type: ignore[arg-type]
    return FullDepth(logits=logits, similarity=similarity, segment_ms=segment_ms)


def _alone_agreement(
    fp32: Sequence[_Graph], int8: Sequence[_Graph], manifest: Manifest, data: _Batch
) -> tuple[float | None, ...]:
    """Per segment k, the final exit's top-1 agreement with fp32 when segment k alone runs int8."""
    final = manifest.exits[-1].logits
    if final is None:
        return (None,) * len(fp32)
    same = np.zeros(len(fp32))
    for chunk in _chunks(data):
        boundaries, current = [], chunk.x
        for graph in fp32:  # segment k's fp32 input, and the fp32 answer
            boundaries.append(current)
            outputs = graph.run(current, chunk.context)
            current = outputs[graph.spec.hidden] if graph.spec.hidden else None
        reference = outputs[final].argmax(axis=-1)
        for k in range(len(fp32)):
            current = boundaries[k]
            for graph in (int8[k], *fp32[k + 1 :]):
                outputs = graph.run(current, chunk.context)
                current = outputs[graph.spec.hidden] if graph.spec.hidden else None
            same[k] += int(np.sum(outputs[final].argmax(axis=-1) == reference))
    return tuple(float(s / len(data)) for s in same)


def _choose(
    timings: Sequence[SegmentTiming],
    alone: Sequence[float | None],
    keep: frozenset[int],
    auto: bool,
    min_agreement: float,
) -> tuple[SegmentChoice, ...]:
    """Each segment's precision: fp32 when asked, or (``auto``) when int8 is not faster at batch 1
    or costs the final exit's agreement on its own."""
    choices = []
    for timing, agreement in zip(timings, alone, strict=True):
        k = timing.segment
        if k in keep:
            precision, reason = "fp32", "kept fp32 as asked"
        elif auto and timing.int8_ms >= timing.fp32_ms:
            precision, reason = "fp32", f"int8 not faster ({timing.ratio:.2f}x fp32 at batch 1)"
        elif auto and agreement is not None and agreement < min_agreement:
            precision = "fp32"
            reason = f"int8 alone: final-exit agreement {100 * agreement:.1f}% < {100 * min_agreement:g}%"
        else:
            precision, reason = "int8", f"{timing.ratio:.2f}x fp32 at batch 1" + (" (auto)" if auto else "")
        choices.append(SegmentChoice(k, precision, reason, agreement))
    return tuple(choices)


def _exit_changes(
    fp32: Sequence[_Graph], int8: Sequence[_Graph], manifest: Manifest, data: _Batch, y: np.ndarray
) -> tuple[ExitChange, ...]:
    zero = (0.0,) * len(fp32)
    a = _full_depth(fp32, manifest, data, zero)
    b = _full_depth(int8, manifest, data, zero)
    changes = []
    for k, (la, lb) in enumerate(zip(a.logits, b.logits, strict=True)):
        if la is None or lb is None:
            changes.append(ExitChange(k, None, None, None))
            continue
        pa, pb = la.argmax(axis=-1), lb.argmax(axis=-1)
        changes.append(ExitChange(k, float(np.mean(pa == y)), float(np.mean(pb == y)), float(np.mean(pa == pb))))
    return tuple(changes)


def _variant_report(
    options: QuantizeOptions,
    plan: _Plan,
    samples: int,
    data: _Batch,
    y: np.ndarray,
    eval_source: str | None,
    eval_samples: int,
    timings: Sequence[SegmentTiming],
    changes: Sequence[ExitChange],
    choices: Sequence[SegmentChoice],
    shape_inference: Sequence[str],
) -> dict[str, Any]:
    import onnxruntime

    mode, op_types, data_source = plan.mode, plan.op_types, options.data_source
    float_nodes = "the exits' score subgraphs (softmax onwards)"
    if op_types is not None:
        float_nodes += f"; every op but {', '.join(op_types)}"
    return {
        "tool": f"onnxruntime.quantization {onnxruntime.__version__}: quant_pre_process, quantize_{mode}",
        "mode": mode,
        "format": "QDQ" if mode == "static" else "QOperator (DynamicQuantizeLinear, MatMulInteger)",
        "per_channel": options.per_channel,
        "op_types": list(op_types) if op_types is not None else "all supported",
        "float_nodes": float_nodes,
        "fp32_segments": [c.segment for c in choices if c.precision == "fp32"],
        "calibration_samples": samples,
        "calibration_data": data_source,
        "calibration_data_sha256": data.digest(y),
        "evaluation_data": eval_source or data_source,
        "evaluation_samples": eval_samples,
        "exits": [
            {"exit": c.exit, "fp32_accuracy": c.fp32, "int8_accuracy": c.int8, "agreement": c.agreement}
            for c in changes
        ],
        "segments": [
            {
                "segment": t.segment,
                "precision": c.precision,
                "reason": c.reason,
                "fp32_ms": round(t.fp32_ms, 5),
                "int8_ms": round(t.int8_ms, 5),
                "fp32_bytes": t.fp32_bytes,
                "int8_bytes": t.int8_bytes,
                "int8_alone_final_agreement": c.alone_agreement,
                "shape_inference": inference,
            }
            for t, c, inference in zip(timings, choices, shape_inference, strict=True)
        ],
    }


# ---------------------------------------------------------------- commit


def _commit(root: Path, stage: Path, manifest: Manifest) -> None:
    """Move the staged ``int8/`` in and the manifest after it; on any failure, put back what was there.

    An older ``int8/`` is retired first and deleted only once the new manifest is in place, so the
    package on disk is always the old one or the new one (a hard crash between the two renames can
    leave the old manifest beside new int8 files: ``edgeexit verify`` then names them).
    """
    target = root / VARIANT_NAME
    retired = root / f".{VARIANT_NAME}.old-{os.getpid()}"
    had = target.exists()
    if had:
        os.replace(target, retired)
    try:
        os.replace(stage, target)
        try:
            atomic_write_text(root / MANIFEST_FILE, manifest.to_json())
        except BaseException:
            os.replace(target, stage)  # the caller removes the stage
            raise
    except BaseException:
        if had:
            os.replace(retired, target)
        raise
    if had:
        shutil.rmtree(retired, ignore_errors=True)


__all__ = [
    "DEFAULT_MIN_AGREEMENT",
    "DEFAULT_SAMPLES",
    "TRANSFORMER_OP_TYPES",
    "ExitChange",
    "Inputs",
    "QuantizeOptions",
    "QuantizeReport",
    "SegmentChoice",
    "SegmentTiming",
    "quantize_package",
]
