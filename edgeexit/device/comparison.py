"""All-local vs. split vs. early exit + offload, side by side on labelled data.

What ``edgeexit demo`` prints once it has a tail server: the same samples through the device
alone (full depth and early exit), through a split at each boundary with each codec (every
sample offloaded: the Neurosurgeon baseline), and through early exit with offload at each
boundary (only the samples no exit up to the boundary was sure of travel). Latency is wall time
per sample as the caller sees it, offload included.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeexit.device.offload import OffloadRunner
from edgeexit.errors import ServerError
from edgeexit.procs import SERVE_READY_PREFIX, START_TIMEOUT_S, ChildProcess
from edgeexit.runtime.engine import Engine, Result
from edgeexit.transport.client import TailClient


@dataclass(frozen=True)
class OffloadSummary:
    """One way of answering the same samples."""

    name: str
    samples: int
    accuracy: float
    mean_ms: float
    p90_ms: float
    bytes_per_sample: float  # over every sample, the ones that never travelled count as 0
    offload_rate: float  # answered by the server
    fallbacks: int  # reached the boundary, the offload failed, answered here


def summarize_runs(name: str, run: Callable[[np.ndarray], Result], x: np.ndarray, y: np.ndarray) -> OffloadSummary:
    latencies, predictions, sent, offloaded, fallbacks = [], [], 0, 0, 0
    for sample in x:
        tick = time.perf_counter()
        result = run(sample)
        latencies.append((time.perf_counter() - tick) * 1e3)
        predictions.append(-1 if result.prediction is None else result.prediction)
        if result.offload is not None:
            sent += result.offload.bytes_sent
            offloaded += int(not result.offload.fallback)
            fallbacks += int(result.offload.fallback)
    return OffloadSummary(
        name=name,
        samples=len(x),
        accuracy=float(np.mean(np.array(predictions) == y)),
        mean_ms=float(np.mean(latencies)),
        p90_ms=float(np.percentile(latencies, 90)),
        bytes_per_sample=sent / max(len(x), 1),
        offload_rate=offloaded / max(len(x), 1),
        fallbacks=fallbacks,
    )


def compare_offload(
    package: str | Path,
    client: TailClient,
    x: np.ndarray,
    y: np.ndarray,
    *,
    codecs: Sequence[str] | None = None,
) -> list[OffloadSummary]:
    """Every row of the comparison; ``codecs`` None: every codec the package has tails for."""
    early = Engine(package, cache_dir=None)
    full = Engine(package, threshold=float("inf"), cache_dir=None)  # no early exit can pass
    tails = early.manifest.tails
    chosen = sorted({t.codec for t in tails}) if codecs is None else list(codecs)
    boundaries = sorted({t.boundary for t in tails})
    rows = [
        summarize_runs("local, full depth", full.run, x, y),
        summarize_runs("local, early exit", early.run, x, y),
    ]
    for k in boundaries:
        for codec in chosen:
            runner = OffloadRunner(full, client, split=k, codec=codec, early_exit=False)
            where = "the input (all offloaded)" if k == -1 else str(k)
            rows.append(summarize_runs(f"split at {where}, {codec}", runner.run, x, y))
    for k in (b for b in boundaries if b >= 0):  # at the input no exit has run: the same as the split
        for codec in chosen:
            runner = OffloadRunner(early, client, split=k, codec=codec, early_exit=True)
            rows.append(summarize_runs(f"early exit + offload at {k}, {codec}", runner.run, x, y))
    return rows


@contextmanager
def local_tail_server(package: str | Path, *, timeout_s: float = START_TIMEOUT_S) -> Iterator[str]:
    """``edgeexit serve PACKAGE`` on 127.0.0.1 with an ephemeral port, as a child process; yields
    its address and stops it (SIGTERM, then SIGKILL) on the way out."""
    command = [sys.executable, "-m", "edgeexit", "serve", str(package), "--listen", "127.0.0.1:0"]
    with ChildProcess(command, env={**os.environ, "COLUMNS": "160"}) as server:
        try:
            address = server.wait_ready(SERVE_READY_PREFIX, timeout_s=timeout_s)
        except ServerError:
            raise ServerError(f"the tail server did not start ({' '.join(command)}):\n{server.tail()}") from None
        yield address
