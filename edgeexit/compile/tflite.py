"""TFLite (LiteRT) segments: each segment graph converted by litert-torch, checked against ONNX.

litert-torch (extra ``[tflite-export]``) converts a torch module straight to ``.tflite`` through
``torch.export``; no TensorFlow. The segments it converts are the very ``SegmentGraph`` modules
the ONNX graphs came from, so the ``tflite`` variant has the same tensors, in the same order, as
the manifest's segments (``edgeexit.runtime.litert_backend`` maps them by position and checks
the shapes at load).

Batch: litert-torch keeps a dynamic batch axis when it is asked to (``dynamic_shapes``) and the
traced sample has a batch of at least 2 (``torch.export`` specializes sizes 0 and 1), and the
interpreter then runs any batch after ``resize_tensor_input``. Every axis the manifest marks
dynamic (None) is exported dynamic; axes at the same position share one dimension (a
transformer's sequence axis in its hidden tensor and its attention mask). A model that will not
export that way is converted at batch 1 instead (``report["batch"]`` says which) and the
runtime runs its batches sample by sample: resizing a fixed-shape graph fails in XNNPACK.

Text encoders (a token axis besides the batch, and an ``attention_mask`` context input) are
converted with static shapes: batch 1 and fixed token lengths (``sequence_length``, default
``DEFAULT_SEQUENCE_LENGTHS``), one ``tokens_<L>`` signature per length in each segment's file,
sharing its weights (all-MiniLM-L6-v2's layer: 7.14 MB at one length, 7.37 MB at eight), so a
short text runs at a short length. litert-torch 0.10.0 lowers ``unsqueeze``, ``view`` and slicing
through jax with static shapes only, so any dynamic axis fails in the first
``mask.unsqueeze(-1)`` or ``mask[:, None, None, :]`` ("broadcast_in_dim shape must have every
element be nonnegative"; measured on the tiny masked encoder and on all-MiniLM-L6-v2, with the
batch, the tokens or both dynamic, whatever the mask's dtype). The runtime pads shorter inputs
with masked-out tokens (ids 0, mask 0) and crops the token outputs back, so the real tokens'
outputs are unchanged; the lengths are recorded in ``report["sequence_lengths"]`` (the longest
also in ``report["sequence_length"]``) and in the graphs' signatures.

Parity: the converted graphs run on LiteRT against the ONNX segments in ``stage`` on the same
inputs, per segment (both given ONNX's input to that segment, at batch N and at batch 1) and
chained (each backend fed its own previous hidden tensor), and for a text encoder once more at
each of its token lengths (the samples padded or cut to it), with export's tolerances; any output
beyond them fails the conversion with every output's max difference. A text encoder's token
outputs are compared on the attended tokens only (``attention_mask`` 1): what a graph computes
at padding positions is never read.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeexit.compile.exporter import shaped_like_forward
from edgeexit.compile.graphs import SegmentGraph, exit_score
from edgeexit.compile.model import MultiExitModel
from edgeexit.errors import ExportError
from edgeexit.fileio import atomic_write_bytes, sha256_file
from edgeexit.manifest import IN_GRAPH_CRITERIA, LEARNED_CRITERION, Manifest, SegmentSpec, SegmentVariant
from edgeexit.package import Package, open_package
from edgeexit.parity import ParityCheck, compare
from edgeexit.runtime.litert_backend import TOKEN_SIGNATURE, LiteRtSegment
from edgeexit.runtime.sessions import load_session

VARIANT = "tflite"
DIRECTORY = "tflite"
EXPORT_EXTRA = "pip install -c constraints.txt 'edgeexit[tflite-export]'"
#: LiteRT (XNNPACK) sums in another order than ONNX Runtime (MLAS): on EfficientNet-Lite0 the
#: first boundary's ReLU6 activations (|x| up to 6) differed by up to 5.9e-4 while its logits
#: agreed to 1.3e-5, so hidden tensors get a looser absolute tolerance than export's 1e-4.
DEFAULT_ATOL = 1e-3
DEFAULT_RTOL = 1e-3
#: The token lengths text segments are converted at: a request runs at the shortest that holds
#: it (padded to it), and nothing longer than the last runs. Short steps where texts are short:
#: a padded token costs what a real one does, and each length adds ~20 KB to a MiniLM layer.
DEFAULT_SEQUENCE_LENGTHS = (8, 16, 24, 32, 40, 48, 56, 64, 96, 128)
DEFAULT_SEQUENCE_LENGTH = DEFAULT_SEQUENCE_LENGTHS[-1]
#: The context input whose 0s mark padding tokens (BERT-like encoders; edgeexit.compile.adapters.bert).
MASK_NAME = "attention_mask"


def write_tflite_variant(
    model: MultiExitModel,
    stage: Path,
    manifest: Manifest,
    inputs: np.ndarray | torch.Tensor,
    context: Sequence[np.ndarray | torch.Tensor] | Mapping[str, np.ndarray | torch.Tensor] = (),
    *,
    criterion: str | None = "auto",
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    out: Path | None = None,
    sequence_length: int | Sequence[int] | None = None,
) -> tuple[SegmentVariant, dict[str, str]]:
    """Convert every segment of ``model`` to ``tflite/<k>.tflite`` and check it against ONNX.

    ``stage`` holds the package's ONNX segments (``manifest.segments[k].file``); the ``.tflite``
    files are written under ``out`` (default ``stage``). ``inputs`` are the parity samples (N x
    the input shape, real data where possible; N >= 2 keeps the batch axis dynamic), ``context``
    the matching context tensors, in ``manifest.input.context`` order or by name (an
    ``attention_mask``: every segment input after the first). ``criterion`` is the in-graph score
    criterion the ONNX segments were exported with ("auto": the one the manifest's scored exits
    name; None: no score outputs). ``sequence_length`` is the token length, or lengths, a text
    encoder's segments are converted at (default ``DEFAULT_SEQUENCE_LENGTHS``): a request runs at
    the shortest that holds it, padded to it, and the longest is the most they take; models
    without a token axis refuse it.
    Returns the variant for ``Manifest.with_variant`` and the
    sha256 of each file, keyed by its package-relative path. Raises ExportError when litert-torch
    is not installed, a segment does not convert, or LiteRT disagrees with ONNX beyond atol/rtol.
    """
    litert_torch = _converter()
    segments = manifest.segments
    if len(segments) != model.num_exits:
        raise ExportError(f"the manifest has {len(segments)} segments but the model has {model.num_exits}")
    if criterion == "auto":
        criterion = _graph_criterion(manifest)
    started = time.perf_counter()
    given = _named_context(manifest, context)
    x_onnx = np.ascontiguousarray(_numpy(inputs))
    lengths = _token_lengths(manifest, sequence_length, x_onnx)
    tokens = lengths[-1] if lengths else None
    target = Path(out) if out is not None else Path(stage)
    (target / DIRECTORY).mkdir(parents=True, exist_ok=True)
    x_tflite = x_onnx
    model.eval()
    parity: list[ParityCheck] = []
    files: list[str] = []
    batches: list[str] = []
    seconds: list[float] = []
    # an ONNX exit's learned gate has no LiteRT twin (max_prob's score stands in; the engine scores
    # the gate in numpy on LiteRT), so its score is not compared
    gated = {e.score for e in manifest.exits if e.gate_inputs and e.score}

    def compared(names: list[str]) -> list[str]:
        return [name for name in names if name not in gated]

    given_chain = dict(given)  # the LiteRT chain's own boundary tensors, for the chained comparison
    for spec in segments:
        k = spec.index
        ctx = _context_for(spec, given)
        ctx_chain = _context_for(spec, given_chain)
        graph = SegmentGraph(model, k, criterion).eval()
        relative = f"{DIRECTORY}/{k}.tflite"
        began = time.perf_counter()
        if tokens is None:
            content, batch = _convert(litert_torch, graph, spec, x_onnx, ctx)
        else:
            content, batch = _convert_static(litert_torch, graph, spec, x_onnx, ctx, lengths)
        seconds.append(round(time.perf_counter() - began, 3))
        atomic_write_bytes(target / relative, content)
        files.append(relative)
        batches.append(batch)
        segment = LiteRtSegment(target / relative, spec, threads=1)
        names = [o.name for o in spec.outputs]
        session = load_session(Path(stage) / spec.file)
        feeds = {spec.inputs[0].name: x_onnx, **ctx}
        onnx = dict(zip(names, session.run(names, feeds), strict=True))
        isolated = segment.run(x_onnx, ctx)
        single = segment.run(x_onnx[:1], {n: v[:1] for n, v in ctx.items()})
        chained = segment.run(x_tflite, ctx_chain)
        mask = ctx.get(MASK_NAME) if tokens is not None else None
        for name in compared(names):
            ref, one = onnx[name], onnx[name][:1]
            parity.append(compare(f"tflite segment {k}", name, ref, isolated[name], atol, rtol, mask))
            parity.append(compare(f"tflite segment {k} batch 1", name, one, single[name], atol, rtol, _first(mask)))
            parity.append(compare(f"tflite chain to {k}", name, ref, chained[name], atol, rtol, mask))
        for length in lengths if len(lengths) > 1 else ():  # every signature, each on a sample of its length
            fed, fed_ctx = _at_length(x_onnx, length), {n: _at_length(v, length) for n, v in ctx.items()}
            want = dict(zip(names, session.run(names, {spec.inputs[0].name: fed, **fed_ctx}), strict=True))
            got = segment.run(fed, fed_ctx)
            for name in compared(names):
                graph_name = f"tflite segment {k} at {length} tokens"
                parity.append(compare(graph_name, name, want[name], got[name], atol, rtol, fed_ctx.get(MASK_NAME)))
        if spec.hidden is not None:
            x_onnx, x_tflite = onnx[spec.hidden], chained[spec.hidden]
            given.update((name, onnx[name]) for name in spec.carries)  # a boundary of several tensors
            given_chain.update((name, chained[name]) for name in spec.carries)

    failures = [row for row in parity if not row.ok]
    if failures:
        table = "; ".join(f"{r.graph} {r.output}: max |diff| {r.max_abs_diff:.3g}" for r in parity)
        raise ExportError(
            f"LiteRT disagrees with the ONNX segments beyond atol={atol:g}, rtol={rtol:g} on {len(failures)} "
            f"output(s) (criterion {criterion!r} for the in-graph scores). Max differences: {table}"
        )
    report = {
        "converter": f"litert-torch {litert_torch.__version__}",
        "seconds": round(time.perf_counter() - started, 3),
        "convert_seconds": seconds,
        "batch": batches,
        "sequence_length": tokens,
        "sequence_lengths": list(lengths),
        "parity_samples": int(inputs.shape[0]),
        "atol": atol,
        "rtol": rtol,
        "parity": [{"graph": r.graph, "output": r.output, "max_abs_diff": r.max_abs_diff, "ok": r.ok} for r in parity],
    }
    variant = SegmentVariant(name=VARIANT, backend="tflite", precision="fp32", files=tuple(files), report=report)
    return variant, {name: sha256_file(target / name) for name in files}


def add_tflite(
    model: MultiExitModel,
    package: str | os.PathLike[str],
    *,
    sample: np.ndarray | None = None,
    context: Mapping[str, np.ndarray] | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    sequence_length: int | Sequence[int] | None = None,
) -> Package:
    """Add (or rebuild) the ``tflite`` variant of an exported package, after the fact.

    ``model`` must carry the weights the package was exported from (parity against its ONNX
    segments says so). Without ``sample`` the parity inputs are the package's reference input
    plus two seeded random ones; ``context`` defaults to the reference file's arrays of the same
    names. ``sequence_length``: the token length of a text encoder's graphs (see
    ``write_tflite_variant``). The new files are built in a scratch directory inside the package, moved into
    ``tflite/`` only once they pass, and the manifest is rewritten atomically.
    """
    opened = open_package(package)
    manifest = opened.manifest
    reference = _reference(opened)
    inputs, ctx = _parity_inputs(manifest, reference, sample, context)
    scratch = Path(tempfile.mkdtemp(prefix=".tflite.", suffix=".partial", dir=opened.root))
    try:
        variant, hashes = write_tflite_variant(
            model, opened.root, manifest, inputs, ctx, criterion=_stored_criterion(manifest, reference),
            atol=atol, rtol=rtol, out=scratch, sequence_length=sequence_length,
        )  # fmt: skip
        with _swapped_in(scratch / DIRECTORY, opened.root / DIRECTORY):
            return opened.save_manifest(manifest.with_variant(variant, hashes))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _converter() -> Any:
    try:
        import litert_torch
    except ImportError as err:
        raise ExportError(
            f"converting segments to TFLite needs litert-torch, which is not importable ({err}); "
            f"install it with {EXPORT_EXTRA}"
        ) from None
    return litert_torch


def _numpy(value: np.ndarray | torch.Tensor) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _named_context(
    manifest: Manifest,
    context: Sequence[np.ndarray | torch.Tensor] | Mapping[str, np.ndarray | torch.Tensor],
) -> dict[str, np.ndarray]:
    if isinstance(context, Mapping):
        return {name: _numpy(value) for name, value in context.items()}
    names = [c.name for c in manifest.input.context]
    if len(context) != len(names):
        raise ExportError(
            f"got {len(context)} context tensor(s) for the package's context inputs {names}; "
            "pass one per name, in that order (or a mapping by name)"
        )
    return {name: _numpy(value) for name, value in zip(names, context, strict=True)}


def _context_for(spec: SegmentSpec, given: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The segment's inputs after the hidden tensor, in its argument order, from ``given``."""
    names = [t.name for t in spec.inputs[1:]]
    missing = [n for n in names if n not in given]
    if missing:
        raise ExportError(
            f"segment {spec.index} takes the context input(s) {missing}; pass sample values for them "
            f"(context={{name: array}}, as many rows as the inputs); got {sorted(given)}"
        )
    return {n: np.ascontiguousarray(given[n]) for n in names}


