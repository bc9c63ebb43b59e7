"""PNG plots of a profile (matplotlib, the ``[plots]`` extra, imported only when a plot is drawn).

- ``latency.png``: per-segment latency, bars at p50 with whiskers up to p90 and p99.
- ``splits.png`` (the Neurosurgeon picture): for each split point the expected end-to-end latency and
  the device's energy per inference as the uplink goes from 0.5 to 200 Mbit/s (log x), computed
  with ``edgeexit.policy.costs.static_split`` from the profile (early exits included: samples that
  exit before the split never upload). Split points: all local, offload at each boundary with a
  tail, and "offload the input" as a reference line: no package tail serves the raw input, so it
  is drawn with the input's raw bytes and the same RTT and radio, server compute not counted.
  The server's compute is not counted for any split (the profile measures this device only).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeexit.fileio import atomic_write_bytes
from edgeexit.policy.costs import DeviceCosts, static_split
from edgeexit.policy.link import LinkEstimate
from edgeexit.profile.record import Profile

BANDWIDTHS_MBPS = np.geomspace(0.5, 200.0, 60)


@dataclass(frozen=True, eq=False)
class SplitCurve:
    """One split point's expected latency (ms) and device energy (J) at each bandwidth."""

    name: str
    split: int | None  # None: all local; -1: offload the raw input (reference)
    bandwidths_mbps: np.ndarray
    latency_ms: np.ndarray
    energy_j: np.ndarray


def split_curves(
    costs: DeviceCosts,
    *,
    rtt_ms: float = 20.0,
    bandwidths_mbps: np.ndarray = BANDWIDTHS_MBPS,
    input_bytes: int | None = None,
) -> list[SplitCurve]:
    """Expected whole-inference cost of each static split at each uplink bandwidth."""
    links = [LinkEstimate(bandwidth_bps=mbps * 1e6, rtt_s=rtt_ms / 1000.0) for mbps in bandwidths_mbps]

    def curve(name: str, split: int | None, plan: DeviceCosts, at: int | None) -> SplitCurve:
        cost = [static_split(plan, at, link) for link in links]
        return SplitCurve(
            name,
            split,
            np.asarray(bandwidths_mbps),
            np.array([c.latency_ms for c in cost]),
            np.array([c.energy_j for c in cost]),
        )

    curves = [curve("local", None, costs, None)]
    if input_bytes is not None:
        # A zero-cost segment before the input: offloading at its boundary sends the input itself.
        raw = DeviceCosts(
            segment_ms=(0.0, 0.0),
            segment_j=(0.0, 0.0),
            exit_prob=(0.0, 1.0),
            encoded_bytes=(input_bytes,),
            radio=costs.radio,
            idle_w=costs.idle_w,
        )
        curves.append(curve("offload input (raw)", -1, raw, 0))
    curves += [curve(f"split@{k}", k, costs, k) for k in costs.offload_boundaries]
    return curves


def _save(figure, path: str | os.PathLike[str]) -> Path:  # type: ignore[no-untyped-def]
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    target = Path(path)
    atomic_write_bytes(target, buffer.getvalue())
    return target


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_latency(profile: Profile, path: str | os.PathLike[str]) -> Path:
    """Bars at each segment's p50 latency, whiskers to p90 (thick) and p99 (thin)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    index = np.arange(len(profile.segments))
    p50 = np.array([s.latency_p50_ms for s in profile.segments])
    p90 = np.array([s.latency_p90_ms for s in profile.segments])
    p99 = np.array([s.latency_p99_ms for s in profile.segments])
    axis.bar(index, p50, color="tab:blue", label="p50")
    axis.errorbar(index, p50, yerr=[np.zeros_like(p50), p99 - p50], fmt="none", ecolor="gray", capsize=6, label="p99")
    axis.errorbar(index, p50, yerr=[np.zeros_like(p50), p90 - p50], fmt="none", ecolor="black", lw=2.5, label="p90")
    axis.set_xticks(index, [f"segment {s.index}" for s in profile.segments])
    axis.set_ylabel("latency per sample (ms)")
    axis.set_title(
        f"{profile.model_name}: batch-1 segment latency, {profile.threads} thread(s), {profile.runs} runs\n"
        f"{profile.machine.describe()}",
        fontsize=9,
    )
    axis.legend()
    return _save(figure, path)


def plot_splits(curves: list[SplitCurve], path: str | os.PathLike[str], *, title: str, energy_source: str) -> Path:
    """The Neurosurgeon picture: latency and device energy of each split vs uplink bandwidth."""
    plt = _pyplot()
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7.0, 7.0), sharex=True)
    for curve in curves:
        style = "--" if curve.split == -1 else ("-" if curve.split is not None else ":")
        top.plot(curve.bandwidths_mbps, curve.latency_ms, style, label=curve.name)
        bottom.plot(curve.bandwidths_mbps, curve.energy_j * 1e3, style, label=curve.name)
    top.set_xscale("log")
    top.set_yscale("log")
    bottom.set_yscale("log")
    top.set_ylabel("expected end-to-end latency (ms)")
    bottom.set_ylabel(f"device energy per inference (mJ)\nsegments: {energy_source}")
    bottom.set_xlabel("uplink bandwidth (Mbit/s)")
    top.set_title(title, fontsize=9)
    top.legend(fontsize=8)
    top.grid(True, which="both", alpha=0.3)
    bottom.grid(True, which="both", alpha=0.3)
    return _save(figure, path)
