"""What the exit decision costs, and what the engine adds at full depth, on one package.

    python tools/bench_decision.py PACKAGE [--samples 2000] [--rounds 3] [--data fashion-mnist]

Side by side in one process, per sample, interleaved so that drift and the other tenants of
the machine hit every variant alike (medians over all samples of all rounds, 1 ONNX Runtime thread):

- **full depth**: ``Engine.run`` with no early exit against the bare chained sessions, the
  segments bound once with IOBinding and run through ONNX Runtime's public
  ``session.run_with_iobinding``: what a user would write by hand. Target: <= 1.03x. Measured
  twice: paired (the two back to back on each sample, the order alternating, nothing else
  between them: the engine's own cost) and in the mixed loop below (each after other engines'
  runs and the exit checks, as the earlier figures were taken: it also carries how much colder
  each one's caches are there).
- **exit check**: what ``edgeexit profile`` times at each boundary (``Engine.exit_score`` and the
  threshold comparison, right after the segment ran, so the interpreter is as cold as in a
  walk), for the package as exported (the graph fed the calibrated temperature, its score read)
  and for the same package with the manifest's ``temperature_input`` / ``probabilities`` removed
  (as packages exported before them: softmax and the criterion in numpy). Target: < 5 us.
- **early exit**: ``Engine.run`` at the manifest's thresholds against full depth, both variants.

The package should be calibrated (temperatures other than 1), as ``edgeexit demo`` leaves it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeexit.data import builtin_images, load_dataset
from edgeexit.package import open_package
from edgeexit.runtime import Engine


def legacy_copy(package: Path, into: Path) -> Path:
    """``package`` with a manifest that does not know the graphs take the temperature."""
    target = into / "legacy"
    shutil.copytree(package, target)
    opened = open_package(target)
    manifest = opened.manifest
    exits = tuple(dataclasses.replace(e, temperature_input=None, probabilities=None) for e in manifest.exits)
    opened.save_manifest(manifest.with_exits(exits, manifest.calibration))
    return target


class Variant:
    """One package's engines (early exit and full depth) and its boundary checks, timed per sample."""

    def __init__(self, package: Path) -> None:
        self.early = Engine(package, cache_dir=None)
        self.full = Engine(package, cache_dir=None, threshold=math.inf)
        chain = self.early._chain
        if chain is None:
            raise SystemExit(f"{package}: no bound batch-1 chain (context inputs or dynamic axes); nothing to compare")
        self.chain = chain
        self.checks: list[list[float]] = [[] for _ in self.early.segments]
        self.early_us: list[float] = []
        self.full_us: list[float] = []

    def sample(self, x: np.ndarray) -> None:
        tick = time.perf_counter()
        self.early.run(x)
        self.early_us.append((time.perf_counter() - tick) * 1e6)
        tick = time.perf_counter()
        self.full.run(x)
        self.full_us.append((time.perf_counter() - tick) * 1e6)
        engine, chain = self.early, self.chain
        np.copyto(chain.input, x)
        for k in range(len(engine.segments)):
            outputs = chain.run_segment(k)
            tick = time.perf_counter()
            score = engine.exit_score(k, outputs)
            if score is not None:
                bool(score[0] >= engine.rules[k].threshold)
            self.checks[k].append((time.perf_counter() - tick) * 1e6)


class Bare:
    """The segments chained by hand: bound once, run with the public ``run_with_iobinding``."""

    def __init__(self, engine: Engine) -> None:
        chain = engine._chain
        self.input = chain.input  # type: ignore[union-attr]
        self.sessions = [s.session for s in engine.segments]  # type: ignore[attr-defined]
        self.bindings = chain._bindings  # type: ignore[union-attr]
        self.us: list[float] = []

    def sample(self, x: np.ndarray) -> None:
        tick = time.perf_counter()
        np.copyto(self.input, x)
        for session, binding in zip(self.sessions, self.bindings, strict=True):
            session.run_with_iobinding(binding)
        self.us.append((time.perf_counter() - tick) * 1e6)


def paired(engine: Engine, bare: Bare, xs: list[np.ndarray], rounds: int) -> tuple[list[float], list[float]]:
    """``engine.run`` (full depth) and the bare chain back to back on every sample, the order
    alternating, so each sees the other's warmth equally often."""
    engine_us: list[float] = []
    bare.us.clear()
    for _ in range(rounds):
        for i, x in enumerate(xs):
            if i % 2:
                bare.sample(x)
            tick = time.perf_counter()
            engine.run(x)
            engine_us.append((time.perf_counter() - tick) * 1e6)
            if not i % 2:
                bare.sample(x)
    found = list(bare.us)
    bare.us.clear()
    return engine_us, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", default=None, help="a data name or path (default: the built-in test images)")
    args = parser.parse_args()
    data = load_dataset(args.data, "test") if args.data else builtin_images("test")
    with tempfile.TemporaryDirectory() as scratch:
        new = Variant(args.package)
        old = Variant(legacy_copy(args.package, Path(scratch)))
        bare = Bare(new.full)
        shape = tuple(new.early.manifest.input.shape[1:])
        xs = [np.ascontiguousarray(x.reshape((1, *shape)), dtype=np.float32) for x in data.x[: args.samples]]
        for x in xs[:50]:  # warm-up
            new.sample(x), old.sample(x), bare.sample(x)
        for variant in (new, old):
            variant.early_us.clear(), variant.full_us.clear(), [c.clear() for c in variant.checks]
        bare.us.clear()
        for _ in range(args.rounds):
            for x in xs:
                new.sample(x)
                bare.sample(x)
                old.sample(x)
        mixed_bare = list(bare.us)
        paired_full, paired_bare = paired(new.full, bare, xs, args.rounds)
    med = statistics.median
    print(f"{args.package}: {len(xs)} samples x {args.rounds} rounds, batch 1, 1 thread; medians in us")
    print(
        f"full depth, paired with the bare chain (alternating order): engine {med(paired_full):.1f}, bare "
        f"{med(paired_bare):.1f} ({med(paired_full) / med(paired_bare):.3f}x bare)"
    )
    print(f"mixed loop: bare chained sessions (public run_with_iobinding): {med(mixed_bare):.1f}")
    for name, v in (("as exported (temperature fed to the graph)", new), ("legacy manifest (numpy softmax)", old)):
        checks = ", ".join(f"{med(c):.2f}" for c in v.checks)
        print(
            f"{name}: full depth {med(v.full_us):.1f} ({med(v.full_us) / med(mixed_bare):.3f}x bare); "
            f"early exit {med(v.early_us):.1f}, mean {statistics.fmean(v.early_us):.1f} "
            f"(full/early by means {statistics.fmean(v.full_us) / statistics.fmean(v.early_us):.2f}x); "
            f"exit check per boundary {checks}"
        )


if __name__ == "__main__":
    import _tool  # beside this script

    _tool.run(main)