def _convert(
    litert_torch: Any, graph: SegmentGraph, spec: SegmentSpec, x: np.ndarray, ctx: Mapping[str, np.ndarray]
) -> tuple[bytes, str]:
    """The segment's .tflite bytes, with dynamic axes where the manifest has them if possible."""
    values = [x, *ctx.values()]
    if values[0].shape[0] < 2:  # a traced batch of 1 is specialized to 1
        values = [np.concatenate([v, v]) for v in values]
    args = tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in values)
    dims: dict[int, Any] = {}
    shapes = []
    for tensor in spec.inputs:
        axes = {}
        for axis, size in enumerate(tensor.shape):
            if size is None:
                name = "batch" if axis == 0 else f"axis{axis}"
                axes[axis] = dims.setdefault(axis, torch.export.Dim(name, min=1))
        shapes.append(axes)
    try:
        with _quiet(litert_torch):
            return litert_torch.convert(
                graph, args, dynamic_shapes=shaped_like_forward(graph, shapes)
            ).model_content(), "dynamic"
    except Exception as err:  # torch.export raises many types; the fallback records why
        dynamic_error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    if any(size is None for t in spec.inputs for size in t.shape[1:]):
        raise ExportError(
            f"litert-torch could not convert segment {spec.index} with its dynamic axes ({dynamic_error}); "
            "a fixed-shape fallback is only possible when the batch is the one dynamic axis"
        )
    try:
        with _quiet(litert_torch):
            single = tuple(a[:1] for a in args)
            return litert_torch.convert(graph, single).model_content(), f"static-1 ({dynamic_error})"
    except Exception as err:  # report the converter's own message
        raise ExportError(
            f"litert-torch could not convert segment {spec.index} to TFLite ({type(err).__name__}: {err}); "
            "the segment uses an operator or pattern litert-torch does not support"
        ) from None


