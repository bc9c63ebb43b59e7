"""Does the calibration's promise hold on data it never saw? Many random calibration / test splits.

    python tools/bench_guarantee.py PACKAGE [--splits 200] [--max-drop 0.01] [--delta 0.1]

PACKAGE: a package for 28x28 images, e.g. the demo's (``edgeexit demo --out DIR``: DIR/package);
it is read, never changed. One full-depth pass over the built-in test images (Fashion-MNIST's
10,000 with Debian's package, else MNIST-5k's 1,000 held out) gives every exit's logits; then each
split calibrates on a random half exactly as ``edgeexit calibrate`` does (``calibrate_manifest``:
temperatures, criteria, thresholds) and measures the other half: the accuracy drop against the
final exit, and the expected speedup from the segments' measured costs (full depth's cost over the
early-exit plan's, what the engine's wall time follows on batch 1).

Rows: the margin method (0 and 1 standard errors in reserve: a heuristic) and Learn-then-Test
(``--delta``, against the final exit's answers and against the labels). A method keeps its
promise when the share of splits whose test drop exceeds ``--max-drop`` is at most ``--delta``,
up to the binomial noise of that many splits (3 standard deviations, shown).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import numpy as np

from edgeexit.calibration import calibrate_manifest, manifest_outcome
from edgeexit.data import builtin_images
from edgeexit.runtime import Engine

#: (row name, calibrate_manifest keywords)
METHODS = {
    "margin 0 s.e.": {"margin": 0.0},
    "margin 1 s.e.": {"margin": 1.0},
    "LTT vs final": {"against": "final"},
    "LTT vs labels": {"against": "labels"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--splits", type=int, default=200)
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    test = builtin_images("test")
    engine = Engine(args.package, cache_dir=None)
    tick = time.perf_counter()
    full = engine.run_full(test.x)
    spent = time.perf_counter() - tick
    print(f"{args.package}: {len(test)} test images ({test.source}), full-depth pass {spent:.1f} s")
    manifest = engine.manifest
    rng = np.random.default_rng(args.seed)
    n = len(test)
    drops: dict[str, list[float]] = {name: [] for name in METHODS}
    speedups: dict[str, list[float]] = {name: [] for name in METHODS}
    certified: dict[str, int] = dict.fromkeys(METHODS, 0)
    tick = time.perf_counter()
    for split in range(args.splits):
        order = rng.permutation(n)
        cal, held = order[: n // 2], order[n // 2 :]
        seen, unseen = full.take(cal), full.take(held)
        for name, keywords in METHODS.items():
            extra = dict(keywords)
            if name.startswith("LTT"):
                extra.update(delta=args.delta, seed=split)
            chosen, _ = calibrate_manifest(manifest, seen, test.y[cal], criterion=None, max_drop=args.max_drop,
                                           data_sha256="", **extra)  # type: ignore[arg-type]  # fmt: skip
            guarantee = chosen.calibration.guarantee  # type: ignore[union-attr]
            certified[name] += guarantee is None or guarantee.certified
            outcome = manifest_outcome(chosen, unseen, test.y[held])
            final = float((unseen.logits[-1].argmax(axis=-1) == test.y[held]).mean())  # type: ignore[union-attr]
            drops[name].append(final - outcome.accuracy)
            speedups[name].append(sum(full.segment_ms) / outcome.expected_ms)
    spent = time.perf_counter() - tick
    noise = 3 * math.sqrt(args.delta * (1 - args.delta) / args.splits)
    print(f"{args.splits} splits of {n // 2} calibration / {n - n // 2} test images, max drop "
          f"{100 * args.max_drop:g} pt, delta {args.delta:g} (allowed share {args.delta:g} + {noise:.3f} binomial "
          f"noise), {spent:.0f} s")  # fmt: skip
    print(f"| method | splits over {100 * args.max_drop:g} pt | mean test drop (pt) | worst (pt) | "
          "expected speedup, median (min-max) | certified |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in METHODS:
        over = sum(d > args.max_drop for d in drops[name]) / args.splits
        print(f"| {name} | {100 * over:.1f}% | {100 * statistics.fmean(drops[name]):.2f} | "
              f"{100 * max(drops[name]):.2f} | {statistics.median(speedups[name]):.2f}x "
              f"({min(speedups[name]):.2f}-{max(speedups[name]):.2f}) | {certified[name]}/{args.splits} |")  # fmt: skip


if __name__ == "__main__":
    import _tool  # beside this script

    _tool.run(main)
