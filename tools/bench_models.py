"""Pretrained backbones with exits, measured side by side: EfficientNet-Lite0 and all-MiniLM-L6-v2.

For each model, in one run on this machine (batch 1, ``--threads`` runtime threads):

(a) segmented vs. monolithic: the package's segments chained (full depth) against its
    monolithic graph, same inputs, rounds interleaved; target <= 1.03.
(b) early exit vs. full depth at thresholds calibrated on a validation split (max drop 1 point,
    1 standard error of margin), measured on a disjoint test split: speedup, accuracy change,
    exit rates, mean layers (MiniLM) used.
(c) MiniLM only: MuE, the similarity criterion stopping the encoder at layers that have no head
    of their own (they read the final classifier), next to max_prob, each calibrated the same way.
(d) ONNX Runtime vs. LiteRT per segment, when the package has a TFLite variant.
(e) int8 (static, QDQ, per channel) vs. fp32 per segment and end to end, and accuracy.

Labels: MiniLM's test split is labelled tweets. EfficientNet-Lite0's images (sklearn's photos
and Fashion-MNIST, upscaled) have no ImageNet labels, so its "accuracy" is agreement with the
full model's own prediction (the final exit agrees with itself: 100%), and calibration uses the
final exit's predictions as labels. Each section prints its figures; docs/benchmarks.md records them.

    python tools/bench_models.py --model minilm --minilm-checkpoint /tmp/minilm_ckpt.pt
    python tools/bench_models.py --model efficientnet
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _median_ms(fn: Callable[[object], object], items: Sequence[object]) -> float:
    times = []
    for item in items:
        tick = time.perf_counter()
        fn(item)
        times.append((time.perf_counter() - tick) * 1e3)
    return float(np.median(times))


def _interleaved(
    named: dict[str, Callable[[object], object]], items: Sequence[object], rounds: int
) -> dict[str, float]:
    """Median over rounds of each function's median per-item ms, the functions taking turns."""
    for fn in named.values():
        _median_ms(fn, items[:5])  # warm
    found: dict[str, list[float]] = {name: [] for name in named}
    for _ in range(rounds):
        for name, fn in named.items():
            found[name].append(_median_ms(fn, items))
    return {name: float(np.median(values)) for name, values in found.items()}


def _segmented_vs_monolithic(package, inputs: Sequence[object], threads: int, rounds: int) -> None:
    import onnxruntime as ort

    from edgeexit.runtime import Engine
    from edgeexit.runtime.sessions import session_options

    full = Engine(package, threads=threads, threshold=math.inf, cache_dir=None)
    mono = ort.InferenceSession(
        str(package.path(package.manifest.monolithic)), session_options(threads), providers=["CPUExecutionProvider"]
    )
    name = package.manifest.input.name

    def feeds(item: object) -> dict[str, np.ndarray]:
        return dict(item) if isinstance(item, dict) else {name: item[None]}  # type: ignore[index]

    found = _interleaved({"monolithic": lambda x: mono.run(None, feeds(x)), "segmented": full.run}, inputs, rounds)
    ratio = found["segmented"] / found["monolithic"]
    print(
        f"(a) batch 1, full depth, median ms: monolithic {found['monolithic']:.3f}, segmented "
        f"{found['segmented']:.3f} -> ratio {ratio:.3f} (target <= 1.03)"
    )


