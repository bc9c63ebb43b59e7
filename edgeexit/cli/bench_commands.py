"""``edgeexit bench PACKAGE --data test.npz --link 1mbit,50ms ...``: policies over emulated links."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edgeexit.console import console, err_console, table

DEFAULT_LINKS = ("1mbit,50ms", "20mbit,10ms")


def register(app: typer.Typer) -> None:
    app.command()(bench)


def bench(
    package: Annotated[
        Path,
        typer.Argument(
            help="Package directory written by `edgeexit export` (or a tar of one: `edgeexit pack`), with tails."
        ),
    ],
    data: Annotated[str, typer.Option(help="Labelled data: an .npz with x and y, or a built-in data set name.")],
    link: Annotated[
        list[str] | None,
        typer.Option(
            help="An emulated link, BANDWIDTH,RTT[,jitter=T][,loss=F][,down=BANDWIDTH] (e.g. 1mbit,50ms); "
            "repeat for several. Default: 1mbit,50ms and 20mbit,10ms."
        ),
    ] = None,
    policy: Annotated[
        list[str] | None,
        typer.Option(
            help="Rows to run: local, split (every split@K, split@input too), split@K, split@input (the whole "
            "model on the server), early+split, early+split@K, best-static, adaptive (repeatable; default: all)."
        ),
    ] = None,
    server: Annotated[
        str | None, typer.Option(help="A running tail server HOST:PORT (default: start one on loopback).")
    ] = None,
    samples: Annotated[int | None, typer.Option(min=1, help="Use only the first N samples.")] = None,
    codec: Annotated[
        str | None, typer.Option(help="Codec of the offloaded tensor (default: the package's best).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the emulated jitter and loss.")] = 0,
    timeout: Annotated[float, typer.Option(min=0.001, help="Deadline of one offload in seconds, link included.")] = 2.0,
    device: Annotated[str, typer.Option(help="Power preset of the energy model (edgeexit.profile.power).")] = "rpi4",
    radio: Annotated[str, typer.Option(help="Radio model of the energy model: wifi or lte.")] = "wifi",
    device_speed: Annotated[
        str,
        typer.Option(
            help="Emulate a slower device: a preset (rpi4: a Raspberry Pi 4, from a published measurement; host: "
            "this machine) or a slowdown factor (e.g. 4.5). Device segments and decisions take that many times "
            "their time here; the tail server runs at this machine's speed."
        ),
    ] = "host",
    speed_reference: Annotated[
        Path | None,
        typer.Option(
            help="Re-base --device-speed on this host: a package of the preset's reference network (for rpi4: "
            "`edgeexit export efficientnet_lite0 --input-shape 1,3,224,224 --out DIR`), timed here. Without it a "
            "preset is a ratio to the machine its reference was measured on."
        ),
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of mean latency per policy per link.")] = None,
    json_output: Annotated[
        Path | None, typer.Option("--json", help="Also write every row as JSON to this file.")
    ] = None,
) -> None:
    """Run labelled data through device + tail server over emulated links, for each offload policy."""
    from contextlib import nullcontext

    from edgeexit.data import load_dataset
    from edgeexit.device.bench import EnergyModel, plot_latency, run_bench
    from edgeexit.device.comparison import local_tail_server
    from edgeexit.profile.device_speed import get_device_speed
    from edgeexit.transport.link_emulation import LinkSpec

    specs = [LinkSpec.parse(text) for text in (link or DEFAULT_LINKS)]
    energy = EnergyModel(device=device, radio=radio)
    energy.presets()  # an unknown preset is an error before anything runs
    speed = get_device_speed(device_speed)  # so is an unknown device speed
    if speed_reference is not None:
        from edgeexit.device.speed import calibrate_to_host

        speed = calibrate_to_host(speed, speed_reference)
    elif speed.reference is not None:
        err_console.print(f"bench: {speed.label} is a ratio to the machine its reference was measured on, not to "
                          "this one; --speed-reference re-bases it here", highlight=False)  # fmt: skip
    labelled = load_dataset(data, split="test")  # a path ignores the split; a built-in name takes its test split
    x, y = labelled.x, labelled.y
    if samples is not None:
        x, y = x[:samples], y[:samples]
    context = nullcontext(server) if server else local_tail_server(package)
    with context as address:
        err_console.print(f"bench: {len(x)} samples, tail server {address}, device speed {speed.label}: "
                          f"{speed.source}", highlight=False)  # fmt: skip
        rows = run_bench(
            package, address, x, y, specs, policies=policy, codec=codec, seed=seed, timeout_s=timeout,
            energy=energy, progress=lambda what: err_console.print(f"  running {what}", highlight=False),
            device_speed=speed,
        )  # fmt: skip
    for spec in specs:
        mine = [r for r in rows if r.link == str(spec)]
        heads = sorted({h for r in mine for h in r.exit_rates}, key=lambda h: (h == "server", h))
        columns = ["policy", "accuracy", "mean ms", "p99 ms", "decide ms", f"energy mJ ({energy.label})",
                   *(f"{h} %" for h in heads), "offload %", "bytes sent", "fallbacks"]  # fmt: skip
        body = [
            [r.policy, f"{r.accuracy:.3f}", f"{r.mean_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.decide_ms:.3f}",
             f"{r.energy_mj:.2f}", *(f"{100 * r.exit_rates.get(h, 0.0):.0f}" for h in heads),
             f"{100 * r.offload_rate:.0f}", f"{r.bytes_sent:,}", r.fallbacks]
            for r in mine
        ]  # fmt: skip
        title = f"link {spec}, device {speed.label} ({len(x)} samples)"
        console.print(table(title, columns, body))
    if "best-static" not in {r.policy for r in rows} and not policy:
        err_console.print("bench: best-static and adaptive need edgeexit.device.policy_runner; not run")
    if plot is not None:
        err_console.print(f"bench: wrote {plot_latency(rows, plot)}", highlight=False)
    if json_output is not None:
        json_output.write_text(json.dumps([r.to_dict() for r in rows], indent=2) + "\n", encoding="utf-8")
