"""Issue 14's real workloads from scratch, one after the other: image, text, a heavier image package, offload.

    python tools/bench_workloads.py [--out DIR] [--quick]

1. ``tools/workload_image.py``: EfficientNet-Lite0 (ImageNet weights) fine-tuned with exits on
   Fashion-MNIST (MNIST-5k without Debian's package), exported, calibrated and measured on the
   test images: early exit vs full depth, segmented vs monolithic, int8, LiteRT.
2. ``tools/bench_models.py --model minilm --data rotten-tomatoes``: all-MiniLM-L6-v2 with exits on
   the Rotten Tomatoes snippets, max_prob vs MuE similarity (add ``--finetune-epochs 1`` through
   ``--text-args`` for the fine-tuned model docs/benchmarks.md quotes).
3. ``tools/workload_image.py --init-checkpoint``: step 1's model continued at 96 px on 18,000
   of its training images (progressive resizing), exported with fp32 / fp16 / int8 boundary
   tensors: a package heavy enough at a Pi's speed for offloading to matter (``--quick``: skipped).
4. ``tools/bench_policy.py --device-speed rpi4 --speed-reference auto``: step 3's package
   (``--quick``: step 1's, the factor not re-based) on a device emulated at a Raspberry Pi 4's
   speed on this host, static plans vs the policies over links of 1-500 Mbit/s x 5-50 ms.

Each step is its own process (its own torch threads and memory), its output streamed as it comes;
a failed step stops the run with its exit status. ``--quick`` passes each tool's own smoke mode:
minutes, not results. The figures and the full commands behind them are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent


#: The links point 4's figures were measured on: bench_policy's seven (1-500 Mbit/s x 5-50 ms) plus
#: 50 Mbit/s x 5 and 10 ms, where the policies' model put the edges of the regimes (docs/benchmarks.md).
OFFLOAD_LINKS = (
    "1mbit,50ms;5mbit,50ms;20mbit,20ms;100mbit,10ms;500mbit,5ms;500mbit,50ms;20mbit,5ms;50mbit,5ms;50mbit,10ms"
)


def steps(out: Path, quick: bool, text_args: list[str]) -> list[tuple[str, list[str]]]:
    smoke = ["--quick"] if quick else []
    image, heavy = out / "image", out / "image96"
    text = ["--model", "minilm", "--data", "rotten-tomatoes", "--max-length", "128"]
    if not quick:
        text += ["--train-texts", "0", "--samples", "0", "--rounds", "3", "--latency-samples", "40"]
    found = [
        ("image: EfficientNet-Lite0 on Fashion-MNIST", [str(TOOLS / "workload_image.py"), "--out", str(image), *smoke]),
        ("text: MiniLM on Rotten Tomatoes", [str(TOOLS / "bench_models.py"), *text, *smoke, *text_args]),
    ]
    if quick:  # the smoke package, with the fp32 tails the image step exports
        policy = ["--package", str(image / "package"), "--codec", "fp32", "--quick"]
        return [*found, ("offload: the image package at a Raspberry Pi 4's speed", _policy(policy))]
    continued = [
        str(TOOLS / "workload_image.py"), "--out", str(heavy), "--init-checkpoint", str(image / "model.pt"),
        "--resolution", "96", "--train-limit", "18000", "--lr", "1e-3", "--bn-momentum", "0.1",
        "--codecs", "fp32,fp16,int8", "--no-tflite", "--no-int8", "--test-limit", "2000", "--rounds", "1",
    ]  # fmt: skip
    policy = [
        "--package", str(heavy / "package"), "--codec", "int8", "--rows", "split@input,early+split,best-static",
        "--links", OFFLOAD_LINKS, "--samples", "200", "--rounds", "3", "--speed-reference", "auto",
    ]  # fmt: skip
    return [
        *found,
        ("heavier: the image model continued at 96 px", continued),
        ("offload: the 96 px package at a Raspberry Pi 4's speed", _policy(policy)),
    ]


def _policy(arguments: list[str]) -> list[str]:
    return [str(TOOLS / "bench_policy.py"), "--device-speed", "rpi4", *arguments]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: a new temporary one)")
    parser.add_argument("--quick", action="store_true", help="each tool's smoke run")
    parser.add_argument("--text-args", default="", help="extra arguments for the text step, e.g. '--finetune-epochs 1'")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="edgeexit-workloads-"))
    out.mkdir(parents=True, exist_ok=True)
    for title, command in steps(out, args.quick, shlex.split(args.text_args)):
        print(f"\n=== {title}\n$ python {' '.join(shlex.quote(part) for part in command)}", flush=True)
        began = time.perf_counter()
        status = subprocess.run([sys.executable, *command], check=False).returncode
        print(f"=== {title}: exit {status} after {time.perf_counter() - began:.0f} s", flush=True)
        if status != 0:
            return status
    print(f"\nevery step passed; run directory {out}")
    return 0


if __name__ == "__main__":
    import _tool  # beside this script

    _tool.run(main)
