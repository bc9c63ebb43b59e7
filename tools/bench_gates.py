"""Learned exit gates against the fixed confidence rules, at the same accuracy budget, on unseen data.

    python tools/bench_gates.py PACKAGE [--data NAME] [--splits 50] [--max-drop 0.01] [--delta 0.1]
                                [--wall] [--max-length 128]

PACKAGE: any classifier package (the demo CNN's, MiniLM's); it is read, never changed. ``--data``:
what ``edgeexit calibrate --data`` takes (default: the built-in test images; a data set's test
split; a text set such as ``rotten-tomatoes`` pools its validation and test splits). One
full-depth pass gives every exit's logits; each random half/half split then calibrates every
criterion on one half exactly as ``edgeexit calibrate --criterion C`` does (temperatures, the
learned gates, the thresholds) and measures the other half: the accuracy drop against the final
exit and the expected speedup from the segments' measured costs (full depth's cost over the
plan's). Three threshold methods: the margin method (1 standard error in reserve) and
Learn-then-Test (``--delta``), against the final exit's answers and against the labels.

``--wall``: for the first split, also runs every calibrated package through ``Engine.run`` on the
unseen half, one sample at a time, and reports wall time per sample against full depth: what the
decisions cost is in it (the learned gate computed in the graph when the package was exported with
``--criterion learned``, in numpy otherwise). Images only (a text batch is padded; the engine runs
texts unpadded one by one).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeexit.calibration import calibrate_manifest, manifest_outcome
from edgeexit.cli.labelled import load_labelled
from edgeexit.data import builtin_images
from edgeexit.data.text_sets import text_set_name
from edgeexit.fileio import atomic_write_text
from edgeexit.manifest import MANIFEST_FILE, Manifest
from edgeexit.package import open_package
from edgeexit.runtime import Engine
from edgeexit.runtime.inputs import prepare_dataset

CRITERIA = ("max_prob", "margin", "entropy", "patience", "learned")


def calibrated_copy(package: Path, manifest: Manifest, where: Path) -> Path:
    """The package's files linked into ``where`` beside the calibrated manifest (nothing copied)."""
    where.mkdir(parents=True)
    for entry in package.iterdir():
        if entry.name != MANIFEST_FILE:
            (where / entry.name).symlink_to(entry.resolve())
    atomic_write_text(where / MANIFEST_FILE, manifest.to_json())
    return where


def wall_per_sample(engine: Engine, x: np.ndarray, rounds: int = 3) -> float:
    """Median over ``rounds`` of the mean ms per sample of ``engine.run`` on every row of ``x``."""
    for row in x[:20]:
        engine.run(row[None])
    means = []
    for _ in range(rounds):
        tick = time.perf_counter()
        for row in x:
            engine.run(row[None])
        means.append((time.perf_counter() - tick) * 1e3 / len(x))
    return statistics.median(means)


