"""Measure a package on this machine: what ``edgeexit profile`` runs and ``profile.json`` records.

- Latency: the chain batch-1, segment by segment, on real inputs (the package's reference sample,
  or random normal inputs of the input shape when the package has none; ``Profile.inputs`` says
  which), after ``warmup`` untimed passes; p50/p90/p99 and the mean over ``runs`` passes.
- Exit check: the exit's numpy decision on the segment's real outputs, computed by the engine
  itself (``Engine.exit_score``: the in-graph score when it uses it, else the criterion's
  ``score``, nothing for an exit that cannot fire; then the threshold comparison). The exit's
  head runs inside the segment graph, so its cost is in the segment's.
- Energy: ``best_meter`` (RAPL > Jetson INA3221 > the device preset's power model) over many runs of
  one segment alone (at least ``runs`` and at least ``energy_seconds``), divided by the run count.
- Peak RSS of this process (psutil's peak where the platform reports it, else getrusage's
  ``ru_maxrss``, else the current RSS): the runtime with the package loaded and exercised.
- Encoded bytes per sample, per boundary and codec: the manifest's tails where they say it, else
  measured by encoding the real boundary tensor with ``edgeexit.codecs``.

No torch, no onnx: ONNX Runtime through ``edgeexit.runtime`` (imported when a profile runs).
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeexit import __version__
from edgeexit.codecs import create_codec, list_codecs
from edgeexit.console import progress_bar
from edgeexit.errors import PackageError, UsageError
from edgeexit.profile.meters import best_meter
from edgeexit.profile.power import get_preset
from edgeexit.profile.record import EncodedSize, Machine, Profile, SegmentProfile, SkippedSource, now_iso

if TYPE_CHECKING:
    from edgeexit.runtime.engine import Engine

RANDOM_SAMPLES = 16  # random normal inputs when the package has no reference sample


def percentiles(values: list[float] | np.ndarray) -> tuple[float, float, float, float]:
    """(p50, p90, p99, mean) of ``values``."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return 0.0, 0.0, 0.0, 0.0
    p50, p90, p99 = np.percentile(array, [50, 90, 99])
    return float(p50), float(p90), float(p99), float(array.mean())


def peak_rss_bytes() -> int:
    """This process's peak resident set size in bytes."""
    import psutil

    info = psutil.Process().memory_info()
    peak = int(getattr(info, "peak_wset", 0) or 0)  # Windows reports its peak directly
    try:
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = max(peak, maxrss if sys.platform == "darwin" else maxrss * 1024)  # bytes on macOS, KiB on Linux
    except (OSError, ValueError):
        pass
    return max(peak, int(info.rss))


Context = dict[str, np.ndarray]


def _inputs(engine: Engine, seed: int = 0) -> tuple[np.ndarray, Context, str]:
    """Batch-1 samples to time with (N, ...), their context inputs (a text encoder's
    ``attention_mask``, N rows each; empty for other models) and a note on where they came from."""
    from edgeexit.runtime.verify import load_reference, reference_inputs

    manifest = engine.manifest
    spec = manifest.input
    dtype = np.dtype(spec.dtype)
    names = [c.name for c in spec.context]
    if manifest.reference is not None:
        reference = load_reference(engine.package)
        if "input" in reference and reference["input"].shape[0] >= 1:
            x, context = reference_inputs(manifest, reference)
            x = np.ascontiguousarray(x.astype(dtype, copy=False))
            return x, context, f"{manifest.reference.file} ({x.shape[0]} samples)"
    shape = tuple(1 if dim is None else dim for dim in spec.shape[1:])
    if names or not np.issubdtype(dtype, np.floating):
        raise PackageError(
            f"the package has no reference sample with its input and context inputs ({spec.dtype} "
            f"{spec.name}{''.join(', ' + n for n in names)}): random inputs cannot stand in for them; "
            "re-export it with a sample"
        )
    x = np.random.default_rng(seed).standard_normal((RANDOM_SAMPLES, *shape)).astype(dtype)
    return x, {}, f"random normal {list(x.shape[1:])} ({RANDOM_SAMPLES} samples; the package has no reference sample)"


def _walk(engine: Engine, x: np.ndarray, context: Context) -> Iterator[tuple[int, dict[str, np.ndarray], float]]:
    """(segment, outputs, ms) for one sample: through the engine's bound chain when it has one
    (what ``Engine.run`` uses), else segment by segment, boundary tensors handed on as it does."""
    return engine.steps(x, context)


class _ExitCheck:
    """The engine's decision at exit k on one segment's outputs, for timing."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # as the walks: the earlier exits' predictions are kept only for a criterion that reads them
        self.keeps_history = any(rule.criterion == "patience" for rule in engine.rules)

    def __call__(
        self,
        k: int,
        outputs: dict[str, np.ndarray],
        previous: np.ndarray | None,
        history: list[np.ndarray],
        context: Context,
    ) -> np.ndarray | None:
        """Returns the exit's predictions when patience reads them, else None."""
        engine = self.engine
        score = engine.exit_score(k, outputs, previous, history, context)
        if score is not None:
            bool(score[0] >= engine.rules[k].threshold)
        logits = engine.exits[k].logits
        return outputs[logits].argmax(axis=-1) if (logits and self.keeps_history) else None