def _token_lengths(manifest: Manifest, requested: int | Sequence[int] | None, inputs: np.ndarray) -> tuple[int, ...]:
    """The static token lengths to convert at, shortest first: none for models whose only
    dynamic axis is the batch."""
    tokens = any(size is None for s in manifest.segments for t in s.inputs for size in t.shape[1:])
    if not tokens:
        if requested is not None:
            raise ExportError(
                f"sequence_length={requested} is for text encoders (a dynamic token axis); this model's "
                "segments have fixed shapes besides the batch: leave it unset"
            )
        return ()
    if requested is None:
        lengths = DEFAULT_SEQUENCE_LENGTHS
    elif isinstance(requested, int):
        lengths = (requested,)
    else:
        lengths = tuple(requested)
    if not lengths or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in lengths):
        raise ExportError(f"sequence_length must be a positive token count or a list of them; got {requested}")
    lengths = tuple(sorted(set(lengths)))
    if inputs.ndim >= 2 and inputs.shape[1] > lengths[-1]:
        raise ExportError(
            f"the parity samples have {inputs.shape[1]} tokens but the TFLite graphs are being converted for "
            f"at most {lengths[-1]}; pass sequence_length >= {inputs.shape[1]}, or shorter samples"
        )
    return lengths


def _at_length(value: np.ndarray, length: int) -> np.ndarray:
    """``value`` (N, L, ...) cut or zero-padded to ``length`` tokens (a cut mask keeps at least one
    real token per row only if the row had one there: the samples are right-padded)."""
    if value.shape[1] >= length:
        return np.ascontiguousarray(value[:, :length])
    return _pad_tokens(value, length)


