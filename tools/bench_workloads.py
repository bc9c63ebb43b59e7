"""Issue 14's real workloads from scratch, one after the other: image, text, a camera-frame package, offload.

    python tools/bench_workloads.py [--out DIR] [--quick] [--start-at STEP] [--stop-after STEP]

1. ``image``: ``tools/workload_image.py``: EfficientNet-Lite0 (ImageNet weights) fine-tuned with
   exits on Fashion-MNIST (MNIST-5k without Debian's package), exported, calibrated and measured on
   the test images: early exit vs full depth, segmented vs monolithic, int8, LiteRT.
2. ``text``: ``tools/bench_models.py --model minilm --data rotten-tomatoes``: all-MiniLM-L6-v2 with
   exits on the Rotten Tomatoes snippets, max_prob vs MuE similarity (add ``--finetune-epochs 1``
   through ``--text-args`` for the fine-tuned model docs/benchmarks.md quotes).
3. ``heavier``: ``tools/workload_image.py --init-checkpoint``: step 1's model continued at 128 px
   on 18,000 of its training images (progressive resizing), measured on 2,000 test images: 19 ms at
   full depth at a Pi 4's speed, heavy enough for offloading to matter (``--quick``: skipped, the
   next steps take step 1's model).
4. ``frames``: ``tools/frame_data.py``: step 3's validation split (never trained on) and its 2,000
   test images upsampled to 128x128 frames, ``frame128_val.npz`` and ``frame128_test.npz``.
5. ``frame-export``: ``edgeexit export ...zoo_workloads:efficientnet_lite0_fashion -a size=128``:
   step 3's weights exported to take the 128x128 frame itself (the resize is in the graph, so the
   weights do not depend on the input size), with fp32 and int8 boundary tensors, ``frame128`` (no
   fp16: on one retrained model fp16-coding the frame moved logits by 0.155, past export's 0.01
   tolerance for that codec, and failed the export; step 7 sends int8).
   What all-offload sends is then the frame a camera gives, 16 KB in int8, not a 784-byte
   thumbnail that is cheaper to send than any boundary tensor: only so can early exit + offload at
   a boundary beat both all-local and all-offload (docs/benchmarks.md, sweeps Q and R).
6. ``frame-calibrate``: ``edgeexit calibrate`` of the frame package on the validation frames with
   step 3's options (at most 1 point below full depth, 1 standard error in reserve): its own
   thresholds and temperatures, not step 3's copied over.
7. ``offload``: ``tools/bench_policy.py --device-speed rpi4 --speed-reference auto``: the frame
   package on the test frames, on a device emulated at a Raspberry Pi 4's speed on this host (the
   preset re-based by timing its reference network here), static plans vs the policies over links
   of 1-500 Mbit/s x 5-50 ms: sweep R.

Each step is its own process (its own torch threads and memory), its output streamed as it comes;
a failed step stops the run with its exit status. ``--quick`` passes each tool's own smoke mode:
minutes, not results; steps 4-7 then run on step 1's 32 px model taking 32x32 frames (fp32 tails,
the Pi 4 factor not re-based), so CI runs every command of the full run but the 128 px training.
``--start-at`` / ``--stop-after`` (by the names above; ``--start-at`` needs the ``--out`` of the
run whose earlier outputs it takes) resume a run after a failed step, or build the packages now and
measure later on a machine with nothing else running. The figures and the full commands behind them
are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

TOOLS = Path(__file__).resolve().parent

#: What --start-at and --stop-after take: every step's name, in order (--quick has no "heavier").
STEP_NAMES = ("image", "text", "heavier", "frames", "frame-export", "frame-calibrate", "offload")

#: The links point 4's figures were measured on: bench_policy's seven (1-500 Mbit/s x 5-50 ms) plus
#: 50 Mbit/s x 5 and 10 ms, where the policies' model put the edges of the regimes (docs/benchmarks.md).
OFFLOAD_LINKS = (
    "1mbit,50ms;5mbit,50ms;20mbit,20ms;100mbit,10ms;500mbit,5ms;500mbit,50ms;20mbit,5ms;50mbit,5ms;50mbit,10ms"
)

OFFLOAD_TITLE = "offload: the frame package at a Raspberry Pi 4's speed"

#: The factory behind workload_image.py's model (``edgeexit.compile.finetune.build_model``).
FRAME_FACTORY = "edgeexit.compile.zoo_workloads:efficientnet_lite0_fashion"

#: How workload_image.py calibrates its package (``_calibrate``: ``calibrate_manifest`` with max drop
#: 0.01 and the default margin, 1 standard error), so the frame package is held to the same budget.
CALIBRATION = ("--max-drop", "0.01", "--margin", "1")

#: The 128 px continuation of step 1's model (sweep Q's command): 805 s of training on 2 cores.
HEAVIER = (
    "--resolution", "128", "--train-limit", "18000", "--lr", "1e-3", "--bn-momentum", "0.1",
    "--codecs", "fp32,fp16,int8", "--no-tflite", "--no-int8", "--test-limit", "2000", "--rounds", "1",
)  # fmt: skip


@dataclass(frozen=True)
class Step:
    name: str  # one of STEP_NAMES
    title: str
    command: list[str]  # arguments to this Python interpreter


@dataclass(frozen=True)
class Frames:
    """A workload_image.py run's weights exported to take ``size`` x ``size`` frames, and its images as such.

    ``workload`` is that run's arguments (frame_data.py rebuilds its validation split and test images
    from them), ``resolution`` the one it trained at (the graph resizes the frame to it)."""

    out: Path
    model: Path
    workload: tuple[str, ...]
    resolution: int
    size: int
    codecs: str

    @property
    def package(self) -> Path:
        return self.out / f"frame{self.size}"

    @property
    def validation(self) -> Path:
        return self.out / f"frame{self.size}_val.npz"

    @property
    def test(self) -> Path:
        return self.out / f"frame{self.size}_test.npz"


def steps(out: Path, quick: bool, text_args: list[str]) -> list[Step]:
    """The run's commands, in order, every path under ``out``: each step finds the one before's there,
    which is also what lets ``--start-at`` resume a run."""
    smoke = ["--quick"] if quick else []
    image = out / "image"
    first = ("--out", str(image), *smoke)  # step 1's workload_image.py arguments
    text = ["--model", "minilm", "--data", "rotten-tomatoes", "--max-length", "128"]
    if not quick:
        text += ["--train-texts", "0", "--samples", "0", "--rounds", "3", "--latency-samples", "40"]
    found = [
        Step("image", "image: EfficientNet-Lite0 on Fashion-MNIST", [str(TOOLS / "workload_image.py"), *first]),
        Step("text", "text: MiniLM on Rotten Tomatoes", [str(TOOLS / "bench_models.py"), *text, *smoke, *text_args]),
    ]  # fmt: skip
    if quick:  # step 1's smoke model (32 px: workload_image.QUICK) taking 32x32 frames, fp32 tails
        frames = Frames(out, image / "model.pt", first, resolution=32, size=32, codecs="fp32")
        policy = ["--package", str(frames.package), "--data", str(frames.test), "--codec", "fp32", "--quick"]
        return [*found, *frame_steps(frames), Step("offload", OFFLOAD_TITLE, _policy(policy))]
    heavy = out / "image128"
    workload = ("--out", str(heavy), "--init-checkpoint", str(image / "model.pt"), *HEAVIER)
    frames = Frames(out, heavy / "model.pt", workload, resolution=128, size=128, codecs="fp32,int8")
    policy = [
        "--speed-reference", "auto", "--package", str(frames.package), "--data", str(frames.test), "--codec", "int8",
        "--rows", "split@input,early+split,best-static", "--links", OFFLOAD_LINKS, "--samples", "100", "--rounds", "3",
    ]  # fmt: skip
    return [
        *found,
        Step("heavier", "heavier: the image model continued at 128 px", [str(TOOLS / "workload_image.py"), *workload]),
        *frame_steps(frames),
        Step("offload", OFFLOAD_TITLE, _policy(policy)),
    ]


def frame_steps(frames: Frames) -> list[Step]:
    """The frame data, the frame package, and its calibration on the frames (steps 4-6)."""
    size = frames.size
    data = [
        str(TOOLS / "frame_data.py"), "--frame-size", str(size), "--validation-out", str(frames.validation),
        "--test-out", str(frames.test), *frames.workload,
    ]  # fmt: skip
    export = [
        "-m", "edgeexit", "export", FRAME_FACTORY, "-a", f"resolution={frames.resolution}", "-a", f"size={size}",
        "-a", "pretrained=false", "--weights", str(frames.model), "--input-shape", f"1,1,{size},{size}",
        "--codecs", frames.codecs, "--data", str(frames.test), "--out", str(frames.package), "--force",
    ]  # fmt: skip
    calibrate = ["-m", "edgeexit", "calibrate", str(frames.package), "--data", str(frames.validation), *CALIBRATION]
    return [
        Step("frames", f"frames: the validation and test images as {size}x{size} frames", data),
        Step("frame-export", f"frame package: the {frames.resolution} px model taking the {size}x{size} frame", export),
        Step("frame-calibrate", "calibrate: the frame package on the validation frames", calibrate),
    ]


def _policy(arguments: list[str]) -> list[str]:
    return [str(TOOLS / "bench_policy.py"), "--device-speed", "rpi4", *arguments]


def between(found: list[Step], start: str | None, stop: str | None) -> list[Step]:
    """The steps from ``start`` to ``stop`` (names; None: the first, the last), refused in one line
    when a name is not a step of this run (``heavier`` with ``--quick``) or the range is empty."""
    from edgeexit.errors import UsageError

    names = [step.name for step in found]
    for flag, name in (("--start-at", start), ("--stop-after", stop)):
        if name is not None and name not in names:
            raise UsageError(f"{flag} {name}: this run's steps are {', '.join(names)}")
    first = names.index(start) if start else 0
    last = names.index(stop) if stop else len(names) - 1
    if last < first:
        raise UsageError(f"--stop-after {stop} comes before --start-at {start}; the steps are {', '.join(names)}")
    return found[first : last + 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: a new temporary one)")
    parser.add_argument("--quick", action="store_true", help="each tool's smoke run")
    parser.add_argument("--text-args", default="", help="extra arguments for the text step, e.g. '--finetune-epochs 1'")
    parser.add_argument("--start-at", choices=STEP_NAMES, help="skip the steps before this one (needs --out)")
    parser.add_argument("--stop-after", choices=STEP_NAMES, help="skip the steps after this one")
    args = parser.parse_args()
    if args.start_at and args.out is None:
        parser.error("--start-at takes the earlier steps' outputs from --out: give the run directory")
    out = args.out or Path(tempfile.mkdtemp(prefix="edgeexit-workloads-"))
    found = steps(out, args.quick, shlex.split(args.text_args))
    chosen = between(found, args.start_at, args.stop_after)
    out.mkdir(parents=True, exist_ok=True)
    if len(chosen) < len(found):
        print(f"running {', '.join(s.name for s in chosen)} of {', '.join(s.name for s in found)}", flush=True)
    for step in chosen:
        print(f"\n=== {step.title}\n$ python {' '.join(shlex.quote(part) for part in step.command)}", flush=True)
        began = time.perf_counter()
        status = subprocess.run([sys.executable, *step.command], check=False).returncode
        print(f"=== {step.title}: exit {status} after {time.perf_counter() - began:.0f} s", flush=True)
        if status != 0:
            return status
    print(f"\nevery step passed; run directory {out}")
    return 0


if __name__ == "__main__":
    import _tool  # beside this script

    _tool.run(main)
