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

Labels: MiniLM's data is a labelled text set (``--data``: the tweets, or the Rotten Tomatoes review
snippets, rotten vs fresh), heads trained on its train split, thresholds on its validation split,
figures on its test split. EfficientNet-Lite0's images (sklearn's photos
and Fashion-MNIST, upscaled) have no ImageNet labels, so its "accuracy" is agreement with the
full model's own prediction (the final exit agrees with itself: 100%), and calibration uses the
final exit's predictions as labels. Each section prints its figures; docs/benchmarks.md records them.

    python tools/bench_models.py --model minilm --minilm-checkpoint /tmp/minilm_ckpt.pt
    python tools/bench_models.py --model minilm --data rotten-tomatoes --train-texts 0 --samples 0 \
        --max-length 128 --no-tflite --save-minilm-checkpoint /tmp/rt_ckpt.pt
    python tools/bench_models.py --model minilm --data rotten-tomatoes --quick   # smoke run, < 2 min
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
    return package.save_manifest(manifest), choice, full


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


def _minilm_heads(args: argparse.Namespace, splits, num_classes: int):
    """all-MiniLM-L6-v2 with exits after layers 1-5 and trained heads: from ``--minilm-checkpoint``,
    or trained here on a frozen backbone (``fit_text_heads``) and saved to ``--save-minilm-checkpoint``."""
    import torch

    from edgeexit.compile.text_models import minilm_l6
    from edgeexit.compile.text_training import fit_text_heads
    from edgeexit.runtime.text import TextEncoder

    model = minilm_l6(num_classes=num_classes, exits=(0, 1, 2, 3, 4))
    encoder = TextEncoder.from_file(model.tokenizer_file, max_length=args.max_length)
    if args.minilm_checkpoint:
        state = torch.load(args.minilm_checkpoint, weights_only=False)
        trained_on = state.get("data", "tweets")  # checkpoints from before --data hold tweet heads
        if trained_on != args.data:
            raise SystemExit(f"{args.minilm_checkpoint} holds heads trained on {trained_on}; pass --data "
                             f"{trained_on} or train here without --minilm-checkpoint")  # fmt: skip
        model.load_state_dict(state["state_dict"])
        print(f"== MiniLM: heads from {args.minilm_checkpoint} ({state.get('train', '?')}, "
              f"{state.get('train_samples', '?')} texts)")  # fmt: skip
        return model.eval(), encoder
    train = splits.train.take(args.train_texts) if args.train_texts else splits.train
    validation = splits.validation.take(args.samples) if args.samples else splits.validation
    if args.finetune_epochs:
        _finetune_minilm(model, train, validation, encoder, args)
    else:
        report = fit_text_heads(model, train, validation, encoder, epochs=args.epochs, threads=args.threads)
        accuracy = " / ".join(f"{a.accuracy:.1%}" for a in report.accuracy if a.accuracy is not None)
        print(f"== MiniLM: heads trained on {len(train)} texts, backbone frozen, {args.epochs} epochs, max "
              f"{args.max_length} tokens ({report.precompute_seconds:.0f} s wall / "
              f"{report.precompute_cpu_seconds:.0f} s CPU features, {report.train_seconds:.0f} s heads); "
              f"validation accuracy per exit {accuracy}")  # fmt: skip
    if args.save_minilm_checkpoint:
        torch.save({"state_dict": model.state_dict(), "train": train.source, "train_samples": len(train),
                    "data": args.data, "max_length": args.max_length, "epochs": args.epochs,
                    "finetune_epochs": args.finetune_epochs}, args.save_minilm_checkpoint)  # fmt: skip
        print(f"   saved the heads to {args.save_minilm_checkpoint}")
    return model.eval(), encoder