def _pad_tokens(value: np.ndarray, length: int) -> np.ndarray:
    """``value`` (N, L, ...) zero-padded to ``length`` tokens: ids 0 and mask 0, masked out."""
    widths = [(0, 0)] * value.ndim
    widths[1] = (0, length - value.shape[1])
    return np.ascontiguousarray(np.pad(value, widths))


def _convert_static(
    litert_torch: Any,
    graph: SegmentGraph,
    spec: SegmentSpec,
    x: np.ndarray,
    ctx: Mapping[str, np.ndarray],
    lengths: Sequence[int],
) -> tuple[bytes, str]:
    """A text segment's .tflite bytes at batch 1, one ``tokens_<L>`` signature per length (the one
    way litert-torch 0.10.0 converts them), each traced on the first sample cut or padded to it."""
    converter = litert_torch
    for length in lengths:
        args = tuple(torch.from_numpy(_at_length(v[:1], length)) for v in (x, *ctx.values()))
        converter = converter.signature(TOKEN_SIGNATURE.format(length), graph, args)
    try:
        with _quiet(litert_torch):
            return converter.convert().model_content(), "static-1"
    except Exception as err:  # report the converter's own message
        raise ExportError(
            f"litert-torch could not convert segment {spec.index} to TFLite at batch 1 and {list(lengths)} tokens "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); the segment uses an "
            "operator or pattern litert-torch does not support"
        ) from None


