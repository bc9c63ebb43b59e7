"""Why segment boundaries cost: ONNX Runtime's blocked (NCHWc) layout, A/B by optimization level.

    python tools/bench_layout.py [PACKAGE] [--ops]     # default: exports an untrained resnet64 package

For ORT_ENABLE_ALL (layout rewrite on) and ORT_ENABLE_EXTENDED (off), batch-1 median latency of
the monolithic graph and of the segments chained with plain session.run, 3 alternating rounds
(with the layout rewrite on, also ``Engine.run`` at full depth, threshold inf: what the engine
adds over the bare sessions).
Then the engine's throughput one sample at a time vs. run_batch at batch 8 and 32 (whatever the
package's thresholds make of them; an untrained package runs everything to full depth), and its
cold start (Engine construction) without the optimized-graph cache, filling it, and reading it.

``--ops`` adds where the segments' extra time goes, from ONNX Runtime's own profiler: kernel
time per operator type, monolithic graph vs. the segments chained on the same samples (every
segment fed the hidden tensor the one before produced), and each graph's whole ``model_run``.
The NCHWc layout shows up as ReorderInput / ReorderOutput nodes: one pair per boundary that
one graph does not need.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgeexit.package import open_package


def _options(level: ort.GraphOptimizationLevel) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = level
    options.log_severity_level = 3
    return options


def _median_ms(fn: Callable[[np.ndarray], None], xs: np.ndarray) -> float:
    times = []
    for sample in xs:
        tick = time.perf_counter()
        fn(sample)
        times.append(time.perf_counter() - tick)
    return float(np.median(times) * 1e3)


def compare(package_dir: Path, samples: int = 200, rounds: int = 3) -> None:
    package = open_package(package_dir)
    manifest = package.manifest
    if manifest.monolithic is None:
        sys.exit(f"{package_dir} has no monolithic graph: export it with --monolithic")
    xs = np.random.default_rng(0).random((samples, *manifest.input.shape[1:]), dtype=np.float32)
    levels = {
        "ORT_ENABLE_ALL": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "ORT_ENABLE_EXTENDED": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }
    for name, level in levels.items():
        provider = ["CPUExecutionProvider"]
        mono = ort.InferenceSession(str(package.path(manifest.monolithic)), _options(level), providers=provider)
        segments = [
            ort.InferenceSession(str(package.path(s.file)), _options(level), providers=provider)
            for s in manifest.segments
        ]

        def run_mono(sample: np.ndarray, mono: ort.InferenceSession = mono) -> None:
            mono.run(None, {manifest.input.name: sample[None]})

        def run_segments(sample: np.ndarray, segments: list[ort.InferenceSession] = segments) -> None:
            x = sample[None]
            for session, spec in zip(segments, manifest.segments, strict=True):
                x = session.run(None, {spec.inputs[0].name: x})[0]

        runs: dict[str, Callable[[np.ndarray], object]] = {"monolithic": run_mono, "segments": run_segments}
        if level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL:  # the engine's own level
            from edgeexit.runtime import Engine

            runs["engine"] = Engine(package, threshold=math.inf, cache_dir=None).run  # full depth
        for run in runs.values():
            _median_ms(run, xs[:20])
        found: dict[str, list[float]] = {label: [] for label in runs}
        for _ in range(rounds):
            for label, run in runs.items():
                found[label].append(_median_ms(run, xs))
        a = float(np.median(found["monolithic"]))
        shown = "  ".join(
            f"{label} {float(np.median(ms)):.4f} ms (ratio {float(np.median(ms)) / a:.3f})"
            for label, ms in found.items()
            if label != "monolithic"
        )
        print(f"{name:<20} monolithic {a:.4f} ms  {shown}")

    from edgeexit.runtime import Engine

    engine = Engine(package, cache_dir=None)
    runs: dict[str, Callable[[], object]] = {
        "one at a time": lambda: [engine.run(sample) for sample in xs],
        "batch 8": lambda: engine.run_batch(xs, batch_size=8),
        "batch 32": lambda: engine.run_batch(xs, batch_size=32),
    }
    for name, run in runs.items():
        run()
        tick = time.perf_counter()
        run()
        print(f"engine {name:<14} {len(xs) / (time.perf_counter() - tick):8.0f} samples/s")

    with tempfile.TemporaryDirectory() as cache:
        starts: dict[str, list[float]] = {"no cache": [], "filling the cache": [], "from the cache": []}
        for round_ in range(rounds):
            for name, cache_dir in (("no cache", None), ("filling the cache", Path(cache) / str(round_))):
                tick = time.perf_counter()
                Engine(package, cache_dir=cache_dir)
                starts[name].append((time.perf_counter() - tick) * 1e3)
            tick = time.perf_counter()
            Engine(package, cache_dir=Path(cache) / str(round_))
            starts["from the cache"].append((time.perf_counter() - tick) * 1e3)
        for name, values in starts.items():
            print(f"engine cold start, {name:<18} {np.median(values):8.1f} ms")


def _profiled(path: Path, prefix: str) -> ort.InferenceSession:
    options = _options(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    options.enable_profiling = True
    options.profile_file_prefix = prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _kernel_us(session: ort.InferenceSession) -> tuple[collections.Counter[str], list[float]]:
    """Summed kernel microseconds per operator type, and every model_run's microseconds."""
    events = json.loads(Path(session.end_profiling()).read_text())
    kernels: collections.Counter[str] = collections.Counter()
    runs = []
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            kernels[event["args"]["op_name"]] += event["dur"]
        elif event.get("name") == "model_run":
            runs.append(event["dur"])
    return kernels, runs


