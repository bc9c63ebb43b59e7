"""int8 vs fp32 on one package: latency per segment and end to end, and accuracy, side by side.

    python tools/bench_int8.py PKG --data fashion-mnist [--split test] [--limit 2000] [--runs 200]
    python tools/bench_int8.py PKG --data unlabelled --limit 300     # no labels: see below
    python tools/bench_int8.py PKG --data unlabelled --limit 300 --auto  # mixed precision, chosen per segment
    python tools/bench_int8.py TEXT_PKG --data tweets --split validation --limit 1000  # a text encoder

The package is copied to a temporary directory and quantized there (``edgeexit.compile.quantize``:
QDQ, per channel, activation ranges from ``--samples`` real inputs), so PKG is left as it was;
in the copy, the fp32 exits are recalibrated on the same data and target first, so both
precisions' early exit is compared at thresholds chosen alike. ``--in-place`` quantizes PKG
itself (or reuses its int8 variant with ``--reuse``) and keeps its fp32 calibration.

(a) per segment, batch 1, one thread: fp32 and int8 sessions run alternately on the same real
    inputs (boundary k-1's fp32 hidden tensors), medians, and the int8/fp32 ratio;
(b) end to end through ``Engine`` (batch 1, one thread), fp32 and int8 alternating per sample:
    full depth (no early exit), and early exit at each precision's own calibrated thresholds;
    plus batch-32 full-depth throughput;
(c) accuracy: per exit at full depth, and overall with early exit.

``--keep-fp32 0,1`` / ``--auto`` write a mixed-precision variant (``quantize_package``'s
``keep_fp32`` / ``auto``); (a) then says which build each segment runs. ``--mode`` picks static
or dynamic quantization (default: static for images, dynamic for text). Text samples are timed
one at a time, unpadded, as the device runs them.

``--data unlabelled`` (``edgeexit.data.unlabelled``: sklearn's sample photos and upscaled
Fashion-MNIST, NOT ImageNet) has no labels: the fp32 model's final-exit prediction is the label,
so "accuracy" reads "agreement with fp32 full depth". Timings are ratios measured in one run on a
shared, noisy machine: compare them, not absolute milliseconds.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeexit.calibration import NEVER
from edgeexit.package import open_package
from edgeexit.runtime.engine import Engine
from edgeexit.runtime.sessions import load_session


def _load(spec: str, split: str, limit: int, package: Path) -> tuple[Any, np.ndarray | None, str]:
    """Model-ready inputs, labels (None for the unlabelled set) and where they came from."""
    manifest = open_package(package).manifest
    if spec.strip().lower() in ("tweets", "builtin:tweets"):
        from edgeexit.data.tweets import load_tweets
        from edgeexit.runtime.text import TextEncoder

        texts = getattr(load_tweets(), split).take(limit)
        encoder = TextEncoder.from_package(open_package(package), max_length=64)
        return encoder.encode(list(texts.texts)), texts.y, f"{texts.source} ({split}, {len(texts.y)} tweets)"
    if spec.strip().lower() in ("unlabelled", "builtin:unlabelled"):
        from edgeexit.data.unlabelled import unlabelled_images

        size = manifest.input.shape[-1]
        images = unlabelled_images("heldout" if split == "test" else split, count=limit, size=int(size))
        return images.batch(slice(None)), None, images.source
    from edgeexit.data import load_dataset
    from edgeexit.runtime.inputs import prepare_dataset

    data = load_dataset(spec, split=split).head(limit)
    x, y = prepare_dataset(data, manifest)
    return x, y, data.source


def _count(x: Any) -> int:
    return len(next(iter(x.values()))) if isinstance(x, Mapping) else len(x)


def _head(x: Any, n: int) -> Any:
    return {k: v[:n] for k, v in x.items()} if isinstance(x, Mapping) else x[:n]


def _sample(x: Any, i: int) -> Any:
    """Sample i alone: a text sample without its padding (as the device tokenizes one text)."""
    if not isinstance(x, Mapping):
        return x[i]
    length = max(int(x["attention_mask"][i].sum()), 1)
    return {k: v[i : i + 1, :length] for k, v in x.items()}


def _alternate(contenders: dict[str, Callable[[int], object]], count: int, warmup: int = 3) -> dict[str, list[float]]:
    """Call every contender on item i in turn (the order rotating), ms per call."""
    names = list(contenders)
    for i in range(warmup):
        for name in names:
            contenders[name](i % count)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(count):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            tick = time.perf_counter()
            contenders[name](i)
            times[name].append((time.perf_counter() - tick) * 1e3)
    return times


def _per_segment(root: Path, runs: int, x: Any) -> list[tuple[float, float]]:
    """(fp32 ms, variant ms) medians per segment at batch 1 on real boundary inputs, one sample at
    a time (text unpadded). A segment the variant keeps in fp32 is timed against itself."""
    manifest = open_package(root).manifest
    variant = manifest.variant("int8")
    samples = [_sample(x, i) for i in range(min(runs, _count(x)))]
    feeds = [s if isinstance(s, Mapping) else {manifest.input.name: s[None]} for s in samples]
    found = []
    for segment, int8_file in zip(manifest.segments, variant.files, strict=True):
        sessions = {"fp32": load_session(root / segment.file, 1), "int8": load_session(root / int8_file, 1)}
        names = [o.name for o in segment.outputs]
        wanted = [i.name for i in segment.inputs]

        def call(session, i: int, names=names, wanted=wanted, feeds=feeds):
            return session.run(names, {k: v for k, v in feeds[i % len(feeds)].items() if k in wanted})

        times = _alternate({k: (lambda i, s=s: call(s, i)) for k, s in sessions.items()}, runs)
        found.append((statistics.median(times["fp32"]), statistics.median(times["int8"])))
        if segment.hidden is not None:  # the next segment's inputs: this one's fp32 hidden tensor
            context = [{k: v for k, v in f.items() if k != manifest.input.name and k != segment.inputs[0].name}
                       for f in feeds]  # fmt: skip
            hidden = [sessions["fp32"].run([segment.hidden], {k: v for k, v in f.items() if k in wanted})[0]
                      for f in feeds]  # fmt: skip
            feeds = [{segment.hidden: h, **c} for h, c in zip(hidden, context, strict=True)]
    return found


def _digest(x: Any, y: np.ndarray) -> str:
    from edgeexit.calibration import digest_data

    return digest_data(np.stack(list(x.values())) if isinstance(x, Mapping) else x, y)


def _calibrate_fp32(root: Path, x: Any, y: np.ndarray) -> None:
    from edgeexit.calibration import calibrate_manifest

    engine = Engine(root, cache_dir=None)
    record = engine.manifest.calibration
    manifest, _ = calibrate_manifest(
        engine.manifest, engine.run_full(x), y, criterion=None, max_drop=record.max_drop if record else 0.01,
        data_sha256=_digest(x, y), margin=record.margin if record else 1.0,
    )  # fmt: skip
    engine.package.save_manifest(manifest)


def _accuracy(results: list, y: np.ndarray) -> float:
    return float(np.mean([r.prediction == label for r, label in zip(results, y, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--data", default="builtin", help="as `edgeexit quantize --data`, or 'unlabelled'")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=2000, help="samples for calibration and accuracy")
    parser.add_argument("--samples", type=int, default=128, help="samples for the int8 activation ranges")
    parser.add_argument("--runs", type=int, default=200, help="batch-1 timed samples per contender")
    parser.add_argument("--in-place", action="store_true", help="quantize PKG itself")
    parser.add_argument("--reuse", action="store_true", help="use PKG's existing int8 variant (with --in-place)")
    parser.add_argument("--keep-fp32", default="", help="segments the int8 variant runs in fp32, e.g. 0,1")
    parser.add_argument("--auto", action="store_true", help="choose fp32 segments from timing and agreement")
    parser.add_argument("--min-agreement", type=float, default=0.98, help="--auto: final-exit agreement to keep")
    parser.add_argument("--mode", default=None, help="static or dynamic (default: static images, dynamic text)")
    args = parser.parse_args()

    from edgeexit.compile.quantize import QuantizeOptions, quantize_package

    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        root = args.package if args.in_place else Path(tmp) / "pkg"
        if not args.in_place:
            shutil.copytree(args.package, root)
        x, y, source = _load(args.data, args.split, args.limit, root)
        if y is None:  # no labels: fp32 full depth is the reference
            y = np.array([r.prediction for r in Engine(root, cache_dir=None).run_batch(x, batch_size=32)])
            source += " [labels = fp32 final-exit predictions]"
        print(f"package {args.package}; data: {_count(x)} samples, {source}")
        if not args.in_place:  # fp32 thresholds from the same data and target as int8's: a fair comparison
            _calibrate_fp32(root, x, y)
        if not (args.reuse and any(v.name == "int8" for v in open_package(root).manifest.variants)):
            began = time.perf_counter()
            keep = tuple(int(k) for k in args.keep_fp32.split(",") if k.strip())
            options = QuantizeOptions(samples=args.samples, data_source=source, keep_fp32=keep, auto=args.auto,
                                      min_agreement=args.min_agreement, mode=args.mode)  # fmt: skip
            report = quantize_package(root, x, y, options)
            print(f"quantized {len(report.variant.files)} segments in {time.perf_counter() - began:.1f} s "
                  f"({report.variant.report['mode']}); fp32 kept: {list(report.kept_fp32) or 'none'}")  # fmt: skip
            for choice in report.choices:
                alone = "-" if choice.alone_agreement is None else f"{100 * choice.alone_agreement:.1f}%"
                print(f"  segment {choice.segment}: {choice.precision} ({choice.reason}); int8 alone: final "
                      f"agreement {alone}")  # fmt: skip
        _report(root, x, y, args.runs)


def _report(root: Path, x: Any, y: np.ndarray, runs: int) -> None:
    manifest = open_package(root).manifest
    variant = manifest.variant("int8")
    print("\n(a) per segment, batch 1, 1 thread, medians (fp32 and int8 alternating)")
    print(
        f"{'segment':>7} {'fp32 ms':>9} {'int8 ms':>9} {'int8/fp32':>9} {'MFLOPs':>8} {'fp32 KiB':>9} {'int8 KiB':>9}"
        "  variant runs"
    )
    per_segment = _per_segment(root, runs, x)
    for segment, (a, b), file in zip(manifest.segments, per_segment, variant.files, strict=True):
        print(
            f"{segment.index:>7} {a:>9.4f} {b:>9.4f} {b / a:>8.2f}x {segment.flops / 1e6:>8.1f} "
            f"{(root / segment.file).stat().st_size / 1024:>9.0f} {(root / file).stat().st_size / 1024:>9.0f}"
            f"  {'fp32' if file == segment.file else 'int8'}"
        )
    total_a, total_b = sum(a for a, _ in per_segment), sum(b for _, b in per_segment)
    print(f"{'sum':>7} {total_a:>9.4f} {total_b:>9.4f} {total_b / total_a:>8.2f}x")

    engines = {
        "fp32 full": Engine(root, threshold=NEVER, cache_dir=None),
        "int8 full": Engine(root, threshold=NEVER, precision="int8", cache_dir=None),
        "fp32 early": Engine(root, cache_dir=None),
        "int8 early": Engine(root, precision="int8", cache_dir=None),
    }
    count = min(runs, _count(x))
    singles = [_sample(x, i) for i in range(count)]
    times = _alternate({name: (lambda i, e=e: e.run(singles[i % count])) for name, e in engines.items()}, count)
    print("\n(b) end to end through Engine, batch 1, 1 thread, per sample (the four alternating)")
    print(f"{'mode':>10} {'p50 ms':>9} {'mean ms':>9} {'p50 vs fp32 full':>16}")
    base = statistics.median(times["fp32 full"])
    for name, found in times.items():
        print(f"{name:>10} {statistics.median(found):>9.4f} {statistics.mean(found):>9.4f} "
              f"{statistics.median(found) / base:>15.2f}x")  # fmt: skip
    batch = _head(x, 256)
    throughput = {}
    for name in ("fp32 full", "int8 full"):
        engine = engines[name]
        engine.run_batch(_head(batch, 32))
        began = time.perf_counter()
        engine.run_batch(batch, batch_size=32)
        throughput[name] = _count(batch) / (time.perf_counter() - began)
    print(f"batch 32 full depth: fp32 {throughput['fp32 full']:.0f}/s, int8 {throughput['int8 full']:.0f}/s "
          f"(int8/fp32 {throughput['int8 full'] / throughput['fp32 full']:.2f}x)")  # fmt: skip

    print(f"\n(c) accuracy on {_count(x)} samples")
    print(f"{'exit':>5} {'fp32':>8} {'int8':>8} {'change':>8} {'same pred':>9}")
    for change in variant.report["exits"]:
        if change["fp32_accuracy"] is None:
            continue
        delta = 100 * (change["int8_accuracy"] - change["fp32_accuracy"])
        print(f"{change['exit']:>5} {100 * change['fp32_accuracy']:>7.2f}% {100 * change['int8_accuracy']:>7.2f}% "
              f"{delta:>+8.2f} {100 * change['agreement']:>8.1f}%")  # fmt: skip
    for name in ("fp32 early", "int8 early"):
        results = engines[name].run_batch(x, batch_size=64)
        rates = np.bincount([r.exit for r in results], minlength=len(manifest.exits)) / len(results)
        print(f"{name}: accuracy {100 * _accuracy(results, y):.2f}%, exit rates "
              f"{' / '.join(f'{100 * r:.0f}%' for r in rates)}")  # fmt: skip
    print("(early exit: each precision at its own thresholds, calibrated on these samples for the same target)")


if __name__ == "__main__":
    main()
