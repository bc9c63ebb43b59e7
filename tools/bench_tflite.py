"""ONNX Runtime vs LiteRT latency per segment of a package that has a ``tflite`` variant.

    python tools/bench_tflite.py PKG [--runs 300] [--threads 1] [--batch 8]
    python tools/bench_tflite.py PKG --model FACTORY --checkpoint CKPT   # convert first (add_tflite)

Each segment is fed the package's reference input carried through the ONNX segments before it.
(a) batch 1: ORT ``session.run`` vs LiteRT ``invoke`` per segment, side by side: rounds alternate
    between the two so machine noise hits them alike; medians, and the LiteRT/ORT ratio.
(b) batch B: ORT, LiteRT at batch B in one invoke (the graph's dynamic batch), LiteRT as B
    batch-1 invokes, and LiteRT alternating between batch B and B-1 (what batched early exit
    does as samples retire: every call re-plans the graph). Per-sample ms, medians.
Device-side apart from the optional conversion (which imports torch and litert-torch).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from edgeexit.package import open_package
from edgeexit.runtime.litert_backend import LiteRtSegment
from edgeexit.runtime.ort_backend import OrtSegment


def _convert(package: str, factory: str, checkpoint: str) -> None:
    from edgeexit.compile.checkpoint import load_checkpoint
    from edgeexit.compile.factory import build_from_factory
    from edgeexit.compile.tflite import add_tflite

    model = load_checkpoint(build_from_factory(factory), checkpoint)
    began = time.perf_counter()
    variant = add_tflite(model, package).manifest.variant("tflite")
    worst = max(r["max_abs_diff"] for r in variant.report["parity"])
    print(
        f"converted in {time.perf_counter() - began:.1f} s (per segment {variant.report['convert_seconds']} s, "
        f"batch {sorted(set(variant.report['batch']))}); worst |LiteRT - ONNX| {worst:.2g}"
    )


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
    ort_seg: OrtSegment, lite: LiteRtSegment, x: np.ndarray, xb: np.ndarray, runs: int, warmup: int
) -> dict[str, float]:
    """(a) for one segment; (b) too when ``xb`` holds more than one sample (per-sample ms)."""
    found = _medians({"ort": lambda: ort_seg.run(x), "litert": lambda: lite.run(x)}, runs, warmup)
    batch = int(xb.shape[0])
    if batch > 1:
        loop = [xb[i : i + 1] for i in range(batch)]
        alternating = [xb, xb[:-1]]
        turn = [0]

        def alternate() -> None:
            turn[0] ^= 1
            lite.run(alternating[turn[0]])

        contenders = {
            "ort_b": lambda: ort_seg.run(xb),
            "litert_b": lambda: lite.run(xb),
            "litert_loop": lambda: [lite.run(s) for s in loop],
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
    args = parser.parse_args()
    if args.model:
        _convert(args.package, args.model, args.checkpoint)
    package = open_package(args.package)
    manifest = package.manifest
    variant = manifest.variant("tflite")
    with np.load(package.path(manifest.reference.file)) as ref:
        x = np.ascontiguousarray(ref["input"][:1], dtype=np.float32)
    batch = max(args.batch, 0)
    xb = np.ascontiguousarray(np.repeat(x, batch, axis=0)) if batch else x
    converter = variant.report.get("converter", "?")
    print(f"{manifest.model_name}: {len(manifest.segments)} segments, {args.threads} thread(s), {converter}")
    rows = []
    for spec, tflite_file in zip(manifest.segments, variant.files, strict=True):
        ort_seg = OrtSegment(
            package.path(spec.file), spec, threads=args.threads, cache_dir=None, sha256=manifest.files[spec.file]
        )
        lite = LiteRtSegment(package.path(tflite_file), spec, threads=args.threads)
        row = {"segment": spec.index, "mflops": spec.flops / 1e6}
        row.update(_bench_segment(ort_seg, lite, x, xb, args.runs, args.warmup))
        rows.append(row)
        if spec.hidden is not None:
            xb = ort_seg.run(xb)[spec.hidden]
            x = ort_seg.run(x)[spec.hidden]

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
