"""Which int8 scheme on this CPU: exactness against the float oracle, agreement with fp32, speed.

    python tools/bench_int8_schemes.py PKG --data digits --limit 400
    python tools/bench_int8_schemes.py TEXT_PKG --data tweets --split validation --limit 300
    python tools/bench_int8_schemes.py EFFNET_PKG --data unlabelled --limit 200   # fp32 answers as labels

For each scheme (``edgeexit.int8_schemes.SCHEMES``) that fits the package's mode (static QDQ for
images, dynamic for text encoders), the package is copied and quantized with ``quantize_package``
in one run, and the script prints, side by side:

- kernel error: how far this CPU's integer kernels are from the graph's exact integer arithmetic
  (the float oracle), as a share of the worst exit output's range, on the package's reference
  sample. Saturation (u8 x s8 on x86 without VNNI) shows here; saturation-free schemes stay at
  rounding level. Unsafe schemes are measured too (the tolerance is lifted for this script only:
  ``edgeexit quantize`` refuses them where they saturate).
- agreement with fp32: the final exit's top-1 agreement at full depth on ``--data``;
- int8 / fp32 time: the sum over segments of batch-1 medians (quantize's own side-by-side timing).

The CPU's int8 flags are printed first: the figures hold for that CPU family (docs/benchmarks.md
compares AVX2-only with AVX-512 VNNI). Timings are ratios from one run on a shared machine.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_int8 import _load

from edgeexit.compile import quantize as quantize_module
from edgeexit.compile.quantize import QuantizeOptions, quantize_package
from edgeexit.int8_schemes import DEFAULT_SCHEMES, SCHEMES
from edgeexit.package import open_package
from edgeexit.profile.record import Machine
from edgeexit.runtime.verify import KERNEL_TOLERANCE, int8_cpu_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path)
    parser.add_argument("--data", required=True, help="digits, mnist-5k, fashion-mnist, tweets, a .npz ...")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=400)
    parser.add_argument("--samples", type=int, default=64, help="calibration samples for static ranges")
    parser.add_argument("--timing-samples", type=int, default=64)
    args = parser.parse_args()

    manifest = open_package(args.package).manifest
    mode = "dynamic" if manifest.input.context else "static"
    x, y, source = _load(args.data, args.split, args.limit, args.package)
    if y is None:  # unlabelled images: the fp32 model's own answers are the labels ("agreement")
        from edgeexit.runtime import Engine

        y = Engine(args.package, cache_dir=None, threshold=math.inf).run_full(x, timing_samples=1).logits[-1]
        y = y.argmax(axis=1)
    print(f"CPU: {Machine.current().describe()}; int8 features: {int8_cpu_features()}")
    print(f"package {manifest.model_name}, {mode} quantization, data: {source}")
    quantize_module.KERNEL_TOLERANCE = math.inf  # measure unsafe schemes too (this script only)
    rows = []
    for name, scheme in SCHEMES.items():
        if mode == "dynamic" and scheme.activations != "uint8":
            continue
        with tempfile.TemporaryDirectory(prefix="edgeexit-schemes-") as work:
            root = Path(work) / "pkg"
            shutil.copytree(args.package, root)
            report = quantize_package(
                root,
                x,
                y,
                QuantizeOptions(samples=args.samples, timing_samples=args.timing_samples, mode=mode, scheme=name),
            )
        error = report.variant.report["kernel_check"]["max_error_here"]
        agreement = report.exits[-1].agreement
        fp32 = sum(t.fp32_ms for t in report.segments)
        int8 = sum(t.int8_ms for t in report.segments)
        rows.append((name, scheme.saturation_free, error, agreement, int8 / fp32))
    print(f"\n{'scheme':<11} {'safe':<5} {'kernel error':>13} {'agree fp32':>11} {'int8/fp32':>10}")
    for name, safe, error, agreement, ratio in rows:
        flag = " (default)" if DEFAULT_SCHEMES[mode] == name else ""
        over = "  > tolerance: refused by edgeexit quantize" if error > KERNEL_TOLERANCE else ""
        print(f"{name:<11} {'yes' if safe else 'no':<5} {error:>12.2%} {agreement:>10.1%} {ratio:>9.2f}x{flag}{over}")


if __name__ == "__main__":
    main()