def _first(mask: np.ndarray | None) -> np.ndarray | None:
    return None if mask is None else mask[:1]


@contextlib.contextmanager
def _quiet(litert_torch: Any) -> Iterator[None]:
    """litert-torch prints a progress line per pass; an export prints its own summary instead."""
    shown = litert_torch.config.show_progress
    litert_torch.config.show_progress = False
    try:
        yield
    finally:
        litert_torch.config.show_progress = shown


def _graph_criterion(manifest: Manifest) -> str | None:
    """The criterion the ONNX segments compute in-graph: the one their exits with a score name."""
    for spec in manifest.exits:
        if spec.score is not None:
            # LiteRT takes no inputs to feed a gate, and its XNNPACK delegate fails to prepare the gate's
            # ops (tried: "failed to reshape"): max_prob stands in, with the same outputs, and the engine
            # scores the trained gate in numpy there
            if spec.criterion == LEARNED_CRITERION:
                return "max_prob"
            return spec.criterion if spec.criterion in IN_GRAPH_CRITERIA else None
    return None


def _reference(opened: Package) -> dict[str, np.ndarray]:
    if opened.manifest.reference is None:
        return {}
    with np.load(opened.path(opened.manifest.reference.file)) as stored:
        return {name: stored[name] for name in stored.files}


def _stored_criterion(manifest: Manifest, reference: Mapping[str, np.ndarray]) -> str | None:
    """The in-graph score criterion, read off the stored PyTorch outputs: calibration may have
    moved the exits to another criterion since export, but the graphs still compute the old one."""
    for spec in manifest.exits:
        if spec.score is None or spec.logits is None:
            continue
        logits, score = reference.get(f"{spec.segment}/{spec.logits}"), reference.get(f"{spec.segment}/{spec.score}")
        if logits is None or score is None:
            break
        for candidate in IN_GRAPH_CRITERIA:
            found = exit_score(torch.from_numpy(logits), candidate).numpy()
            if found.shape == score.shape and np.allclose(found, score, atol=1e-5):
                return candidate
        break
    return "auto"


def _parity_inputs(
    manifest: Manifest,
    reference: Mapping[str, np.ndarray],
    sample: np.ndarray | None,
    context: Mapping[str, np.ndarray] | None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The caller's sample, or the stored reference input (plus two seeded random images)."""
    if sample is None:
        if "input" not in reference:
            raise ExportError("the package has no reference input; pass sample= (real inputs for the parity check)")
        real = reference["input"]
        images = manifest.input.dtype.startswith("float") and not manifest.input.context
        random = np.random.default_rng(0).standard_normal((2, *real.shape[1:])).astype(real.dtype)
        sample = np.concatenate([real, random]) if images else real
    inputs = np.asarray(sample, dtype=manifest.input.dtype)
    want = tuple(manifest.input.shape[1:])
    if inputs.ndim != len(manifest.input.shape) or any(
        w is not None and w != g for w, g in zip(want, inputs.shape[1:], strict=True)
    ):
        raise ExportError(f"sample inputs have shape {inputs.shape[1:]} per item; the package expects {want}")
    if context is not None:
        return inputs, dict(context)
    stored = {}
    for spec in manifest.input.context:
        for key in (f"context/{spec.name}", spec.name):
            if key in reference:
                stored[spec.name] = reference[key]
                break
    return inputs, stored


@contextlib.contextmanager
def _swapped_in(new: Path, final: Path) -> Iterator[None]:
    """Put ``new`` at ``final``; the body (the manifest write) failing puts the old directory back."""
    retired = final.with_name(f".{final.name}.old-{os.getpid()}")
    had = final.exists()
    if had:
        os.replace(final, retired)
    os.replace(new, final)
    try:
        yield
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        if had:
            os.replace(retired, final)
        raise
    shutil.rmtree(retired, ignore_errors=True)
