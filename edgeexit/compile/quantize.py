"""Static int8 quantization of a package's segments: ``edgeexit quantize``.

Each segment graph goes through ONNX Runtime's ``quant_pre_process`` (shape inference and the
basic graph optimizations the quantizer expects) and then ``quantize_static`` in the QDQ format
with per-channel weight scales. Activation ranges are calibrated on real data fed through the
package's own fp32 segments: segment k sees boundary k-1's real hidden tensors, exactly what it
will see at run time, rather than random tensors or a whole-model pass it never runs.

Each exit's last layer (the one producing its logits) and its score subgraph (softmax onwards)
stay in float: they cost little, and int8 logits would round every confidence to a step of the
logits' range (measured on digits: top-1 agreement with fp32 97.9% -> 98.3% at the first exit).

The int8 segments are a ``SegmentVariant`` of the package (``int8/k.onnx``, hashed in the
manifest), with its own thresholds: calibration (``edgeexit.calibration``) is rerun on the int8
segments' full-depth outputs with the target of the manifest's own calibration record, because
quantization shifts every exit's confidence. The package_id (the fp32 weights) does not change.

Everything is staged beside the package and moved in only when every step succeeded, then the
manifest is replaced atomically: a failed run leaves the package as it was.

Workstation step, but no torch: onnx and onnxruntime.quantization only.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeexit.calibration import Choice, calibrate_manifest, check_labels, digest_data
from edgeexit.criteria import Boundary, create_criterion
from edgeexit.errors import DataError, EdgeExitError, ExportError, PackageError
from edgeexit.fileio import atomic_write_text, sha256_file
from edgeexit.manifest import CRITERIA, MANIFEST_FILE, Manifest, SegmentSpec, SegmentVariant
from edgeexit.package import Package, open_package
from edgeexit.runtime.engine import FullDepth
from edgeexit.runtime.sessions import load_session

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
    outcome on the calibration data; ``exits`` were measured on ``eval_source``."""

    package: Package
    variant: SegmentVariant
    segments: tuple[SegmentTiming, ...]
    exits: tuple[ExitChange, ...]
    choice: Choice
    eval_samples: int
    eval_source: str
    calibration_samples: int


@dataclass(frozen=True)
class _Graph:
    """A segment graph in an ONNX Runtime session, fed and read by the manifest's tensor names."""

    spec: SegmentSpec
    session: Any

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        names = [o.name for o in self.spec.outputs]
        return dict(zip(names, self.session.run(names, {self.spec.inputs[0].name: x}), strict=True))


def quantize_package(
    package: str | os.PathLike[str] | Package,
    x: np.ndarray,
    y: np.ndarray,
    *,
    eval_x: np.ndarray | None = None,
    eval_y: np.ndarray | None = None,
    samples: int = DEFAULT_SAMPLES,
    per_channel: bool = True,
    max_drop: float | None = None,
    criterion: str | None = None,
    margin: float | None = None,
    threads: int = 1,
    timing_samples: int = 32,
    data_source: str = "calibration data",
    eval_source: str | None = None,
) -> QuantizeReport:
    """Quantize every segment of ``package`` to int8 and add them as its ``int8`` variant.

    ``x`` / ``y`` are labelled model-ready inputs (``edgeexit.runtime.inputs.prepare_dataset``):
    the first ``samples`` of them calibrate the activation ranges, all of them the int8 exits'
    thresholds. ``eval_x`` / ``eval_y`` (default: ``x`` / ``y``) measure each exit's accuracy in
    fp32 and int8. ``max_drop``, ``criterion`` and ``margin`` default to the manifest's calibration
    record (else 1 point, each exit's own criterion, 1 standard error), so the int8 thresholds meet
    the target the fp32 ones were chosen for. Replaces an existing ``int8`` variant.
    """
    opened = package if isinstance(package, Package) else open_package(package)
    manifest = opened.manifest
    _check_supported(manifest)
    x = _check_inputs(x, manifest, data_source)
    y = check_labels(y, len(x), manifest.num_classes)
    if eval_x is None or eval_y is None:
        if (eval_x is None) != (eval_y is None):
            raise DataError("give both eval_x and eval_y, or neither (then the calibration data is evaluated)")
        eval_x, eval_y, eval_source = x, y, eval_source or data_source
    else:
        eval_x = _check_inputs(eval_x, manifest, eval_source or "evaluation data")
        eval_y = check_labels(eval_y, len(eval_x), manifest.num_classes)
    if samples < 1:
        raise DataError(f"samples is {samples}; expected at least 1 calibration sample")
    if criterion is not None and criterion not in CRITERIA:
        raise EdgeExitError(f"unknown criterion {criterion!r}; expected one of {', '.join(CRITERIA)}")
    record = manifest.calibration
    target_drop = max_drop if max_drop is not None else (record.max_drop if record else DEFAULT_MAX_DROP)
    target_margin = margin if margin is not None else (record.margin if record else DEFAULT_MARGIN)

    fp32 = [_Graph(s, load_session(opened.path(s.file), threads)) for s in manifest.segments]
    inputs = _segment_inputs(fp32, x[:samples])
    root = opened.root
    stage = Path(tempfile.mkdtemp(prefix=f".{VARIANT_NAME}.", suffix=".partial", dir=root))
    try:
        stage.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would hide int8/ from a daemon running as another user
        with tempfile.TemporaryDirectory(prefix="edgeexit-quantize-") as scratch:
            for segment, batches in zip(manifest.segments, inputs, strict=True):
                _quantize_segment(opened.path(segment.file), stage / f"{segment.index}.onnx", segment, batches,
                                  per_channel=per_channel, scratch=Path(scratch))  # fmt: skip
        int8 = [_Graph(s, _load_int8(stage / f"{s.index}.onnx", s, threads)) for s in manifest.segments]
        timings = _time_side_by_side(fp32, int8, inputs, timing_samples, stage, opened)
        full_int8 = _full_depth(int8, manifest, x, tuple(t.int8_ms for t in timings))
        calibrated, choice = calibrate_manifest(
            manifest, full_int8, y, criterion=criterion, max_drop=target_drop, data_sha256=digest_data(x, y),
            margin=target_margin,
        )  # fmt: skip
        changes = _exit_changes(fp32, int8, manifest, eval_x, eval_y)
        files = tuple(f"{VARIANT_NAME}/{s.index}.onnx" for s in manifest.segments)
        hashes = {name: sha256_file(stage / Path(name).name) for name in files}
        report = _variant_report(per_channel, samples, x, y, data_source, eval_source, len(eval_y), timings, changes)
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
        calibration_samples=min(samples, len(x)),
    )


