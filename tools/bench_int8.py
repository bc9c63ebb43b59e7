"""int8 vs fp32 on one package: latency per segment and end to end, and accuracy, side by side.

    python tools/bench_int8.py PKG --data fashion-mnist [--split test] [--limit 2000] [--runs 200]
    python tools/bench_int8.py PKG --data unlabelled --limit 300     # no labels: see below

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
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeexit.calibration import NEVER
from edgeexit.package import open_package
from edgeexit.runtime.engine import Engine
from edgeexit.runtime.sessions import load_session


def _load(spec: str, split: str, limit: int, package: Path) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Model-ready inputs, labels (None for the unlabelled set) and where they came from."""
    manifest = open_package(package).manifest
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


def _per_segment(root: Path, runs: int, x: np.ndarray) -> list[tuple[float, float]]:
    """(fp32 ms, int8 ms) medians per segment at batch 1 on real boundary inputs."""
    manifest = open_package(root).manifest
    variant = manifest.variant("int8")
    found = []
    current = x[:runs]
    for segment, int8_file in zip(manifest.segments, variant.files, strict=True):
        sessions = {"fp32": load_session(root / segment.file, 1), "int8": load_session(root / int8_file, 1)}
        feed = segment.inputs[0].name
        names = [o.name for o in segment.outputs]

        def call(session, i: int, current=current, feed=feed, names=names):
            return session.run(names, {feed: current[i % len(current)][None]})

        times = _alternate({k: (lambda i, s=s: call(s, i)) for k, s in sessions.items()}, runs)
        found.append((statistics.median(times["fp32"]), statistics.median(times["int8"])))
        if segment.hidden is not None:
            current = np.concatenate(
                [
                    sessions["fp32"].run([segment.hidden], {feed: current[i : i + 32]})[0]
                    for i in range(0, len(current), 32)
                ]
            )
    return found


def _calibrate_fp32(root: Path, x: np.ndarray, y: np.ndarray) -> None:
    from edgeexit.calibration import calibrate_manifest, digest_data

    engine = Engine(root, cache_dir=None)
    record = engine.manifest.calibration
    manifest, _ = calibrate_manifest(
        engine.manifest, engine.run_full(x), y, criterion=None, max_drop=record.max_drop if record else 0.01,
        data_sha256=digest_data(x, y), margin=record.margin if record else 1.0,
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
    args = parser.parse_args()

    from edgeexit.compile.quantize import quantize_package

    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        root = args.package if args.in_place else Path(tmp) / "pkg"
        if not args.in_place:
            shutil.copytree(args.package, root)
        x, y, source = _load(args.data, args.split, args.limit, root)
        if y is None:  # no labels: fp32 full depth is the reference
            y = np.array([r.prediction for r in Engine(root, cache_dir=None).run_batch(x, batch_size=32)])
            source += " [labels = fp32 final-exit predictions]"
        print(f"package {args.package}; data: {len(x)} samples, {source}")
        if not args.in_place:  # fp32 thresholds from the same data and target as int8's: a fair comparison
            _calibrate_fp32(root, x, y)
        if not (args.reuse and any(v.name == "int8" for v in open_package(root).manifest.variants)):
            began = time.perf_counter()
            report = quantize_package(root, x, y, samples=args.samples, data_source=source)
            print(f"quantized {len(report.variant.files)} segments in {time.perf_counter() - began:.1f} s")
        _report(root, x, y, args.runs)


def _report(root: Path, x: np.ndarray, y: np.ndarray, runs: int) -> None:
    manifest = open_package(root).manifest
    variant = manifest.variant("int8")
    print("\n(a) per segment, batch 1, 1 thread, medians (fp32 and int8 alternating)")
    print(
        f"{'segment':>7} {'fp32 ms':>9} {'int8 ms':>9} {'int8/fp32':>9} {'MFLOPs':>8} {'fp32 KiB':>9} {'int8 KiB':>9}"
    )
    per_segment = _per_segment(root, runs, x)
    for segment, (a, b), file in zip(manifest.segments, per_segment, variant.files, strict=True):
        print(
            f"{segment.index:>7} {a:>9.4f} {b:>9.4f} {b / a:>8.2f}x {segment.flops / 1e6:>8.1f} "
            f"{(root / segment.file).stat().st_size / 1024:>9.0f} {(root / file).stat().st_size / 1024:>9.0f}"
        )
    total_a, total_b = sum(a for a, _ in per_segment), sum(b for _, b in per_segment)
    print(f"{'sum':>7} {total_a:>9.4f} {total_b:>9.4f} {total_b / total_a:>8.2f}x")

    engines = {
        "fp32 full": Engine(root, threshold=NEVER, cache_dir=None),
        "int8 full": Engine(root, threshold=NEVER, precision="int8", cache_dir=None),
        "fp32 early": Engine(root, cache_dir=None),
        "int8 early": Engine(root, precision="int8", cache_dir=None),
    }
    count = min(runs, len(x))
    times = _alternate({name: (lambda i, e=e: e.run(x[i % len(x)])) for name, e in engines.items()}, count)
    print("\n(b) end to end through Engine, batch 1, 1 thread, per sample (the four alternating)")
    print(f"{'mode':>10} {'p50 ms':>9} {'mean ms':>9} {'p50 vs fp32 full':>16}")
    base = statistics.median(times["fp32 full"])
    for name, found in times.items():
        print(f"{name:>10} {statistics.median(found):>9.4f} {statistics.mean(found):>9.4f} "
              f"{statistics.median(found) / base:>15.2f}x")  # fmt: skip
    batch = x[: min(len(x), 256)]
    throughput = {}
    for name in ("fp32 full", "int8 full"):
        engine = engines[name]
        engine.run_batch(batch[:32])
        began = time.perf_counter()
        engine.run_batch(batch, batch_size=32)
        throughput[name] = len(batch) / (time.perf_counter() - began)
    print(f"batch 32 full depth: fp32 {throughput['fp32 full']:.0f}/s, int8 {throughput['int8 full']:.0f}/s "
          f"(int8/fp32 {throughput['int8 full'] / throughput['fp32 full']:.2f}x)")  # fmt: skip

    print(f"\n(c) accuracy on {len(x)} samples")
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