def operator_times(package_dir: Path, samples: int = 40) -> None:
    package = open_package(package_dir)
    manifest = package.manifest
    if manifest.monolithic is None:
        sys.exit(f"{package_dir} has no monolithic graph: export it with --monolithic")
    xs = np.random.default_rng(0).random((samples, *manifest.input.shape[1:]), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        mono = _profiled(package.path(manifest.monolithic), f"{tmp}/mono")
        segments = [_profiled(package.path(s.file), f"{tmp}/seg{s.index}") for s in manifest.segments]
        for sample in xs:
            mono.run(None, {manifest.input.name: sample[None]})
            x = sample[None]
            for session, spec in zip(segments, manifest.segments, strict=True):
                x = session.run(None, {spec.inputs[0].name: x})[0]
        whole, whole_runs = _kernel_us(mono)
        split: collections.Counter[str] = collections.Counter()
        split_run = 0.0
        for session in segments:
            kernels, runs = _kernel_us(session)
            split.update(kernels)
            split_run += float(np.median(runs[1:]))  # the first run includes one-off allocations
    print(f"kernel time per sample by operator (ORT profiler, {samples} samples, 1 thread), microseconds:")
    print(f"{'operator':<24} {'monolithic':>11} {'segments':>11} {'difference':>11}")
    for op in sorted(set(whole) | set(split), key=lambda op: -(split[op] - whole[op])):
        a, b = whole[op] / samples, split[op] / samples
        print(f"{op:<24} {a:11.1f} {b:11.1f} {b - a:+11.1f}")
    a, b = sum(whole.values()) / samples, sum(split.values()) / samples
    print(f"{'all kernels':<24} {a:11.1f} {b:11.1f} {b - a:+11.1f}")
    mono_run = float(np.median(whole_runs[1:]))
    print(f"{'model_run (median)':<24} {mono_run:11.1f} {split_run:11.1f} {split_run - mono_run:+11.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", nargs="?", type=Path)
    parser.add_argument("--ops", action="store_true", help="also: kernel time per operator, monolithic vs. segments")
    args = parser.parse_args()
    if args.package:
        compare(args.package)
        if args.ops:
            operator_times(args.package)
        return
    from edgeexit.compile import export
    from edgeexit.compile.zoo import tiny_resnet

    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_resnet(num_classes=10, in_channels=1, size=64, width=16, blocks=1, head="conv")
        export(model, (1, 1, 64, 64), Path(tmp) / "resnet64", monolithic=True)
        compare(Path(tmp) / "resnet64")
        if args.ops:
            operator_times(Path(tmp) / "resnet64")


if __name__ == "__main__":
    main()