# ---------------------------------------------------------------- checks


def _check_supported(manifest: Manifest) -> None:
    if manifest.input.context:
        names = ", ".join(c.name for c in manifest.input.context)
        raise PackageError(
            f"{manifest.model_name} takes context inputs ({names}): int8 quantization supports models with one "
            "tensor input (image models) for now; run this package in fp32"
        )


def _check_inputs(x: object, manifest: Manifest, source: str) -> np.ndarray:
    spec = manifest.input
    shape = "x".join("N" if d is None else str(d) for d in spec.shape)
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        found = f"{x.dtype} array" if isinstance(x, np.ndarray) else type(x).__name__
        raise DataError(f"{source} is a {found}; expected float32 model-ready inputs shaped {shape}")
    fits = x.ndim == len(spec.shape) and all(
        w is None or w == g for w, g in zip(spec.shape[1:], x.shape[1:], strict=True)
    )
    if not fits:
        raise DataError(
            f"{source} has samples shaped {tuple(x.shape[1:])} (array {tuple(x.shape)}); the package "
            f"{manifest.model_name} expects {shape} ({spec.layout}): pass data prepared for this model"
        )
    if len(x) == 0:
        raise DataError(f"{source} has no samples; expected labelled data to calibrate and evaluate on")
    return np.ascontiguousarray(x)


# ---------------------------------------------------------------- fp32 boundaries