def accuracy_of(engine: Engine, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean([engine.run(row[None]).prediction == label for row, label in zip(x, y, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--data", default="builtin", help="calibrate's --data (default: the built-in images)")
    parser.add_argument("--splits", type=int, default=50)
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-length", type=int, default=128, help="tokens per text of a text set")
    parser.add_argument("--criteria", default=",".join(CRITERIA))
    parser.add_argument("--wall", action="store_true", help="wall time through Engine.run on the first split")
    args = parser.parse_args()
    criteria = [c.strip() for c in args.criteria.split(",") if c.strip()]
    opened = open_package(args.package)
    if args.data == "builtin":
        found = builtin_images("test")
        x, y = prepare_dataset(found, opened.manifest)
        source = found.source
    elif text_set_name(args.data) is not None:
        x, y, source = _pooled(args.data, opened, args.max_length)
    else:
        x, y, source = load_labelled(args.data, "test", None, opened, args.max_length)
    engine = Engine(args.package, cache_dir=None)
    tick = time.perf_counter()
    full = engine.run_full(x)
    print(f"{args.package}: {len(y)} samples ({source}), full-depth pass {time.perf_counter() - tick:.1f} s, "
          f"segments {' / '.join(f'{t:.3f}' for t in full.segment_ms)} ms")  # fmt: skip
    manifest = engine.manifest
    full_ms = sum(full.segment_ms)
    methods = {
        "margin 1 s.e.": {"margin": 1.0},
        f"LTT vs final, delta {args.delta:g}": {"delta": args.delta, "against": "final"},
        f"LTT vs labels, delta {args.delta:g}": {"delta": args.delta, "against": "labels"},
    }
    rng = np.random.default_rng(args.seed)
    n = len(y)
    drops: dict[tuple[str, str], list[float]] = {}
    speedups: dict[tuple[str, str], list[float]] = {}
    first_split: dict[tuple[str, str], Manifest] = {}
    held_first = np.empty(0, int)
    tick = time.perf_counter()
    for split in range(args.splits):
        order = rng.permutation(n)
        cal, held = order[: n // 2], order[n // 2 :]
        seen, unseen = full.take(cal), full.take(held)
        for criterion in criteria:
            for method, keywords in methods.items():
                extra = dict(keywords)
                if "delta" in extra:
                    extra["seed"] = split
                chosen, _ = calibrate_manifest(manifest, seen, y[cal], criterion=criterion, max_drop=args.max_drop,
                                               data_sha256="", **extra)  # type: ignore[arg-type]  # fmt: skip
                outcome = manifest_outcome(chosen, unseen, y[held])
                final = float((unseen.logits[-1].argmax(axis=-1) == y[held]).mean())  # type: ignore[union-attr]
                drop, speedup = 100.0 * (final - outcome.accuracy), full_ms / outcome.expected_ms
                drops.setdefault((criterion, method), []).append(drop)
                speedups.setdefault((criterion, method), []).append(speedup)
                if split == 0:
                    first_split[(criterion, method)] = chosen
                    held_first = held
    print(f"{args.splits} splits of {n // 2} / {n - n // 2} in {time.perf_counter() - tick:.0f} s; "
          f"budget: {100 * args.max_drop:g} pt below full depth\n")  # fmt: skip
    print("| criterion | method | speedup (median, p10-p90) | drop pt (median) | splits over budget |")
    print("| --- | --- | ---: | ---: | ---: |")
    for (criterion, method), values in drops.items():
        fast = speedups[(criterion, method)]
        over = sum(d > 100 * args.max_drop for d in values)
        spread = f"{np.percentile(fast, 10):.2f}-{np.percentile(fast, 90):.2f}"
        speed, drop = statistics.median(fast), statistics.median(values)
        print(f"| {criterion} | {method} | {speed:.2f}x ({spread}) | {drop:+.2f} | {over}/{len(values)} |")
    if args.wall:
        _wall(args.package, x, y, held_first, first_split)


def _pooled(spec: str, opened, max_length: int) -> tuple[dict[str, np.ndarray], np.ndarray, str]:
    """A text set's validation and test splits as one pool (padded to a common length)."""
    parts = [load_labelled(spec, split, None, opened, max_length) for split in ("validation", "test")]
    width = max(p[0]["input_ids"].shape[1] for p in parts)
    x = {
        name: np.concatenate([np.pad(p[0][name], ((0, 0), (0, width - p[0][name].shape[1]))) for p in parts])
        for name in parts[0][0]
    }
    return x, np.concatenate([p[1] for p in parts]), f"{parts[0][2]} + {parts[1][2]}"


def _wall(
    package: Path, x: np.ndarray, y: np.ndarray, held: np.ndarray, chosen: dict[tuple[str, str], Manifest]
) -> None:
    if isinstance(x, dict):
        print("\n--wall: images only (a padded text batch would time padding); skipped")
        return
    rows = x[held]
    print(f"\nwall time through Engine.run, batch 1, the first split's {len(rows)} unseen samples (median of 3):\n")
    labels = y[held]
    full_engine = Engine(package, cache_dir=None, threshold=float("inf"))  # every early exit off
    full_ms, full_accuracy = wall_per_sample(full_engine, rows), accuracy_of(full_engine, rows, labels)
    print("| criterion | method | ms / sample | full depth ms | speedup | accuracy | full-depth accuracy |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(prefix="bench-gates-") as scratch:
        for i, ((criterion, method), manifest) in enumerate(chosen.items()):
            engine = Engine(calibrated_copy(package, manifest, Path(scratch) / str(i)), cache_dir=None)
            ms, accuracy = wall_per_sample(engine, rows), accuracy_of(engine, rows, labels)
            print(f"| {criterion} | {method} | {ms:.4f} | {full_ms:.4f} | {full_ms / ms:.2f}x | {100 * accuracy:.2f}% "
                  f"| {100 * full_accuracy:.2f}% |")  # fmt: skip


if __name__ == "__main__":
    import _tool  # beside this script

    _tool.run(main)
