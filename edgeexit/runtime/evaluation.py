"""Run labelled data through an engine and summarize it: what the demo and benchmarks print.

Latency is per sample as a caller sees it (``run`` one at a time); throughput for batched early
exit is samples per second of wall time over the whole set (``run_batch`` in chunks).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from edgeexit.runtime.engine import Engine


@dataclass(frozen=True)
class RunSummary:
    mode: str  # "one at a time" or "batch N"
    samples: int
    accuracy: float
    mean_ms: float  # per sample
    p90_ms: float  # per sample (one at a time); per batch share otherwise
    throughput: float  # samples per second
    exit_rates: tuple[float, ...]


def summarize(engine: Engine, x: np.ndarray, y: np.ndarray, *, batch_size: int | None = None) -> RunSummary:
    """One pass over ``x``; ``batch_size`` None runs one sample at a time through ``run``."""
    started = time.perf_counter()
    if batch_size is None:
        results = [engine.run(sample) for sample in x]
        latencies = np.array([r.latency_ms for r in results])
    else:
        results, latencies_list = [], []
        for start in range(0, len(x), batch_size):
            tick = time.perf_counter()
            chunk = engine.run_batch(x[start : start + batch_size])
            share = (time.perf_counter() - tick) * 1e3 / len(chunk)
            results += chunk
            latencies_list += [share] * len(chunk)
        latencies = np.array(latencies_list)
    elapsed = time.perf_counter() - started
    predictions = np.array([-1 if r.prediction is None else r.prediction for r in results])
    exits = np.bincount([r.exit for r in results], minlength=engine.num_exits) / len(results)
    return RunSummary(
        mode="one at a time" if batch_size is None else f"batch {batch_size}",
        samples=len(results),
        accuracy=float(np.mean(predictions == y)),
        mean_ms=float(latencies.mean()),
        p90_ms=float(np.percentile(latencies, 90)),
        throughput=len(results) / elapsed,
        exit_rates=tuple(float(r) for r in exits),
    )
