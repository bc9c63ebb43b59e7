"""``edgeexit profile``: latency, exit-check cost, memory, energy and encoded sizes of a package on
this machine; a table, ``profile.json`` for the policies, PNG plots on request (the [plots] extra)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from edgeexit.console import console, table
from edgeexit.errors import UsageError

if TYPE_CHECKING:
    from edgeexit.profile.record import Profile


def register(app: typer.Typer) -> None:
    app.command()(profile)


def profile(
    package: Annotated[
        Path, typer.Argument(help="Package directory written by `edgeexit export`, or a tar of one (`edgeexit pack`).")
    ],
    threads: Annotated[int, typer.Option(min=1, help="Runtime intra-op threads per segment.")] = 1,
    backend: Annotated[str, typer.Option(help="What runs the segments: onnxruntime, or tflite.")] = "onnxruntime",
    precision: Annotated[str, typer.Option(help="fp32, or int8 (the segments `edgeexit quantize` wrote).")] = "fp32",
    runs: Annotated[int, typer.Option(min=1, help="Timed batch-1 passes (after the warm-up).")] = 200,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed passes first.")] = 20,
    device_preset: Annotated[
        str,
        typer.Option(
            help="Power model when the machine has no energy counters: rpi4, rpi5, jetson-nano, orin-nano, x86-laptop."
        ),
    ] = "rpi4",
    radio: Annotated[str, typer.Option(help="Uplink radio model for the split plot: wifi, lte.")] = "wifi",
    rtt_ms: Annotated[float, typer.Option(min=0.0, help="Round-trip time for the split plot (ms).")] = 20.0,
    codec: Annotated[
        str | None,
        typer.Option(help="Codec of the split plot's tails (default: fp16 if the package has it, else fp32)."),
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", metavar="PATH", help="Write profile.json (what the policies read) here.")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(metavar="DIR", help="Write latency.png and splits.png (needs the \\[plots] extra).")
    ] = None,
) -> None:
    """Measure a package on this machine: per-segment and exit-check latency (p50/p90/p99 after
    warm-up), peak RSS, energy per segment (RAPL, Jetson INA3221, else the device preset's power
    model; each figure names its source) and encoded bytes per sample for each codec."""
    from edgeexit.profile.measure import profile_package
    from edgeexit.profile.power import get_preset
    from edgeexit.profile.radio import get_radio
    from edgeexit.profile.record import save_profile

    get_preset(device_preset)  # fail on a typo before measuring
    get_radio(radio)
    if plot is not None:
        import matplotlib  # noqa: F401  (missing: the [plots] extra, before the measurements)
    result = profile_package(
        package, runs=runs, threads=threads, preset=device_preset, warmup=warmup, backend=backend, precision=precision
    )
    console.print(render(result))
    for line in summary(result):
        console.print(line, highlight=False, soft_wrap=True)
    if json_path is not None:
        save_profile(result, json_path)
        console.print(f"wrote {escape(str(json_path))}", highlight=False)
    if plot is not None:
        for written in write_plots(result, package, plot, radio=radio, rtt_ms=rtt_ms, codec=codec):
            console.print(f"wrote {escape(str(written))}", highlight=False)


def render(result: Profile):  # type: ignore[no-untyped-def]
    codecs = sorted(result.codecs, key=lambda c: {"fp32": 0, "fp16": 1, "int8": 2}.get(c, 3))
    columns = ["segment", "p50 ms", "p90 ms", "p99 ms", "exit check p50 µs", "exit check p99 µs", "energy mJ"]
    columns += [f"{c} bytes" for c in codecs]
    rows = []
    for s in result.segments:
        sizes = [result.encoded_bytes(s.index, c) for c in codecs]
        rows.append(
            [
                str(s.index),
                f"{s.latency_p50_ms:.4f}",
                f"{s.latency_p90_ms:.4f}",
                f"{s.latency_p99_ms:.4f}",
                f"{s.exit_check_p50_ms * 1e3:.1f}",
                f"{s.exit_check_p99_ms * 1e3:.1f}",
                f"{s.energy_j * 1e3:.4f} [{s.energy_source}]",
                *sizes,
            ]
        )
    return table(f"{result.model_name} on this machine ({result.runs} runs, batch 1)", columns, rows)


def summary(result: Profile) -> list[str]:
    skipped = "; ".join(f"{s.source}: {s.reason}" for s in result.energy_skipped)
    lines = [
        f"machine: {result.machine.describe()}; {result.backend} {result.precision}; threads {result.threads}; "
        f"peak RSS {result.peak_rss_bytes / 2**20:.1f} MiB; inputs: {result.inputs}",
        f"energy source: {result.energy_source}" + (f" (skipped {skipped})" if skipped else ""),
        "bytes: one sample's encoded boundary tensor (the manifest's tails, else measured); "
        "boundary k is the end of segment k, so the last segment has none",
    ]
    return [escape(line) for line in lines]


def write_plots(
    result: Profile, package: Path, directory: Path, *, radio: str, rtt_ms: float, codec: str | None
) -> list[Path]:
    from edgeexit.package import open_package
    from edgeexit.profile.plots import plot_latency, plot_splits, split_curves
    from edgeexit.profile.record import device_costs

    manifest = open_package(package).manifest
    have = {t.codec for t in manifest.tails}
    if codec is None:
        codec = "fp16" if "fp16" in have else "fp32"
    elif have and codec not in have:
        raise UsageError(f"the package has no tails for codec {codec!r}; it has {', '.join(sorted(have))}")
    directory.mkdir(parents=True, exist_ok=True)
    costs = device_costs(result, manifest, codec=codec, radio=radio)
    curves = split_curves(costs, rtt_ms=rtt_ms, input_bytes=manifest.input.tensor.sample_bytes())
    exits = "from calibration" if manifest.calibration else "none (not calibrated)"
    title = (
        f"{result.model_name}: expected cost per inference vs uplink ({radio}, RTT {rtt_ms:g} ms, codec {codec})\n"
        f"early exits: {exits}; server compute not counted; 'offload input' is a reference (no tail takes it)\n"
        f"measured on {result.machine.describe()}, {result.threads} thread(s)"
    )
    return [
        plot_latency(result, directory / "latency.png"),
        plot_splits(curves, directory / "splits.png", title=title, energy_source=result.energy_source),
    ]