def _evaluate(engine, inputs: Sequence[object], y: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Accuracy, mean ms per sample (one at a time) and exit index per sample."""
    results = []
    tick = time.perf_counter()
    for item in inputs:
        results.append(engine.run(item))
    mean_ms = (time.perf_counter() - tick) * 1e3 / len(inputs)
    predictions = np.array([-1 if r.prediction is None else r.prediction for r in results])
    return float(np.mean(predictions == y)), mean_ms, np.array([r.exit for r in results])


def _calibrate(package, validation, y: np.ndarray, criterion: str | None, threads: int):
    from edgeexit.calibration import calibrate_manifest
    from edgeexit.runtime import Engine

    engine = Engine(package, threads=threads, cache_dir=None)
    full = engine.run_full(validation, timing_samples=32)
    digest = hashlib.sha256(np.asarray(y).tobytes()).hexdigest()
    manifest, choice = calibrate_manifest(
        engine.manifest, full, y, criterion=criterion, max_drop=0.01, data_sha256=digest
    )
    return package.save_manifest(manifest), choice


def _early_exit(
    label: str,
    package,
    test: Sequence[object],
    y: np.ndarray,
    threads: int,
    rounds: int,
    layers: Sequence[int] | None = None,
) -> None:
    from edgeexit.runtime import Engine

    full = Engine(package, threads=threads, threshold=math.inf, cache_dir=None)
    early = Engine(package, threads=threads, cache_dir=None)
    timings: dict[str, list[float]] = {"full": [], "early": []}
    scores: dict[str, tuple[float, np.ndarray]] = {}
    for _ in range(rounds):
        for name, engine in (("full", full), ("early", early)):
            accuracy, mean_ms, exits = _evaluate(engine, test, y)
            timings[name].append(mean_ms)
            scores[name] = (accuracy, exits)
    t_full, t_early = float(np.median(timings["full"])), float(np.median(timings["early"]))
    (a_full, _), (a_early, exits) = scores["full"], scores["early"]
    rates = np.bincount(exits, minlength=early.num_exits) / len(exits)
    thresholds = ", ".join(f"{e.threshold:.3f}" for e in early.exits[:-1])
    line = (
        f"{label}: thresholds [{thresholds}] ({early.exits[0].criterion}); mean ms full {t_full:.3f} vs early "
        f"{t_early:.3f} -> speedup {t_full / t_early:.2f}x; accuracy {a_full:.4f} -> {a_early:.4f} "
        f"({100 * (a_early - a_full):+.2f} pt); exits {', '.join(f'{r:.1%}' for r in rates)}"
    )
    if layers is not None:
        used = float(np.mean(np.asarray(layers)[exits]))
        line += f"; mean layers {used:.2f} of {layers[-1]}"
    print(line)


def _backends(package, inputs: Sequence[object], threads: int, rounds: int, label: str, **other: str) -> None:
    """Per-segment batch-1 ms: the ONNX fp32 segments against another build (tflite or int8)."""
    from edgeexit.runtime import Engine

    base = Engine(package, threads=threads, threshold=math.inf, cache_dir=None)
    variant = Engine(package, threads=threads, threshold=math.inf, cache_dir=None, **other)
    few = list(inputs)
    per: dict[str, list[np.ndarray]] = {"base": [], "variant": []}
    for _ in range(rounds):
        for name, engine in (("base", base), ("variant", variant)):
            per[name].append(np.array([_segment_ms(engine, few)]).reshape(-1))
    a, b = np.median(per["base"], axis=0), np.median(per["variant"], axis=0)
    rows = ", ".join(f"seg {k}: {x:.3f} vs {y:.3f} ({y / x:.2f}x)" for k, (x, y) in enumerate(zip(a, b, strict=True)))
    print(f"{label}: ONNX fp32 vs {other} ms per segment, batch 1: {rows}; total {a.sum():.3f} vs {b.sum():.3f} "
          f"-> {b.sum() / a.sum():.2f}x")  # fmt: skip


def _segment_ms(engine, inputs: Sequence[object]) -> list[float]:
    """Mean batch-1 ms of each segment over ``inputs`` (one at a time, variable lengths allowed)."""
    totals = np.zeros(engine.num_exits)
    for item in inputs:
        totals += np.array(engine.segment_latency(item if isinstance(item, dict) else item[None], warmup=1))
    return list(totals / len(inputs))


# ---------------------------------------------------------------------------------- MiniLM


def bench_minilm(args: argparse.Namespace, workdir: Path) -> None:
    import torch

    from edgeexit.compile import export
    from edgeexit.compile.text_models import minilm_l6
    from edgeexit.compile.text_training import fit_text_heads
    from edgeexit.compile.tflite import DEFAULT_SEQUENCE_LENGTHS
    from edgeexit.data.tweets import load_tweets
    from edgeexit.runtime.text import TextEncoder

    torch.set_num_threads(args.threads)
    splits = load_tweets()
    model = minilm_l6(exits=(0, 1, 2, 3, 4))
    encoder = TextEncoder.from_file(model.tokenizer_file, max_length=64)
    if args.minilm_checkpoint:
        state = torch.load(args.minilm_checkpoint, weights_only=False)
        model.load_state_dict(state["state_dict"])
        print(f"== MiniLM: heads from {args.minilm_checkpoint} ({state.get('train', '?')}, "
              f"{state.get('train_samples', '?')} tweets)")  # fmt: skip
    else:
        train = splits.train.take(args.train_texts)
        report = fit_text_heads(model, train, splits.validation.take(500), encoder, threads=args.threads)
        print(f"== MiniLM: heads trained on {len(train)} tweets, backbone frozen "
              f"({report.precompute_seconds:.0f} s features, {report.train_seconds:.0f} s heads)")  # fmt: skip
    model.eval()
    validation = splits.validation.take(args.samples)
    test = splits.test.take(args.samples)
    noise = "; ".join(splits.noise.lines()[:3])
    print(f"   data: {splits.train.source}; {noise}")

    def encoded(data) -> tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        one_by_one = [encoder.encode([text]) for text in data.texts]
        return one_by_one, encoder.encode(list(data.texts))

    test_items, _ = encoded(test)
    _, validation_batch = encoded(validation)
    sample = encoder.encode(list(validation.texts[:8]))
    layers = [1, 2, 3, 4, 5, 6]

    started = time.perf_counter()
    path = workdir / "minilm"
    lengths = [n for n in DEFAULT_SEQUENCE_LENGTHS if n <= encoder.max_length]  # TFLite: one graph per length
    package = export(model, (1, sample["input_ids"].shape[1]), path, sample=sample, labels=list(test.labels),
                     monolithic=True, tflite=args.tflite, tflite_sequence_length=lengths)  # fmt: skip
    print(f"   exported 6 segments + monolithic{' + tflite' if args.tflite else ''} in "
          f"{time.perf_counter() - started:.0f} s")  # fmt: skip

    _segmented_vs_monolithic(package, test_items[: args.latency_samples], args.threads, args.rounds)
    package, _ = _calibrate(package, validation_batch, validation.y, "max_prob", args.threads)
    _early_exit("(b) max_prob", package, test_items, test.y, args.threads, args.rounds, layers)

    # (c) MuE: no head of its own at layers 0..4; the final classifier reads them, similarity decides.
    mue = minilm_l6(exits=(0, 1, 2, 3, 4), heads="final")
    mue.head(5).load_state_dict(model.head(5).state_dict())  # type: ignore[union-attr]
    mue_package = export(mue, (1, sample["input_ids"].shape[1]), workdir / "minilm_mue", sample=sample,
                         labels=list(test.labels), criterion="max_prob")  # fmt: skip
    mue_package, _ = _calibrate(mue_package, validation_batch, validation.y, "similarity", args.threads)
    _early_exit("(c) MuE similarity, final head shared", mue_package, test_items, test.y, args.threads, args.rounds,
                layers)  # fmt: skip

    if args.tflite and package.manifest.variants:
        _backends(package, test_items[:20], args.threads, args.rounds, "(d) LiteRT", backend="tflite")
    _int8(package, validation_batch, validation.y, test_items, test.y, args)


# ---------------------------------------------------------------------------------- EfficientNet-Lite0


def bench_efficientnet(args: argparse.Namespace, workdir: Path) -> None:
    import torch

    from edgeexit.compile import export
    from edgeexit.compile.training import distill
    from edgeexit.compile.zoo import efficientnet_lite0
    from edgeexit.data.unlabelled import unlabelled_images
    from edgeexit.runtime import Engine

    torch.set_num_threads(args.threads)
    model = efficientnet_lite0()
    if args.efficientnet_checkpoint:
        state = torch.load(args.efficientnet_checkpoint, weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        print(f"== EfficientNet-Lite0: heads from {args.efficientnet_checkpoint}")
    else:
        images = unlabelled_images("train", args.train_images)
        started = time.perf_counter()
        report = distill(model, images, epochs=1, progress=False)
        print(f"== EfficientNet-Lite0: heads distilled from the final head on {len(images)} unlabelled images "
              f"({images.source}) in {time.perf_counter() - started:.0f} s, backbone frozen")  # fmt: skip
        del report
    model.eval()
    pool = unlabelled_images("heldout", 2 * args.samples)
    print(f"   data: {pool.source}")
    x = pool.batch(slice(None))
    validation, test = x[: args.samples], x[args.samples :]
    started = time.perf_counter()
    package = export(model, (1, 3, 224, 224), workdir / "efficientnet", sample=validation[:8], monolithic=True,
                     codecs=(), tflite=args.tflite)  # fmt: skip
    print(f"   exported 4 segments + monolithic{' + tflite' if args.tflite else ''} in "
          f"{time.perf_counter() - started:.0f} s")  # fmt: skip
    # No ImageNet labels here: the full model's own answers are the labels (agreement with full depth).
    reference = Engine(package, threads=args.threads, threshold=math.inf, cache_dir=None)
    y_val = reference.run_full(validation, timing_samples=1).logits[-1].argmax(axis=1)
    y_test = reference.run_full(test, timing_samples=1).logits[-1].argmax(axis=1)
    items = list(test)
    _segmented_vs_monolithic(package, items[: args.latency_samples], args.threads, args.rounds)
    package, _ = _calibrate(package, validation, y_val, "max_prob", args.threads)
    _early_exit("(b) max_prob, accuracy = agreement with full depth", package, items, y_test, args.threads,
                args.rounds)  # fmt: skip
    if args.tflite and package.manifest.variants:
        _backends(package, items[:20], args.threads, args.rounds, "(d) LiteRT", backend="tflite")
    _int8(package, validation, y_val, items, y_test, args)


# ---------------------------------------------------------------------------------- int8


def _int8(package, calibration, calibration_y, test_items, test_y, args: argparse.Namespace) -> None:
    try:
        from edgeexit.compile.quantize import QuantizeOptions, quantize_package
    except ImportError as err:
        print(f"(e) int8: skipped ({err})")
        return
    from edgeexit.errors import EdgeExitError

    started = time.perf_counter()
    try:
        options = QuantizeOptions(samples=min(128, len(calibration_y)))
        package = quantize_package(package, calibration, calibration_y, options).package
    except EdgeExitError as err:
        print(f"(e) int8: quantize failed: {err}")
        return
    print(f"(e) int8: quantized in {time.perf_counter() - started:.0f} s")
    _backends(package, test_items[:20], args.threads, args.rounds, "(e) int8", precision="int8")
    from edgeexit.runtime import Engine

    for precision in ("fp32", "int8"):
        engine = Engine(package, threads=args.threads, cache_dir=None, precision=precision)
        accuracy, mean_ms, exits = _evaluate(engine, test_items, test_y)
        rates = np.bincount(exits, minlength=engine.num_exits) / len(exits)
        print(f"    {precision} early exit: accuracy {accuracy:.4f}, mean {mean_ms:.3f} ms, "
              f"exits {', '.join(f'{r:.1%}' for r in rates)}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["minilm", "efficientnet", "all"], default="all")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=500, help="validation and test samples each")
    parser.add_argument("--latency-samples", type=int, default=50)
    parser.add_argument("--train-texts", type=int, default=4000)
    parser.add_argument("--minilm-checkpoint", type=Path)
    parser.add_argument("--efficientnet-checkpoint", type=Path)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--no-tflite", dest="tflite", action="store_false")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-models-"))
    if args.model in ("efficientnet", "all"):
        bench_efficientnet(args, workdir)
    if args.model in ("minilm", "all"):
        bench_minilm(args, workdir)


if __name__ == "__main__":
    main()
