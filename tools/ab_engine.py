"""The same package through the Engine of two source trees, in alternating processes.

    python tools/ab_engine.py PACKAGE TREE_A TREE_B [--rounds 5] [--samples 2000]

For a refactor that must not slow the device path: each round starts one process per tree
(``PYTHONPATH=TREE``, so ``import edgeexit`` is that tree's) that loads PACKAGE once and times,
on the package's built-in test images (1 ONNX Runtime thread, after a warm-up): ``run`` with early
exit, ``run`` at full depth, ``run_until(x, 0)`` + ``resume`` (the offload split), and
``run_batch`` of 32. The trees alternate order each round so that drift hits them alike; medians
of the rounds per tree, and B / A.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, math, sys, time
import numpy as np
from edgeexit.data import builtin_images
from edgeexit.runtime import Engine

package, samples = sys.argv[1], int(sys.argv[2])
early = Engine(package, cache_dir=None)
full = Engine(package, cache_dir=None, threshold=math.inf)
shape = tuple(early.manifest.input.shape[1:])
data = builtin_images("test")
xs = [np.ascontiguousarray(x.reshape(shape), dtype=np.float32) for x in data.x[:samples]]
batch = np.stack(xs[:32])

def per_sample(fn):
    fn(xs[0])
    tick = time.perf_counter()
    for x in xs:
        fn(x)
    return (time.perf_counter() - tick) / len(xs) * 1e6

def split(x):
    state = early.run_until(x, 0)
    return state if hasattr(state, "exit") else early.resume(state)

def batched():
    early.run_batch(batch)
    tick = time.perf_counter()
    for _ in range(len(xs) // 32):
        early.run_batch(batch)
    return (time.perf_counter() - tick) / (len(xs) // 32 * 32) * 1e6

print(json.dumps({"run": per_sample(early.run), "full": per_sample(full.run), "split": per_sample(split),
                  "batch32": batched()}))
"""


def measure(tree: Path, package: Path, samples: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(package), str(samples)], env=env, capture_output=True,
                          text=True, timeout=600, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("tree_a", type=Path)
    parser.add_argument("tree_b", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()
    trees = {"A": args.tree_a, "B": args.tree_b}
    found: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    for round_ in range(args.rounds):
        for name in ("A", "B") if round_ % 2 == 0 else ("B", "A"):
            found[name].append(measure(trees[name], args.package, args.samples))
    print(f"A = {args.tree_a}, B = {args.tree_b}; {args.rounds} rounds, {args.samples} images; us per sample, medians")
    for key in ("run", "full", "split", "batch32"):
        a = statistics.median(r[key] for r in found["A"])
        b = statistics.median(r[key] for r in found["B"])
        print(f"  {key:8s} A {a:8.1f}   B {b:8.1f}   B/A {b / a:.3f}")


if __name__ == "__main__":
    main()