def profile_package(
    engine_or_path: Engine | str | os.PathLike[str],
    *,
    runs: int = 200,
    threads: int = 1,
    preset: str = "rpi4",
    warmup: int = 20,
    progress: bool = True,
    energy_seconds: float = 0.2,
    root: str | Path = "/",
    cache_dir: str | Path | None = "default",
    backend: str = "onnxruntime",
    precision: str = "fp32",
) -> Profile:
    """Profile a package (a directory, or an ``Engine`` already loaded) on this machine.

    ``preset`` names the device power preset the model meter uses when the machine has no energy
    counters (``rpi4``, ``rpi5``, ``jetson-nano``, ``orin-nano``, ``x86-laptop``); ``root`` is where
    ``/sys`` is looked up (tests point it at a fake tree). ``threads`` is ignored for an ``Engine``
    (it has its sessions already); pass the engine's thread count to record it correctly.
    """
    from edgeexit.runtime.engine import Engine

    if runs < 1:
        raise UsageError(f"runs must be >= 1, got {runs}")
    if warmup < 0:
        raise UsageError(f"warmup must be >= 0, got {warmup}")
    get_preset(preset)  # an unknown preset fails now, not after the latency runs
    engine = (
        engine_or_path
        if isinstance(engine_or_path, Engine)
        else Engine(engine_or_path, threads=threads, cache_dir=cache_dir, backend=backend, precision=precision)
    )
    manifest = engine.manifest
    n = len(engine.segments)
    samples, context, inputs_note = _inputs(engine)
    check = _ExitCheck(engine)
    choice = best_meter(root, preset=preset)

    latency: list[list[float]] = [[] for _ in range(n)]
    checks: list[list[float]] = [[] for _ in range(n)]
    seg_inputs: list[np.ndarray] = []  # what each segment takes, for the energy runs
    carried: list[Context] = [{}]  # per segment, the further tensors of the boundary before it
    first: Context | None = None
    with progress_bar(progress) as bar:
        task = bar.add_task("latency", total=warmup + runs)
        for i in range(-warmup, runs):
            row = i % len(samples)
            x = samples[row : row + 1]
            rows = {name: value[row : row + 1] for name, value in context.items()}
            first = rows if first is None else first  # the sample whose boundary tensors seg_inputs keep
            previous: np.ndarray | None = None
            history: list[np.ndarray] = []
            if not seg_inputs:
                seg_inputs.append(x.copy())
            for k, outputs, ms in _walk(engine, x, rows):
                tick = time.perf_counter()
                predicted = check(k, outputs, previous, history, rows)
                check_ms = (time.perf_counter() - tick) * 1e3
                if predicted is not None:
                    history.append(predicted)
                hidden_name = engine.segments[k].spec.hidden
                hidden = outputs[hidden_name] if hidden_name else None
                if hidden is not None:
                    previous = hidden.copy()  # the chain's buffers are reused by the next segment
                    if len(seg_inputs) <= k + 1:
                        seg_inputs.append(previous)
                        names = engine.segments[k].spec.carries
                        carried.append({name: outputs[name].copy() for name in names})
                if i >= 0:
                    latency[k].append(ms)
                    checks[k].append(check_ms)
            bar.update(task, advance=1)

        energy: list[float] = []
        task = bar.add_task(f"energy ({choice.source})", total=n)
        for k, segment in enumerate(engine.segments):
            feed = seg_inputs[k]
            takes = {**(first or {}), **carried[k]}
            segment.run(feed, takes)  # warm
            count = 0
            choice.meter.start()
            started = time.perf_counter()
            while count < runs or time.perf_counter() - started < energy_seconds:
                segment.run(feed, takes)
                count += 1
            reading = choice.meter.stop()
            energy.append(reading.joules / count)
            bar.update(task, advance=1)

    segments = []
    for k in range(n):
        p50, p90, p99, mean = percentiles(latency[k])
        c50, c90, c99, cmean = percentiles(checks[k])
        segments.append(SegmentProfile(k, p50, p90, p99, mean, c50, c90, c99, cmean, energy[k], choice.source))
    return Profile(
        package_id=manifest.package_id,
        model_name=manifest.model_name,
        machine=Machine.current(),
        threads=threads,
        runs=runs,
        warmup=warmup,
        device_preset=get_preset(preset).name,
        energy_source=choice.source,
        energy_skipped=tuple(SkippedSource(s.source, s.reason) for s in choice.skipped),
        inputs=inputs_note,
        peak_rss_bytes=peak_rss_bytes(),
        segments=tuple(segments),
        encoded=encoded_sizes(engine, [(x, *c.values()) for x, c in zip(seg_inputs[1:], carried[1:], strict=True)]),
        created=now_iso(),
        edgeexit_version=__version__,
        backend=engine.backend,
        precision=engine.precision,
    )


def encoded_sizes(engine: Engine, hidden: list[tuple[np.ndarray, ...]]) -> tuple[EncodedSize, ...]:
    """Bytes per sample for every boundary with a hidden tensor and every codec: the manifest's
    tail figure where there is one, else measured by encoding ``hidden[k]`` (one sample: the
    boundary's tensors, each encoded on its own)."""
    from_tails = {
        (tail.boundary, tail.codec): tail.encoded_bytes
        for tail in engine.manifest.tails
        if tail.encoded_bytes is not None
    }
    found = []
    for k, tensors in enumerate(hidden[: len(engine.segments) - 1]):
        for name in list_codecs():
            size = from_tails.get((k, name))
            if size is not None:
                found.append(EncodedSize(k, name, int(size), "manifest"))
            else:
                floats = [np.ascontiguousarray(t, dtype=np.float32) for t in tensors]
                encoded = create_codec(name).encode_boundary(floats)
                found.append(EncodedSize(k, name, encoded.nbytes // max(tensors[0].shape[0], 1), "measured"))
    return tuple(found)
