"""Does --max-drop hold on images calibration never saw? Sweep the calibration margin.

    python tools/bench_margin.py PACKAGE [--margins 0 1 2] [--sizes 2000 5000]

PACKAGE: a package for 28x28 Fashion-MNIST, e.g. the demo's (edgeexit-demo/package); it is
copied, never changed. Calibrates on the first N test images (max drop 1 point) for each margin,
then measures full depth and early exit on test images 5000-9999: the drop on the calibration
images, the drop on the unseen ones, and the early-exit speedup (one sample at a time).
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edgeexit.calibration import calibrate_manifest, digest_data
from edgeexit.data import builtin_images
from edgeexit.package import open_package
from edgeexit.runtime import Engine
from edgeexit.runtime.evaluation import summarize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--margins", type=float, nargs="+", default=[0.0, 1.0, 2.0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 5000])
    args = parser.parse_args()
    test = builtin_images("test")
    unseen = test.subset(np.arange(5000, len(test)))
    print(f"{'calib N':>7} {'margin':>6} {'drop there':>10} {'drop unseen':>11} {'speedup':>7}  exits")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            seen = test.subset(np.arange(0, size))
            for margin in args.margins:
                copy = Path(tmp) / f"pkg-{size}-{margin}"
                shutil.copytree(args.package, copy)
                package = open_package(copy)
                full = Engine(package, cache_dir=None).run_full(seen.x)
                manifest, choice = calibrate_manifest(
                    package.manifest, full, seen.y, criterion=None, max_drop=0.01,
                    data_sha256=digest_data(seen.x, seen.y), margin=margin,
                )  # fmt: skip
                package = package.save_manifest(manifest)
                deep = summarize(Engine(package, cache_dir=None, threshold=math.inf), unseen.x, unseen.y)
                early = summarize(Engine(package, cache_dir=None), unseen.x, unseen.y)
                there = 100 * (choice.final_accuracy - choice.outcome.accuracy)
                drop = 100 * (deep.accuracy - early.accuracy)
                exits = " / ".join(f"{100 * r:.1f}%" for r in early.exit_rates)
                print(
                    f"{size:>7} {margin:>6g} {there:>9.2f}pt {drop:>10.2f}pt "
                    f"{deep.mean_ms / early.mean_ms:>6.2f}x  {exits}"
                )


if __name__ == "__main__":
    main()