def _finetune_minilm(model, train, validation, encoder, args: argparse.Namespace) -> None:
    """Joint fine-tuning: backbone and every head together, the mean of the exits' cross-entropies
    (equal weights), AdamW (backbone ``--finetune-lr``, heads 1e-3) with a linear decay; batches of 32
    texts of similar length (sorted within pools of 20 batches), so little padding is computed."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    tokens = encoder.encode(list(train.texts))
    ids, mask = torch.from_numpy(tokens["input_ids"]), torch.from_numpy(tokens["attention_mask"])
    y, lengths = torch.from_numpy(train.y), mask.sum(dim=1)
    for param in model.parameters():
        param.requires_grad_(True)
    backbone = {id(p) for p in model.segments.parameters()}
    heads = [p for p in model.parameters() if id(p) not in backbone]
    optimizer = torch.optim.AdamW([{"params": list(model.segments.parameters()), "lr": args.finetune_lr},
                                   {"params": heads, "lr": 1e-3}], weight_decay=0.01)  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    batches: list[torch.Tensor] = []
    for _ in range(args.finetune_epochs):
        order = torch.randperm(len(y), generator=generator)
        for pool in order.split(32 * 20):
            pool = pool[torch.argsort(lengths[pool], stable=True)]
            batches.extend(pool.split(32))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / len(batches))
    started, cpu_started = time.perf_counter(), time.process_time()
    model.train()
    for step, rows in enumerate(batches):
        width = int(lengths[rows].max())
        logits = [z for z in model(ids[rows, :width], mask[rows, :width]) if z is not None]
        loss = torch.stack([F.cross_entropy(z, y[rows]) for z in logits]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 50 == 0:
            print(f"   step {step}/{len(batches)}: loss {loss.item():.3f} ({time.perf_counter() - started:.0f} s)",
                  flush=True)  # fmt: skip
    model.eval()
    with torch.no_grad():
        found = encoder.encode(list(validation.texts))
        vids, vmask = torch.from_numpy(found["input_ids"]), torch.from_numpy(found["attention_mask"])
        chunks = [model(vids[rows], vmask[rows]) for rows in torch.arange(len(vids)).split(64)]
        outs = [torch.cat(parts) for parts in zip(*chunks, strict=True)]
    accuracy = " / ".join(f"{float((z.argmax(1) == torch.from_numpy(validation.y)).double().mean()):.1%}" for z in outs)
    print(f"== MiniLM: fine-tuned jointly (backbone + heads) on {len(train)} texts, {args.finetune_epochs} epochs, "
          f"max {args.max_length} tokens, {time.perf_counter() - started:.0f} s wall / "
          f"{time.process_time() - cpu_started:.0f} s CPU; validation accuracy per exit {accuracy}")  # fmt: skip


def _similarity_diagnosis(full, y: np.ndarray) -> None:
    """Why MuE stops few samples: per boundary, how much the similarity varies and whether it
    tells right from wrong answers of the classifier reading that boundary (AUC 0.5: not at all)."""
    rows = []
    for k in range(1, len(full.similarity) - 1):
        sim, logits = np.asarray(full.similarity[k], dtype=np.float64), full.logits[k]
        if logits is None:
            continue
        correct = logits.argmax(axis=1) == y
        p10, p50, p90 = np.percentile(sim, [10, 50, 90])
        rows.append(f"layer {k + 1}: acc {correct.mean():.1%}, sim p10/50/90 {p10:.3f}/{p50:.3f}/{p90:.3f}, "
                    f"AUC(sim -> correct) {_auc(sim, correct):.2f}")  # fmt: skip
    final = float(np.mean(full.logits[-1].argmax(axis=1) == y))
    print(f"    validation, shared head per layer (final {final:.1%}): " + "; ".join(rows))


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    """The probability that a random positive scores above a random negative (ties count half)."""
    pos, neg = score[positive], score[~positive]
    if not len(pos) or not len(neg):
        return float("nan")
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]), kind="stable"), kind="stable") + 1.0
    values = np.concatenate([pos, neg])
    for value in np.unique(values):  # average ranks over ties
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def bench_minilm(args: argparse.Namespace, workdir: Path) -> None:
    import torch

    from edgeexit.compile import export
    from edgeexit.compile.text_models import minilm_l6
    from edgeexit.compile.tflite import DEFAULT_SEQUENCE_LENGTHS
    from edgeexit.data import load_text_set

    torch.set_num_threads(args.threads)
    splits = load_text_set(args.data)
    labels = splits.train.labels
    model, encoder = _minilm_heads(args, splits, len(labels))
    validation = splits.validation.take(args.samples) if args.samples else splits.validation
    test = splits.test.take(args.samples) if args.samples else splits.test
    noise = "; ".join(splits.noise.lines())
    print(f"   data: {splits.train.source}; {noise}")

    def encoded(data) -> tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        one_by_one = [encoder.encode([text]) for text in data.texts]
        return one_by_one, encoder.encode(list(data.texts))

    test_items, _ = encoded(test)
    _, validation_batch = encoded(validation)
    tokens = [int(item["attention_mask"].sum()) for item in test_items]
    print(f"   {len(validation)} validation texts (thresholds), {len(test)} test texts (figures), one at a time, "
          f"unpadded: median {np.median(tokens):.0f} tokens (p90 {np.percentile(tokens, 90):.0f})")  # fmt: skip
    sample = encoder.encode(list(validation.texts[:8]))
    layers = [1, 2, 3, 4, 5, 6]

    started = time.perf_counter()
    path = workdir / "minilm"
    lengths = [n for n in DEFAULT_SEQUENCE_LENGTHS if n <= encoder.max_length]  # TFLite: one graph per length
    package = export(model, (1, sample["input_ids"].shape[1]), path, sample=sample, labels=list(labels),
                     monolithic=True, tflite=args.tflite, tflite_sequence_length=lengths)  # fmt: skip
    print(f"   exported 6 segments + monolithic{' + tflite' if args.tflite else ''} in "
          f"{time.perf_counter() - started:.0f} s")  # fmt: skip

    _segmented_vs_monolithic(package, test_items[: args.latency_samples], args.threads, args.rounds)
    package, _, full = _calibrate(package, validation_batch, validation.y, "max_prob", args.threads)
    _early_exit("(b) max_prob", package, test_items, test.y, args.threads, args.rounds, layers)

    # (c) MuE: no head of its own at layers 0..4; the final classifier reads them, similarity decides.
    mue = minilm_l6(num_classes=len(labels), exits=(0, 1, 2, 3, 4), heads="final")
    mue.segments.load_state_dict(model.segments.state_dict())  # the fine-tuned backbone, if it was
    mue.head(5).load_state_dict(model.head(5).state_dict())  # type: ignore[union-attr]
    mue_package = export(mue, (1, sample["input_ids"].shape[1]), workdir / "minilm_mue", sample=sample,
                         labels=list(labels), criterion="max_prob")  # fmt: skip
    mue_package, _, mue_full = _calibrate(mue_package, validation_batch, validation.y, "similarity", args.threads)
    _early_exit("(c) MuE similarity, final head shared", mue_package, test_items, test.y, args.threads, args.rounds,
                layers)  # fmt: skip
    _similarity_diagnosis(mue_full, validation.y)
    if args.data != "tweets":  # the similarity criterion on the trained heads: criterion against criterion
        own, _, _ = _calibrate(package, validation_batch, validation.y, "similarity", args.threads)
        _early_exit("(c2) similarity, own heads", own, test_items, test.y, args.threads, args.rounds, layers)
        package, _, _ = _calibrate(own, validation_batch, validation.y, "max_prob", args.threads)
    del full

    if args.tflite and package.manifest.variants:
        _backends(package, test_items[:20], args.threads, args.rounds, "(d) LiteRT", backend="tflite")
    if args.int8:
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
    package, _, _ = _calibrate(package, validation, y_val, "max_prob", args.threads)
    _early_exit("(b) max_prob, accuracy = agreement with full depth", package, items, y_test, args.threads,
                args.rounds)  # fmt: skip
    if args.tflite and package.manifest.variants:
        _backends(package, items[:20], args.threads, args.rounds, "(d) LiteRT", backend="tflite")
    if args.int8:
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
    parser.add_argument("--samples", type=int, default=500, help="validation and test samples each (0: all)")
    parser.add_argument("--latency-samples", type=int, default=50)
    parser.add_argument("--data", choices=["tweets", "rotten-tomatoes"], default="tweets", help="MiniLM's text set")
    parser.add_argument("--train-texts", type=int, default=4000, help="MiniLM's training texts (0: the whole split)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of MiniLM's heads on the frozen features")
    parser.add_argument("--max-length", type=int, default=64, help="MiniLM's tokens per text (longer ones are cut)")
    parser.add_argument("--minilm-checkpoint", type=Path)
    parser.add_argument("--save-minilm-checkpoint", type=Path, help="where to save heads trained here")
    parser.add_argument("--finetune-epochs", type=int, default=0, help="MiniLM: fine-tune backbone and heads jointly")
    parser.add_argument("--finetune-lr", type=float, default=5e-5, help="the backbone's learning rate then")
    parser.add_argument("--efficientnet-checkpoint", type=Path)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--no-tflite", dest="tflite", action="store_false")
    parser.add_argument("--no-int8", dest="int8", action="store_false")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke run (MiniLM: 300 training texts, 100 validation and test texts, 1 round, no LiteRT or int8)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.train_texts, args.samples, args.rounds, args.latency_samples = 300, 100, 1, 10
        args.tflite = args.int8 = False
    if args.workdir is not None:
        run_benchmarks(args, args.workdir)
        return
    # Without --workdir the packages (about 260 MB) are scratch: removed however the run ends.
    with tempfile.TemporaryDirectory(prefix="bench-models-") as scratch:
        run_benchmarks(args, Path(scratch))


def run_benchmarks(args: argparse.Namespace, workdir: Path) -> None:
    if args.model in ("efficientnet", "all"):
        bench_efficientnet(args, workdir)
    if args.model in ("minilm", "all"):
        bench_minilm(args, workdir)


if __name__ == "__main__":
    import _tool  # beside this script

    _tool.run(main)
