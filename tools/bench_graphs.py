"""The generic adapter's models: what cutting a traced graph costs at run time.

    python tools/bench_graphs.py [--samples 300] [--rounds 5] [--threads 1] [--train-samples 20000]

For each zoo model the generic adapter cuts (MobileNetV2, a U-Net whose skips cross the cuts,
ConvNeXt, an image + side-vector model), exported here with its monolithic graph, measured side
by side in one run with the same thread count, rounds alternating: batch-1 full-depth latency of
the segmented package through the engine (its bound chain where the package allows one) against
the monolithic graph in one ONNX Runtime session. Also printed: the tensors and bytes per sample
crossing each boundary. Weights are untrained there: that table is about time, not accuracy.

With ``--train-samples N`` (> 0), the models are then built for 28x28 grey images (the two-input
model's side vector: each image's four quadrant means), trained jointly on N of the built-in
images (Fashion-MNIST when installed, else the 5k MNIST digits), calibrated on held-out images
(max drop 1 point) and measured as bench_runtime measures its CNNs: early exit at the calibrated
thresholds against full depth, per sample, mean ms, accuracy, exit rates. Workstation tool (uses
torch to build, train and export the models).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

MODELS = ("graph_mobilenet_v2", "graph_unet", "graph_convnext", "graph_two_inputs")


def _feeds(model, n: int) -> list[dict[str, np.ndarray]]:
    import torch

    generator = torch.Generator().manual_seed(1)
    values = [torch.randn(e.shape, generator=generator).numpy() for e in model.example_inputs((n,))]
    names = (model.input_name, *model.context_names)
    return [{name: v[i : i + 1] for name, v in zip(names, values, strict=True)} for i in range(n)]


def bench(name: str, workdir: Path, args: argparse.Namespace) -> None:
    import torch

    from edgeexit.compile import create_model, export
    from edgeexit.runtime import Engine
    from edgeexit.runtime.sessions import load_session

    torch.manual_seed(0)
    model = create_model(name).eval()
    shape = (1, *model.example_inputs((1,))[0].shape[1:])
    package = export(model, shape, workdir / name, monolithic=True)
    manifest = package.manifest
    engine = Engine(package, threads=args.threads, threshold=1.01, cache_dir=None)  # full depth: no exit fires
    monolithic = load_session(package.path(manifest.monolithic), args.threads)
    outputs = [monolithic.get_outputs()[-1].name]
    feeds = _feeds(model, args.samples)
    single = not model.context_names

    def segmented() -> float:
        started = time.perf_counter()
        for feed in feeds:
            engine.run(feed[model.input_name] if single else feed)
        return (time.perf_counter() - started) * 1e3 / len(feeds)

    def whole() -> float:
        started = time.perf_counter()
        for feed in feeds:
            monolithic.run(outputs, feed)
        return (time.perf_counter() - started) * 1e3 / len(feeds)

    segmented(), whole()  # warm-up
    seg_ms, mono_ms = [], []
    for _ in range(args.rounds):
        seg_ms.append(segmented())
        mono_ms.append(whole())
    seg, mono = statistics.median(seg_ms), statistics.median(mono_ms)
    crossing = [
        f"{len(s.boundary)} tensor(s), {s.hidden_bytes / 1024:.1f} KiB" for s in manifest.segments if s.hidden_bytes
    ]
    chain = "bound chain" if engine._walker.chain is not None else "segment by segment"
    print(
        f"| {name} | {len(manifest.segments)} | {'; '.join(crossing)} | {mono:.3f} | {seg:.3f} | "
        f"**{seg / mono:.3f}** | {chain} |"
    )


def _quadrant_means(x: np.ndarray) -> np.ndarray:
    """The two-input model's side vector: each image quadrant's mean brightness (4 values), side
    information of the kind a sensor would send beside a picture."""
    h, w = x.shape[2] // 2, x.shape[3] // 2
    parts = [x[:, :, :h, :w], x[:, :, :h, w:], x[:, :, h:, :w], x[:, :, h:, w:]]
    return np.stack([q.mean(axis=(1, 2, 3)) for q in parts], axis=1).astype(np.float32)


def bench_trained(name: str, workdir: Path, args: argparse.Namespace) -> None:
    import dataclasses
    import hashlib

    import torch

    from edgeexit.calibration import calibrate_manifest
    from edgeexit.compile import create_model, export, train
    from edgeexit.data import builtin_images
    from edgeexit.runtime import Engine

    two = name == "graph_two_inputs"

    def with_side(data):  # the two-input model's data carry their side vectors
        return dataclasses.replace(data, extra={"metadata": _quadrant_means(data.x)}) if two else data

    train_data = with_side(builtin_images("train").head(args.train_samples))
    test = with_side(builtin_images("test"))
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = create_model(name, num_classes=10, in_channels=1, size=28)
    report = train(model, train_data, epochs=args.epochs, progress=False)
    package = export(model, (1, 1, 28, 28), workdir / f"{name}_trained", labels=train_data.labels)
    half = min(args.samples * 4, len(test) // 2)
    validation, evaluation = test.subset(np.arange(0, half)), test.subset(np.arange(len(test) - half, len(test)))

    def feeds(data) -> object:
        return {model.input_name: data.x, **data.extra} if two else data.x

    def one_by_one(engine: Engine, data) -> tuple[float, float, np.ndarray]:
        rows = [{k: v[i : i + 1] for k, v in feeds(data).items()} for i in range(len(data))] if two else data.x
        results = [engine.run(row) for row in rows]
        accuracy = float(np.mean([r.prediction == y for r, y in zip(results, data.y, strict=True)]))
        rates = np.bincount([r.exit for r in results], minlength=engine.num_exits) / len(results)
        return float(np.mean([r.latency_ms for r in results])), accuracy, rates

    full = Engine(package, threads=args.threads, threshold=1.01, cache_dir=None)
    outputs = full.run_full(feeds(validation))
    digest = hashlib.sha256(validation.x.tobytes()).hexdigest()
    calibrated, _ = calibrate_manifest(
        package.manifest, outputs, validation.y, criterion=None, max_drop=0.01, data_sha256=digest
    )
    early = Engine(package.save_manifest(calibrated), threads=args.threads, cache_dir=None)
    runs: dict[str, list] = {"full": [], "early": []}
    for _ in range(args.rounds):
        runs["full"].append(one_by_one(full, evaluation))
        runs["early"].append(one_by_one(early, evaluation))
    full_ms = statistics.median(r[0] for r in runs["full"])
    early_ms = statistics.median(r[0] for r in runs["early"])
    accuracy = runs["full"][0][1], runs["early"][0][1]
    rates = " / ".join(f"{r:.0%}" for r in runs["early"][0][2])
    trained = " / ".join(f"{a.accuracy:.3f}" for a in report.accuracy)
    print(
        f"| {name} | {report.seconds:.0f} s, per exit {trained} | {accuracy[0]:.4f} | {accuracy[1]:.4f} | "
        f"{100 * (accuracy[0] - accuracy[1]):+.2f} | {full_ms:.3f} | {early_ms:.3f} | **{full_ms / early_ms:.2f}x** | "
        f"{rates} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-samples", type=int, default=0, help="> 0: also train the one-input models")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    print(f"batch 1, full depth, {args.samples} samples x {args.rounds} rounds, {args.threads} thread(s), medians")
    print("| model | segments | crossing each boundary | monolithic ms | segmented ms | ratio | engine path |")
    print("| --- | ---: | --- | ---: | ---: | ---: | --- |")
    with tempfile.TemporaryDirectory(prefix="bench-graphs-") as scratch:
        for name in args.models:
            bench(name, Path(scratch), args)
        if args.train_samples > 0:
            from edgeexit.data import builtin_images

            source = builtin_images("train").source
            print(f"\ntrained on {args.train_samples} images of {source}, {args.epochs} epochs; calibrated on "
                  f"{min(args.samples * 4, 5000)} held-out test images (max drop 1 pt), evaluated on as many others, "
                  "one sample at a time")  # fmt: skip
            print("| model | training | full-depth accuracy | early-exit accuracy | drop (pt) | full ms | early ms | "
                  "speedup | exit rates |")  # fmt: skip
            print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
            for name in args.models:
                bench_trained(name, Path(scratch), args)


if __name__ == "__main__":
    import _tool  # beside this script

    _tool.run(main)