def _segment_inputs(graphs: Sequence[_Graph], x: np.ndarray) -> list[list[np.ndarray]]:
    """Per segment, its real inputs in calibration batches: the model input for segment 0, boundary
    k-1's fp32 hidden tensor for segment k."""
    found: list[list[np.ndarray]] = [[] for _ in graphs]
    for start in range(0, len(x), _CALIBRATION_BATCH):
        current = x[start : start + _CALIBRATION_BATCH]
        for k, graph in enumerate(graphs):
            found[k].append(current)
            if graph.spec.hidden is not None:
                current = graph.run(current)[graph.spec.hidden]
    return found


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over precomputed batches."""

    def __init__(self, name: str, batches: Sequence[np.ndarray]) -> None:
        self._items: Iterator[dict[str, np.ndarray]] = iter([{name: b} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


# ---------------------------------------------------------------- quantization


def _quantize_segment(
    source: Path, target: Path, spec: SegmentSpec, batches: Sequence[np.ndarray], *, per_channel: bool, scratch: Path
) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = scratch / f"{spec.index}.pre.onnx"
    where = f"segment {spec.index} ({spec.file})"
    try:
        quant_pre_process(str(source), str(prepared))
    except Exception as err:  # onnxruntime raises untyped errors from shape inference and its optimizer
        raise ExportError(
            f"{where}: quant_pre_process failed ({type(err).__name__}: {str(err)[:300]}); the graph cannot be quantized"
        ) from None
    model = onnx.load(str(prepared))
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"edgeexit_node_{i}"  # the quantizer excludes nodes by name
    excluded = _score_nodes(model, spec)
    onnx.save(model, str(prepared))
    try:
        quantize_static(
            str(prepared),
            str(target),
            _Reader(spec.inputs[0].name, batches),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=excluded,
        )
    except Exception as err:  # as above: ONNX Runtime's errors are not typed
        raise ExportError(f"{where}: quantize_static failed ({type(err).__name__}: {str(err)[:300]})") from None


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


# ---------------------------------------------------------------- measurements


def _time_side_by_side(
    fp32: Sequence[_Graph],
    int8: Sequence[_Graph],
    inputs: Sequence[Sequence[np.ndarray]],
    count: int,
    stage: Path,
    package: Package,
    warmup: int = 3,
) -> tuple[SegmentTiming, ...]:
    """Batch-1 median latency of every segment in both precisions on the same real inputs, fp32
    and int8 alternating (and swapping which goes first) so machine noise hits both alike."""
    timings = []
    for k, (a, b) in enumerate(zip(fp32, int8, strict=True)):
        samples = [row[None] for batch in inputs[k] for row in batch][: max(count, 1)]
        times: dict[str, list[float]] = {"fp32": [], "int8": []}
        for i in range(-warmup, len(samples)):
            sample = samples[max(i, 0)]
            order = [("fp32", a), ("int8", b)] if i % 2 == 0 else [("int8", b), ("fp32", a)]
            for name, graph in order:
                tick = time.perf_counter()
                graph.run(sample)
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


def _full_depth(
    graphs: Sequence[_Graph], manifest: Manifest, x: np.ndarray, segment_ms: tuple[float, ...]
) -> FullDepth:
    """Every exit's logits and boundary similarity for every sample, as ``Engine.run_full`` records them."""
    logits: list[list[np.ndarray]] = [[] for _ in graphs]
    similarity: list[list[np.ndarray]] = [[] for _ in graphs]
    similar = create_criterion("similarity")
    for start in range(0, len(x), 256):
        current, previous = x[start : start + 256], None
        for k, graph in enumerate(graphs):
            outputs = graph.run(current)
            name = manifest.exits[k].logits
            if name is not None:
                logits[k].append(outputs[name])
            hidden = outputs.get(graph.spec.hidden) if graph.spec.hidden else None
            if hidden is not None:
                similarity[k].append(similar.score(Boundary(None, hidden, previous)))
                previous = current = hidden
            else:
                similarity[k].append(np.zeros(len(current), np.float32))
    return FullDepth(
        logits=tuple(np.concatenate(parts) if parts else None for parts in logits),
        similarity=tuple(np.concatenate(parts) for parts in similarity),
        segment_ms=segment_ms,
    )


def _exit_changes(
    fp32: Sequence[_Graph], int8: Sequence[_Graph], manifest: Manifest, x: np.ndarray, y: np.ndarray
) -> tuple[ExitChange, ...]:
    zero = (0.0,) * len(fp32)
    a = _full_depth(fp32, manifest, x, zero)
    b = _full_depth(int8, manifest, x, zero)
    changes = []
    for k, (la, lb) in enumerate(zip(a.logits, b.logits, strict=True)):
        if la is None or lb is None:
            changes.append(ExitChange(k, None, None, None))
            continue
        pa, pb = la.argmax(axis=-1), lb.argmax(axis=-1)
        changes.append(ExitChange(k, float(np.mean(pa == y)), float(np.mean(pb == y)), float(np.mean(pa == pb))))
    return tuple(changes)


def _variant_report(
    per_channel: bool,
    samples: int,
    x: np.ndarray,
    y: np.ndarray,
    data_source: str,
    eval_source: str | None,
    eval_samples: int,
    timings: Sequence[SegmentTiming],
    changes: Sequence[ExitChange],
) -> dict[str, Any]:
    import onnxruntime

    return {
        "tool": f"onnxruntime.quantization {onnxruntime.__version__}: quant_pre_process, quantize_static",
        "format": "QDQ",
        "per_channel": per_channel,
        "activations": "int8 (asymmetric, MinMax)",
        "weights": "int8 (symmetric)",
        "float_nodes": "the exits' score subgraphs (softmax onwards)",
        "calibration_samples": min(samples, len(x)),
        "calibration_data": data_source,
        "calibration_data_sha256": digest_data(x, y),
        "evaluation_data": eval_source or data_source,
        "evaluation_samples": eval_samples,
        "exits": [
            {"exit": c.exit, "fp32_accuracy": c.fp32, "int8_accuracy": c.int8, "agreement": c.agreement}
            for c in changes
        ],
        "segments": [
            {
                "segment": t.segment,
                "fp32_ms": round(t.fp32_ms, 5),
                "int8_ms": round(t.int8_ms, 5),
                "fp32_bytes": t.fp32_bytes,
                "int8_bytes": t.int8_bytes,
            }
            for t in timings
        ],
    }


# ---------------------------------------------------------------- commit


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    "DEFAULT_SAMPLES",
    "ExitChange",
    "QuantizeReport",
    "SegmentTiming",
    "quantize_package",
]
