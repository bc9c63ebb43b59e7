"""ONNX Runtime vs LiteRT latency per segment of a package that has a ``tflite`` variant.

    python tools/bench_tflite.py PKG [--runs 300] [--threads 1] [--batch 8]
    python tools/bench_tflite.py PKG --model FACTORY --checkpoint CKPT   # convert first (add_tflite)
    python tools/bench_tflite.py PKG --export-text edgeexit.compile.text_models:minilm_l6 \\
        --sequence-length 64 --tokens 32 --batch 0    # export a text encoder (seed 0), convert, measure

Each segment is fed the package's reference input (for a text encoder: its token ids and
context inputs; ``--tokens N`` makes it N attended tokens, the reference's real tokens repeated)
carried through the ONNX segments before it.
(a) batch 1: ORT ``session.run`` vs LiteRT ``invoke`` per segment, side by side: rounds alternate
    between the two so machine noise hits them alike; medians, and the LiteRT/ORT ratio.
    A text encoder's TFLite graphs have a fixed token length: LiteRT pays for all of it (the
    input is padded), ORT for the input's tokens only.
(b) batch B: ORT, LiteRT at batch B in one invoke (the graph's dynamic batch), LiteRT as B
    batch-1 invokes, and LiteRT alternating between batch B and B-1 (what batched early exit
    does as samples retire: every call re-plans the graph). Per-sample ms, medians.
Device-side apart from the optional export/conversion (which imports torch and litert-torch).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from edgeexit.package import Package, open_package
from edgeexit.runtime.litert_backend import LiteRtSegment
from edgeexit.runtime.ort_backend import OrtSegment

Context = dict[str, np.ndarray]


def _convert(package: str, factory: str, checkpoint: str, sequence_length: tuple[int, ...] | None) -> None:
    from edgeexit.compile.checkpoint import load_checkpoint
    from edgeexit.compile.factory import build_from_factory
    from edgeexit.compile.tflite import add_tflite

    model = load_checkpoint(build_from_factory(factory), checkpoint)
    began = time.perf_counter()
    variant = add_tflite(model, package, sequence_length=sequence_length).manifest.variant("tflite")
    _print_conversion(variant.report, time.perf_counter() - began)


def _export_text(package: str, factory: str, tokens: int, sequence_length: tuple[int, ...] | None) -> None:
    """Export a text encoder (heads initialized with seed 0) on seeded token samples, then convert."""
    import torch

    from edgeexit.compile import export
    from edgeexit.compile.factory import build_from_factory
    from edgeexit.compile.tflite import add_tflite

    torch.manual_seed(0)
    model = build_from_factory(factory)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, (4, tokens)).astype(np.int64)
    mask = np.ones((4, tokens), np.int64)
    for row, keep in enumerate((tokens, (2 * tokens) // 3, tokens // 3, 2)):
        mask[row, max(keep, 1) :] = 0
    sample = {model.input_name: ids * mask, **{name: mask for name in model.context_names}}
    began = time.perf_counter()
    export(model, (1, tokens), package, sample=sample, codecs=())
    print(f"ONNX export in {time.perf_counter() - began:.1f} s")
    began = time.perf_counter()
    variant = add_tflite(model, package, sequence_length=sequence_length).manifest.variant("tflite")
    _print_conversion(variant.report, time.perf_counter() - began)


def _print_conversion(report: dict, seconds: float) -> None:
    worst = max(r["max_abs_diff"] for r in report["parity"])
    lengths = report.get("sequence_lengths") or ([report["sequence_length"]] if report.get("sequence_length") else [])
    tokens = f", {lengths} tokens" if lengths else ""
    print(
        f"converted in {seconds:.1f} s (per segment {report['convert_seconds']} s, "
        f"batch {sorted(set(report['batch']))}{tokens}); worst |LiteRT - ONNX| {worst:.2g}"
    )


def _inputs(package: Package, tokens: int | None) -> tuple[np.ndarray, Context]:
    """One sample from the reference file: the input and its context (text: ``tokens`` long if given)."""
    manifest = package.manifest
    with np.load(package.path(manifest.reference.file)) as ref:
        x = np.ascontiguousarray(ref["input"][:1])
        context = {c.name: np.ascontiguousarray(ref[f"context/{c.name}"][:1]) for c in manifest.input.context}
    if tokens is not None and context:
        mask = context.get("attention_mask", np.ones_like(x))
        real = x[0][mask[0].astype(bool)]
        x = np.resize(real, tokens)[None].astype(x.dtype)
        context = {name: np.ones((1, tokens), value.dtype) for name, value in context.items()}
    return x, context


def _medians(contenders: dict[str, Callable[[], object]], runs: int, warmup: int) -> dict[str, float]:
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(runs):
        for name, fn in contenders.items():
            began = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - began) * 1000)
    return {name: float(np.median(t)) for name, t in times.items()}


def _bench_segment(
    ort_seg: OrtSegment,
    lite: LiteRtSegment,
    x: np.ndarray,
    ctx: Context,
    xb: np.ndarray,
    ctxb: Context,
    runs: int,
    warmup: int,
) -> dict[str, float]:
    """(a) for one segment; (b) too when ``xb`` holds more than one sample (per-sample ms)."""
    found = _medians({"ort": lambda: ort_seg.run(x, ctx), "litert": lambda: lite.run(x, ctx)}, runs, warmup)
    batch = int(xb.shape[0])
    if batch > 1:
        loop = [(xb[i : i + 1], {n: v[i : i + 1] for n, v in ctxb.items()}) for i in range(batch)]
        alternating = [(xb, ctxb), (xb[:-1], {n: v[:-1] for n, v in ctxb.items()})]
        turn = [0]

        def alternate() -> None:
            turn[0] ^= 1
            lite.run(*alternating[turn[0]])

        contenders = {
            "ort_b": lambda: ort_seg.run(xb, ctxb),
            "litert_b": lambda: lite.run(xb, ctxb),
            "litert_loop": lambda: [lite.run(*s) for s in loop],
            "litert_alt": alternate,
        }
        per_call = _medians(contenders, max(runs // 4, 20), warmup)
        samples = {"litert_alt": batch - 0.5}  # it alternates between B and B-1 samples
        found.update({k: v / samples.get(k, batch) for k, v in per_call.items()})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8, help="batch for (b); 0 skips it")
    parser.add_argument("--model", help="factory of the package's model, to convert it first (with --checkpoint)")
    parser.add_argument("--checkpoint")
    parser.add_argument("--export-text", metavar="FACTORY", help="export a text encoder to PACKAGE first, then convert")
    parser.add_argument(
        "--sequence-length",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        help="token lengths of a text encoding TFLite graph, e.g. 16,32,64 (default: every 8 up to 64, then 96, 128)",
    )
    parser.add_argument("--tokens", type=int, help="text: measure on this many attended tokens")
    args = parser.parse_args()
    if args.export_text:
        _export_text(args.package, args.export_text, args.tokens or 32, args.sequence_length)
    elif args.model:
        _convert(args.package, args.model, args.checkpoint, args.sequence_length)
    package = open_package(args.package)
    manifest = package.manifest
    variant = manifest.variant("tflite")
    x, ctx = _inputs(package, args.tokens)
    batch = max(args.batch, 0)

    def repeat(value: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.repeat(value, batch, axis=0)) if batch else value

    xb, ctxb = repeat(x), {name: repeat(value) for name, value in ctx.items()}
    converter = variant.report.get("converter", "?")
    length = variant.report.get("sequence_lengths") or variant.report.get("sequence_length")
    shape = f", input {x.shape[1:]}" + (f", TFLite graphs at {length} tokens" if length else "")
    print(f"{manifest.model_name}: {len(manifest.segments)} segments, {args.threads} thread(s), {converter}{shape}")
    rows = []
    for spec, tflite_file in zip(manifest.segments, variant.files, strict=True):
        ort_seg = OrtSegment(
            package.path(spec.file), spec, threads=args.threads, cache_dir=None, sha256=manifest.files[spec.file]
        )
        lite = LiteRtSegment(package.path(tflite_file), spec, threads=args.threads)
        row = {"segment": spec.index, "mflops": spec.flops / 1e6}
        row.update(_bench_segment(ort_seg, lite, x, ctx, xb, ctxb, args.runs, args.warmup))
        rows.append(row)
        if spec.hidden is not None:
            xb = ort_seg.run(xb, ctxb)[spec.hidden]
            x = ort_seg.run(x, ctx)[spec.hidden]

    print("\n(a) batch 1, median ms per call")
    print(f"{'seg':>3} {'MFLOPs':>8} {'ORT':>8} {'LiteRT':>8} {'LiteRT/ORT':>10}")
    for r in rows:
        ratio = r["litert"] / r["ort"]
        print(f"{r['segment']:>3} {r['mflops']:>8.2f} {r['ort']:>8.4f} {r['litert']:>8.4f} {ratio:>10.2f}")
    total_ort, total_lite = sum(r["ort"] for r in rows), sum(r["litert"] for r in rows)
    print(f"sum {'':>8} {total_ort:>8.4f} {total_lite:>8.4f} {total_lite / total_ort:>10.2f}")
    if batch > 1:
        print(f"\n(b) batch {batch}, median ms per sample")
        head = f"{'seg':>3} {'ORT':>8} {'LiteRT':>8} {'LiteRT x1 loop':>14} {'LiteRT B/B-1 alt':>16}"
        print(head)
        for r in rows:
            print(
                f"{r['segment']:>3} {r['ort_b']:>8.4f} {r['litert_b']:>8.4f} {r['litert_loop']:>14.4f} "
                f"{r['litert_alt']:>16.4f}"
            )


if __name__ == "__main__":
    main()
