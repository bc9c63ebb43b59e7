"""``edgeexit verify``: is this package what export wrote, and does it still compute the same?

Checks, in order: the manifest's schema and version, every file's sha256, that each ONNX graph's
inputs and outputs are the ones the manifest declares, and that running the stored reference
input through the chained segments (and the monolithic graph) reproduces PyTorch's outputs.
Each tail's ``config.pbtxt`` must describe what the manifest says (codec, boundary, package_id,
the codec's inputs) and what its graph really takes and returns (names, datatypes, dims), since
Triton trusts the config; the tail fed the reference sample's encoded boundary tensor must
reproduce PyTorch's logits for that same encoded input.

Variants (other builds of the segments) run too, chained on the reference input like the fp32
segments: a ``tflite`` variant must reproduce the reference within the tolerances its export
checked LiteRT against ONNX with (a different LiteRT on the device shows here), or is reported
as not run when ``ai-edge-litert`` is absent. An ``int8`` variant cannot match fp32 to a
tolerance, but it must match itself: ``edgeexit quantize`` stored what its graphs compute in exact
integer arithmetic on the reference sample (``int8/reference.npz``, from a float oracle), and this
machine's integer kernels must reproduce every exit output within ``KERNEL_TOLERANCE`` of its
range (a CPU whose kernels saturate, x86 without VNNI on an unsafe scheme, fails here, loudly); a
note says how many reference samples' final predictions agree with fp32. A text encoder's token
outputs are compared on the attended tokens only (what a graph computes at padding is never read).
Runs on the device: ONNX Runtime, numpy and protobuf (to read config.pbtxt) only (and LiteRT
for a tflite variant, when installed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeexit.codecs import LOGITS, ORT_TYPES, WireTensor, create_codec
from edgeexit.errors import EdgeExitError, InputError, PackageError
from edgeexit.manifest import Manifest, SegmentVariant, TailSpec, TensorSpec
from edgeexit.package import Package, open_package
from edgeexit.parity import ParityCheck, compare
from edgeexit.repository import PARAM_BOUNDARY, PARAM_CODEC, PARAM_PACKAGE_ID, PLATFORM, read_config
from edgeexit.runtime.sessions import load_session
from edgeexit.signing import TrustedKeys
from edgeexit.transport.generated import model_config_pb2 as pb

#: Where an int8 variant keeps its oracle outputs on the reference sample (see ``edgeexit.int8_schemes``).
INT8_REFERENCE_FILE = "int8/reference.npz"
#: How far a CPU's int8 kernels may be from exact integer arithmetic, as a share of an output's
#: range. Measured with tools/bench_int8_schemes.py (docs/benchmarks.md): rounding-step flips moved
#: outputs up to 2.8%; saturating schemes 17.6-121%.
KERNEL_TOLERANCE = 0.10
#: /proc/cpuinfo flags that decide which integer kernels ONNX Runtime runs (x86 and Arm).
_INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm")

#: ONNX Runtime's tensor types as v2 / Triton datatypes (``TYPE_`` + this in config.pbtxt).
ORT_DATATYPES = {ort: v2 for v2, ort in ORT_TYPES.items()}


@dataclass(frozen=True)
class VerifyReport:
    package: Package
    files_checked: int
    checks: tuple[ParityCheck, ...]
    tails_checked: int = 0  # tails whose config.pbtxt matches the manifest and the graph
    #: What was run but has no pass/fail tolerance, or was not run and why (one line each).
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def verify_package(path: str | Path, trusted_keys: TrustedKeys | None = None) -> VerifyReport:
    """Schema, version, hashes (and, given ``trusted_keys``, the manifest's signature first), then
    every graph's signature and parity against the stored reference outputs."""
    package = open_package(path, trusted_keys=trusted_keys)
    manifest = package.manifest
    if manifest.reference is None:
        raise PackageError(f"{path}: the manifest has no reference sample to verify parity against")
    reference = load_reference(package)
    atol, rtol = manifest.reference.atol, manifest.reference.rtol
    checks: list[ParityCheck] = []
    x, context = reference_inputs(manifest, reference)
    available = {manifest.input.name: x, **context}  # every tensor so far, by name: what a segment takes
    for segment in manifest.segments:
        session = load_session(package.path(segment.file))
        _check_signature(session, segment.inputs, segment.outputs, segment.file)
        names = [o.name for o in segment.outputs]
        feeds = {spec.name: available[spec.name] for spec in segment.inputs}
        outputs = _run(session, names, feeds, segment.file)
        for name, got in zip(names, outputs, strict=True):
            key = f"{segment.index}/{name}"
            if key not in reference:
                raise PackageError(f"{manifest.reference.file} lacks the expected output {key!r}")
            checks.append(compare(f"segment {segment.index}", name, reference[key], got, atol, rtol))
        available.update(zip(names, outputs, strict=True))
    if manifest.monolithic:
        session = load_session(package.path(manifest.monolithic))
        # the monolithic graph computes every segment's outputs but the boundary tensors, in order
        declared = [o for s in manifest.segments for o in s.outputs if o.name not in s.boundary]
        inputs = (manifest.input.tensor, *manifest.input.context)
        _check_signature(session, inputs, tuple(declared), manifest.monolithic)
        names = [o.name for o in declared]
        feeds = {manifest.input.name: reference["input"], **context}
        outputs = _run(session, names, feeds, manifest.monolithic)
        by_name = {key.split("/", 1)[1]: value for key, value in reference.items() if key[:1].isdigit()}
        for name, got in zip(names, outputs, strict=True):
            if name in by_name:
                checks.append(compare("monolithic", name, by_name[name], got, atol, rtol))
    checks += [_check_tail(package, tail, reference) for tail in manifest.tails]
    notes: list[str] = []
    for variant in manifest.variants:
        found, note = _check_variant(package, variant, reference, context)
        checks += found
        notes += [note] if note else []
    return VerifyReport(package, len(manifest.files), tuple(checks), len(manifest.tails), tuple(notes))


def _check_variant(
    package: Package, variant: SegmentVariant, reference: dict[str, np.ndarray], context: dict[str, np.ndarray]
) -> tuple[list[ParityCheck], str | None]:
    """The variant's segments chained on the reference input: parity for tflite, a run and the
    final predictions' agreement for int8 (see the module docstring)."""
    from edgeexit.runtime.backends import open_segment

    manifest = package.manifest
    if variant.backend == "tflite" and not _litert_installed():
        return [], f"variant {variant.name}: not run, ai-edge-litert is not installed (pip install 'edgeexit[tflite]')"
    atol = float(variant.report.get("atol", manifest.reference.atol))  # type: ignore[union-attr]
    rtol = float(variant.report.get("rtol", manifest.reference.rtol))  # type: ignore[union-attr]
    mask = context.get("attention_mask")
    checks: list[ParityCheck] = []
    x = reference["input"]
    carried: dict[str, np.ndarray] = dict(context)
    by_segment: dict[int, dict[str, np.ndarray]] = {}
    for file, spec in zip(variant.files, manifest.segments, strict=True):
        segment = open_segment(variant.backend, package.path(file), spec, threads=1, cache_dir=None,
                               sha256=manifest.files[file])  # fmt: skip
        if variant.backend == "onnxruntime":
            _check_signature(segment.session, spec.inputs, spec.outputs, file)  # type: ignore[attr-defined]
        try:
            outputs = segment.run(x, carried)
        except InputError as err:  # e.g. a reference longer than the TFLite graphs' longest token length
            return checks, f"variant {variant.name}: not run on the reference sample: {err}"
        except EdgeExitError:
            raise
        except Exception as err:  # the runtimes raise their own untyped errors
            raise PackageError(f"{file} failed to run on the reference sample: {str(err)[:300]}") from None
        if variant.precision == "fp32":
            for name, got in outputs.items():
                ref = reference[f"{spec.index}/{name}"]
                checks.append(compare(f"{variant.name} segment {spec.index}", name, ref, got, atol, rtol, mask))
        by_segment[spec.index] = outputs
        if spec.hidden is not None:
            x = outputs[spec.hidden]
            carried.update((name, outputs[name]) for name in spec.carries)
    if variant.precision == "fp32":
        return checks, None
    kernels, kernel_note = _check_int8_kernels(package, variant, by_segment)
    checks += kernels
    final = manifest.exits[-1]
    logits = final.logits or ""
    if f"{final.segment}/{logits}" not in reference:
        return checks, f"variant {variant.name}: ran on the reference sample (no final logits stored to compare)"
    want = reference[f"{final.segment}/{logits}"].argmax(axis=-1)
    agree = int(np.sum(outputs[logits].argmax(axis=-1) == want))
    return checks, (
        f"variant {variant.name}: {kernel_note}; its final exit agrees with fp32 on {agree} of {len(want)} "
        "reference sample(s) (agreement with fp32 is measured, not held to a tolerance: edgeexit quantize "
        "reports its accuracy)"
    )


def _check_int8_kernels(
    package: Package, variant: SegmentVariant, by_segment: dict[int, dict[str, np.ndarray]]
) -> tuple[list[ParityCheck], str]:
    """This machine's kernels against the exact integer arithmetic recorded at quantize time."""
    record = variant.report.get("kernel_check")
    if not isinstance(record, dict) or "file" not in record:
        return [], (
            "ran, but was quantized before edgeexit recorded its exact outputs, so this CPU's int8 kernels "
            "cannot be checked (re-run edgeexit quantize)"
        )
    tolerance = float(record.get("tolerance", KERNEL_TOLERANCE))
    try:
        with np.load(package.path(str(record["file"])), allow_pickle=False) as stored:
            oracle = {key: stored[key] for key in stored.files}
    except Exception as err:
        raise PackageError(f"cannot read the int8 variant's recorded outputs {record['file']}: {err}") from None
    checks = []
    for key, want in oracle.items():
        segment, _, name = key.partition("/")
        got = by_segment.get(int(segment), {}).get(name)
        if got is None:
            raise PackageError(f"{record['file']} holds {key!r}, which no segment of variant {variant.name} outputs")
        checks.append(compare(f"{variant.name} kernels vs exact, segment {segment}", name, want, got, 0.0, tolerance))
    here = int8_cpu_features()
    if all(c.ok for c in checks):
        return checks, f"this CPU's int8 kernels ({here}) reproduce its exact integer outputs within {tolerance:.0%}"
    return checks, (
        f"DRIFTED: this CPU's int8 kernels ({here}) do not reproduce the exact integer outputs recorded when it was "
        f"quantized (on {record.get('machine', 'an unrecorded machine')}) within {tolerance:.0%} of their range: "
        f"its answers here are not the ones calibrated. On x86 without VNNI, likely u8 x s8 saturation (scheme "
        f"{variant.report.get('scheme', {}).get('name', 'unrecorded')!r}); re-quantize with a saturation-free "
        "scheme (edgeexit quantize --scheme s8s8-7bit for images, u8u8 for text), or run --precision fp32"
    )


def int8_cpu_features(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's flags that pick ONNX Runtime's integer kernels, e.g. ``avx2`` (saturating u8s8)
    or ``avx2 avx512f avx512_vnni`` (exact), or ``asimd asimddp`` on an Arm board."""
    import platform

    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            flags |= set(value.split())
    found = [flag for flag in _INT8_FLAGS if flag in flags]
    return f"{platform.machine()}: {' '.join(found) if found else 'no SIMD int8 flags read'}"


def _litert_installed() -> bool:
    try:
        import ai_edge_litert  # noqa: F401
    except ImportError:
        return False
    return True


def tail_reference_key(model: str) -> str:
    """The reference.npz array holding PyTorch's logits for tail ``model`` fed the encoded reference sample."""
    return f"tails/{model}/{LOGITS}"


def _check_tail(package: Package, tail: TailSpec, reference: dict[str, np.ndarray]) -> ParityCheck:
    """Config vs manifest, graph vs config, then the graph on the reference sample's boundary tensors."""
    manifest = package.manifest
    if tail.boundary == -1:  # the input tail: its reference inputs are the model inputs
        specs = (manifest.input.tensor, *manifest.input.context)
        keys = ["input", *(f"context/{spec.name}" for spec in manifest.input.context)]
    else:
        segment = manifest.segments[tail.boundary]
        if segment.hidden is None:
            raise PackageError(f"tail {tail.model} starts at boundary {tail.boundary}, which has no hidden tensor")
        specs = tuple(segment.output(name) for name in segment.boundary)
        keys = [f"{tail.boundary}/{name}" for name in segment.boundary]
    dims = [tuple(-1 if d is None else d for d in spec.shape[1:]) for spec in specs]
    try:
        codec = create_codec(tail.codec)
    except EdgeExitError as err:
        raise PackageError(f"tail {tail.model}: {err}; this edgeexit cannot encode its input") from None
    config = read_config(package.path(tail.config))
    _check_config(config, tail, manifest, codec.boundary_wire_inputs(dims))
    session = load_session(package.path(tail.file))
    _check_tail_signature(session, config, tail.file)
    key = tail_reference_key(tail.model)
    for needed in (key, *keys):
        if needed not in reference:
            raise PackageError(f"{manifest.reference.file} lacks the expected array {needed!r}")  # type: ignore[union-attr]
    feed = codec.encode_boundary([reference[k] for k in keys]).tensors()
    (got,) = _run(session, [LOGITS], feed, tail.file)
    atol, rtol = manifest.reference.atol, manifest.reference.rtol  # type: ignore[union-attr]
    return compare(f"tail {tail.model}", LOGITS, reference[key], got, atol, rtol)


def _check_config(config: pb.ModelConfig, tail: TailSpec, manifest: Manifest, wire: tuple[WireTensor, ...]) -> None:
    """The config.pbtxt says what the manifest says: Triton and ``edgeexit serve`` act on the config."""
    declared = {
        "name": config.name or tail.model,
        "platform": config.platform,
        PARAM_CODEC: config.parameters[PARAM_CODEC].string_value,
        PARAM_BOUNDARY: config.parameters[PARAM_BOUNDARY].string_value,
        PARAM_PACKAGE_ID: config.parameters[PARAM_PACKAGE_ID].string_value,
        "inputs": _config_tensors(config.input),
        "outputs": _config_tensors(config.output),
    }
    expected = {
        "name": tail.model,
        "platform": PLATFORM,
        PARAM_CODEC: tail.codec,
        PARAM_BOUNDARY: str(tail.boundary),
        PARAM_PACKAGE_ID: manifest.package_id,
        "inputs": [(w.name, w.datatype, list(w.dims)) for w in wire],
        "outputs": [(LOGITS, "FP32", [manifest.num_classes])],
    }
    wrong = [
        f"{key} is {declared[key]!r}, expected {value!r}" for key, value in expected.items() if declared[key] != value
    ]
    if config.max_batch_size <= 0:
        wrong.append(f"max_batch_size is {config.max_batch_size}, expected > 0 (the batch axis comes first)")
    if wrong:
        raise PackageError(f"{tail.config} does not describe tail {tail.model} of this package: {'; '.join(wrong)}")


def _check_tail_signature(session, config: pb.ModelConfig, file: str) -> None:
    """The graph takes and returns what its config.pbtxt declares, with a dynamic batch axis first."""
    found = (_session_tensors(session.get_inputs()), _session_tensors(session.get_outputs()))
    declared = (_config_tensors(config.input), _config_tensors(config.output))
    if found != declared:
        raise PackageError(
            f"{file} has inputs {found[0]} and outputs {found[1]} (name, datatype, dims after the batch axis); "
            f"its config.pbtxt declares {declared[0]} and {declared[1]}"
        )
    for arg in [*session.get_inputs(), *session.get_outputs()]:
        if not arg.shape or isinstance(arg.shape[0], int):
            raise PackageError(f"{file} {arg.name} has shape {arg.shape}; expected a dynamic batch axis first")


def _config_tensors(tensors) -> list[tuple[str, str, list[int]]]:
    return [(t.name, pb.DataType.Name(t.data_type).removeprefix("TYPE_"), list(t.dims)) for t in tensors]


def _session_tensors(args) -> list[tuple[str, str, list[int]]]:
    return [
        (a.name, ORT_DATATYPES.get(a.type, a.type), [d if isinstance(d, int) else -1 for d in a.shape[1:]])
        for a in args
    ]


def reference_inputs(manifest: Manifest, reference: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The stored reference input, and its context inputs by name (a text encoder's attention
    mask, fed to every segment beside its input), as export wrote them into reference.npz."""
    file = manifest.reference.file if manifest.reference else "the reference file"
    if "input" not in reference:
        raise PackageError(f"{file} lacks the expected array 'input' (the reference sample)")
    context = {}
    for spec in manifest.input.context:
        key = f"context/{spec.name}"
        if key not in reference:
            raise PackageError(f"{file} lacks the expected context input {key!r}")
        context[spec.name] = reference[key]
    return reference["input"], context


def load_reference(package: Package) -> dict[str, np.ndarray]:
    """Every array of the package's reference.npz, by name."""
    assert package.manifest.reference is not None
    file = package.path(package.manifest.reference.file)
    try:
        with np.load(file, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except Exception as err:
        raise PackageError(f"cannot read the reference sample {file}: {err}") from None


def _run(session, names: list[str], feed: dict[str, np.ndarray], file: str) -> list[np.ndarray]:
    try:
        return session.run(names, feed)
    except Exception as err:  # onnxruntime raises its own untyped errors
        raise PackageError(f"ONNX Runtime failed to run {file} on the reference sample: {str(err)[:300]}") from None


def _check_signature(session, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], file: str) -> None:
    declared = [i.name for i in inputs], [o.name for o in outputs]
    found = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
    if declared != found:
        raise PackageError(
            f"{file} has inputs {found[0]} and outputs {found[1]}; "
            f"the manifest declares {declared[0]} and {declared[1]}"
        )
    for spec, arg in zip(outputs, session.get_outputs(), strict=True):
        rank = len(arg.shape)
        if rank != len(spec.shape):
            raise PackageError(f"{file} output {spec.name} has rank {rank}; the manifest declares shape {spec.shape}")
