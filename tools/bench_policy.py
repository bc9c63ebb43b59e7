"""Offloading where it pays: static plans vs. the policies, on a device emulated at a Raspberry Pi 4's
speed, over emulated links of 1-500 Mbit/s with RTTs of 5-50 ms.

Every row is ``edgeexit.device.bench``'s (its runners, its measurement, its energy model, its
``--device-speed`` emulation: nothing here re-implements them). Per link:

- static plans: ``local`` (early exit on the device alone), ``split@input`` (all-offload: the
  input sent to the input tail), ``split@K`` (Neurosurgeon: every sample offloaded at K, no early
  exit) and ``early+split@K`` (early exit up to K, the survivors offloaded at K);
- the policies: ``best-static`` (model-based choice of one plan, for reference), ``adaptive``
  (PolicyRunner deciding at each boundary, latency objective) and ``adaptive/energy`` (least
  device energy under the latency SLO).

The oracle is the static plan with the lowest measured median latency (for energy: the lowest
median energy among the plans whose median latency meets the SLO), picked after the fact.
Noise: every row runs ``--rounds`` times, rounds interleaved (round 1 of every row of every link,
then round 2, ... with the row order rotated each round); a row's figure is the median of its
round means and its noise the spread (max - min) of those means. "Never worse than a baseline by
more than the noise" compares the medians with the larger of the two rows' spreads; for energy
under the SLO, a baseline whose median latency breaks the SLO is no baseline (shown "(over the SLO)").

The device runs at ``--device-speed`` (default ``rpi4``: ``edgeexit.profile.device_speed``), a
ratio to the machine its reference was measured on; ``--speed-reference auto`` re-bases it on this
host (exports the reference network and times it here: on a host 2.2x faster than that VM, the
factor 6.89 would emulate a device 2.2x faster than a Pi 4). The tail server (one, on loopback, for
the whole run) runs at this machine's speed. The SLO is
``--slo-factor`` x the all-local median latency.

    python tools/bench_policy.py --package PKG --markdown /tmp/figures.md    # the sweep
    python tools/bench_policy.py --package PKG --quick                       # smoke run
    python tools/bench_policy.py --package PKG --speed-reference auto       # a Pi 4 on this host
    python tools/bench_policy.py --measure-reference PKG224                  # the rpi4 preset's reference
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeexit.console import console, table
from edgeexit.device import bench
from edgeexit.device.comparison import local_tail_server
from edgeexit.device.speed import calibrate_to_host, reference_ms
from edgeexit.policy import Objective
from edgeexit.profile.device_speed import DeviceSpeed, get_device_speed
from edgeexit.transport.client import TailClient
from edgeexit.transport.link_emulation import EmulatedLink, LinkSpec

DEFAULT_LINKS = "1mbit,50ms;5mbit,50ms;20mbit,20ms;100mbit,10ms;500mbit,5ms;500mbit,50ms;20mbit,5ms"
QUICK_LINKS = "1mbit,50ms;500mbit,5ms"
SLO_FACTOR = 1.25
TARGET_ORACLE = 1.05
#: How a target reads in the tables (None: the baseline breaks the latency SLO, so it is none).
VERDICTS = {True: "met", False: "**missed**", None: "(over the SLO)"}


# ---------------------------------------------------------------- the preset's reference measurement


def measure_reference(package: Path, rounds: int, runs: int) -> None:
    """Full-depth latency of ``package`` here, batch 1, 1 ONNX Runtime thread: the denominator of a
    device speed preset (``edgeexit.device.speed.reference_ms``: the lowest of ``rounds`` round means)."""
    ms = reference_ms(package, rounds=rounds, runs=runs)
    console.print(f"{package}: full depth, batch 1, 1 thread: {ms:.2f} ms (lowest of {rounds} rounds of {runs} runs)",
                  highlight=False)  # fmt: skip


def device_speed(value: str, reference: str | None) -> DeviceSpeed:
    """``--device-speed`` re-based on this host when ``--speed-reference`` names the preset's
    reference package, or ``auto`` (exported here into a temporary directory: torch needed)."""
    speed = get_device_speed(value)
    if reference is None:
        if speed.reference is not None:
            console.print(f"note: {speed.label} is a ratio to the reference VM, not to this host; "
                          "--speed-reference auto re-bases it here", highlight=False)  # fmt: skip
        return speed
    if reference != "auto":
        return calibrate_to_host(speed, Path(reference))
    if speed.reference is None:
        return speed.on_host(1.0)  # raises: nothing to re-base on
    name, shape = speed.reference
    with tempfile.TemporaryDirectory(prefix="edgeexit-speed-") as tmp:
        out = Path(tmp) / name
        command = [sys.executable, "-m", "edgeexit", "export", name, "--input-shape",
                   ",".join(map(str, (1, *shape))), "--out", str(out)]  # fmt: skip
        console.print(f"re-basing {speed.name} on this host: {' '.join(command[1:])}", highlight=False)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return calibrate_to_host(speed, out)


# ---------------------------------------------------------------- rows


def row_names(setup: bench.BenchSetup, quick: bool, rows: str | None = None) -> list[str]:
    """The rows to run: ``rows`` (comma-separated bench policy names), else every static plan and
    policy (``quick``: no ``split@K`` without early exit but ``split@input``); always
    ``local``, ``adaptive`` and ``adaptive/energy``, which the targets compare."""
    boundaries = sorted({t.boundary for t in setup.early.manifest.tails if t.codec == setup.codec})
    wanted = rows.split(",") if rows else ["local", "split", "early+split", "best-static", "adaptive"]
    names = bench.resolve_policies(["local", *wanted, "adaptive"], boundaries, have_policy_runner=True)
    if quick:
        names = [n for n in names if not n.startswith("split@") or n == "split@input"]
    return [*names, "adaptive/energy"]


def static(name: str) -> bool:
    return name == "local" or name.startswith(("split@", "early+split@"))


def measure(setup: bench.BenchSetup, name: str, spec: LinkSpec, address: str, x, y, slo_ms: float | None,
            seed: int, timeout_s: float) -> bench.BenchRow:  # fmt: skip
    with TailClient(address, timeout_s=timeout_s, transport=EmulatedLink(spec, seed)) as client:
        if name == "adaptive/energy":
            # the SLO is a mean (1.25 x all-local's mean), as the oracle is judged: each option by its whole plan
            run = setup.runner("adaptive", client, spec, Objective("energy", latency_slo_ms=slo_ms, scope="mean"))
        else:
            run = setup.runner(name, client, spec)
        return setup.measure(name, run, x, y, spec)


# ---------------------------------------------------------------- what the policies' model expects


def probe_rtt_s(address: str, spec: LinkSpec, seed: int, timeout_s: float) -> float:
    """The least of ``bench.PROBES`` ServerLive round trips over the emulated link: the RTT a
    policy row starts from (the link's delay plus this stack's per-request overhead)."""
    with TailClient(address, timeout_s=timeout_s, transport=EmulatedLink(spec, seed)) as client:
        found = [f[1] for f in (client.live(timeout_s=1.0) for _ in range(bench.PROBES)) if f is not None]
    return min(found) if found else spec.rtt_s


def modelled_plans(costs, spec: LinkSpec, rtt_s: float) -> dict[str, tuple[float, float]]:
    """Expected mean latency (ms) and device energy (mJ) of each static plan with early exit, as
    the policies model them on ``spec`` at the probed ``rtt_s``: set beside the measured medians,
    they say where a policy's choice can go wrong (a plan the model puts first that measures worse).
    Samples run back to back, so a plan's request interval is its own latency: that sets how far
    apart its offloads come, so its share of the radio's tail (``edgeexit.policy.costs``)."""
    from edgeexit.policy import LinkEstimate
    from edgeexit.policy.costs import static_split

    link = LinkEstimate.fixed(spec.bandwidth_bps, rtt_s)
    plans = {"local": static_split(costs, None)}
    for k in costs.offload_boundaries:
        latency_ms = static_split(costs, k, link).latency_ms  # the interval does not change latency
        paced = LinkEstimate.fixed(spec.bandwidth_bps, rtt_s, request_interval_s=latency_ms / 1e3)
        plans["split@input" if k == -1 else f"early+split@{k}"] = static_split(costs, k, paced)
    return {name: (cost.latency_ms, 1e3 * cost.energy_j) for name, cost in plans.items()}


# ---------------------------------------------------------------- summaries


def med(rows: Sequence[bench.BenchRow], what: str) -> float:
    return statistics.median(getattr(r, what) for r in rows)


def spread(rows: Sequence[bench.BenchRow], what: str) -> float:
    values = [getattr(r, what) for r in rows]
    return max(values) - min(values)


def summarize(rows: dict[str, list[bench.BenchRow]], slo_ms: float) -> dict[str, object]:
    statics = [n for n in rows if static(n)]
    oracle = min(statics, key=lambda n: med(rows[n], "mean_ms"))
    within = [n for n in statics if med(rows[n], "mean_ms") <= slo_ms]
    oracle_energy = min(within, key=lambda n: med(rows[n], "energy_mj")) if within else oracle
    splits = [n for n in statics if n.startswith("split@")]
    offload = "split@input" if "split@input" in rows else (
        min(splits, key=lambda n: int(n.rpartition("@")[2])) if splits else None
    )  # fmt: skip  # None: --rows ran no all-offload plan to compare with
    found: dict[str, object] = {"oracle": oracle, "oracle_energy": oracle_energy, "all_offload": offload}
    for objective, row, what, best in (("latency", "adaptive", "mean_ms", oracle),
                                       ("energy", "adaptive/energy", "energy_mj", oracle_energy)):  # fmt: skip
        mine = med(rows[row], what)
        checks = {"oracle": (best, TARGET_ORACLE * med(rows[best], what))}
        for base in ("local", offload):
            if base is None or base not in rows:
                continue
            noise = max(spread(rows[row], what), spread(rows[base], what))
            checks[base] = (base, med(rows[base], what) + noise)
        found[objective] = {
            key: {"row": ref, "ratio": mine / med(rows[ref], what), "limit": limit, "met": mine <= limit}
            for key, (ref, limit) in checks.items()
        }
        if objective == "energy":  # "energy under a latency SLO": a baseline over the SLO is no baseline
            for check in found[objective].values():  # type: ignore[union-attr]
                if med(rows[check["row"]], "mean_ms") > slo_ms:
                    check["met"] = None
    found["energy_row_latency_ms"] = med(rows["adaptive/energy"], "mean_ms")
    found["energy_row_meets_slo"] = found["energy_row_latency_ms"] <= slo_ms  # type: ignore[operator]
    return found


def markdown(results, slo_ms: float, meta: dict[str, object]) -> str:
    links = list(results)
    names = list(next(iter(results.values()))[0])
    out = [f"Device {meta['device_speed']}; package {meta['package']}; {meta['samples']} samples x "
           f"{meta['rounds']} interleaved rounds; codec {meta['codec']}; SLO {slo_ms:.2f} ms.", ""]  # fmt: skip
    for what, unit in (("mean_ms", "ms"), ("energy_mj", "mJ")):
        out += [f"Median {'mean latency' if what == 'mean_ms' else 'device energy'} per sample ({unit}; "
                "spread over rounds in brackets; **bold**: the oracle static plan):", ""]  # fmt: skip
        out += ["| link | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
        for link in links:
            rows, summary = results[link]
            best = summary["oracle" if what == "mean_ms" else "oracle_energy"]
            cells = []
            for n in names:
                text = f"{med(rows[n], what):.2f} ({spread(rows[n], what):.2f})"
                cells.append(f"**{text}**" if n == best else text)
            out.append(f"| {link} | " + " | ".join(cells) + " |")
        out.append("")
    out += ["Adaptive vs. the targets (median ratios; a baseline's limit adds the larger spread of the two rows):", "",
            "| link | objective | oracle | / oracle (<= 1.05) | / local (<= 1 + noise) | / all-offload (<= 1 + noise) "
            "| decide ms/sample | offload % | energy row latency vs SLO |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
    for link in links:
        rows, summary = results[link]
        for objective, row in (("latency", "adaptive"), ("energy", "adaptive/energy")):
            checks = summary[objective]
            picked = [checks.get("oracle"), checks.get("local"), checks.get(summary["all_offload"])]
            cells = ["-" if c is None else f"{c['ratio']:.3f} {VERDICTS[c['met']]}" for c in picked]
            verdict = "met" if summary["energy_row_meets_slo"] else "**missed**"
            slo = f"{summary['energy_row_latency_ms']:.2f} ms {verdict}" if objective == "energy" else ""
            oracle = summary["oracle" if objective == "latency" else "oracle_energy"]
            tail = f"{med(rows[row], 'decide_ms'):.3f} | {100 * med(rows[row], 'offload_rate'):.0f} | {slo}"
            out.append(f"| {link} | {objective} | {oracle} | " + " | ".join(cells) + f" | {tail} |")
    out.append("")
    modelled = [link for link in links if results[link][1].get("modelled")]
    for index, what, unit in ((0, "mean_ms", "mean latency (ms)"), (1, "energy_mj", "device energy (mJ)")):
        if not modelled:
            break
        plans = list(results[modelled[0]][1]["modelled"])
        out += [f"Modelled vs. measured {unit} of the static plans: what the policies' cost model expects at the "
                "probed RTT, then measured / modelled (the model's error; > 1: the plan costs more than "
                "modelled):", "", "| link | probed RTT ms | " + " | ".join(plans) + " |",
                "| --- | ---: |" + " ---: |" * len(plans)]  # fmt: skip
        for link in modelled:
            rows, summary = results[link]
            model = {p: summary["modelled"][p][index] for p in plans}
            cells = [f"{model[p]:.2f} / {med(rows[p], what) / model[p]:.2f}" if p in rows else f"{model[p]:.2f}"
                     for p in plans]  # fmt: skip
            out.append(f"| {link} | {1e3 * summary['probe_rtt_s']:.2f} | " + " | ".join(cells) + " |")
        out.append("")
    out.append("Accuracy (median over rounds): " + ", ".join(
        f"{n} {med(next(iter(results.values()))[0][n], 'accuracy'):.3f}" for n in names))  # fmt: skip
    return "\n".join(out) + "\n"


def load_data(package: Path, data: str | None, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``--data`` (an .npz with x and y, or a built-in name; its test split), else the built-in
    images' test split; ``samples`` of them in a seeded order."""
    from edgeexit.data import builtin_images, load_dataset

    found = load_dataset(data, split="test") if data else builtin_images("test")
    order = np.random.default_rng(seed).permutation(len(found.x))[:samples]
    return found.x[order], found.y[order], found.source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", type=Path)
    parser.add_argument("--data", default=None, help="labelled data (default: the built-in images' test split)")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--links", default=DEFAULT_LINKS, help="';'-separated BANDWIDTH,RTT links")
    parser.add_argument("--device-speed", default="rpi4")
    parser.add_argument(
        "--speed-reference", default=None, metavar="PKG|auto",
        help="re-base --device-speed on this host: its reference network's package, or auto (exported here, "
        "e.g. edgeexit export efficientnet_lite0 --input-shape 1,3,224,224)",
    )  # fmt: skip
    parser.add_argument(
        "--codec", default=None, help="boundary codec the offloads use (default: the package's, fp16 first)"
    )
    parser.add_argument("--slo-factor", type=float, default=SLO_FACTOR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--rows", default=None, help="bench policies to run, comma-separated (default: all)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 samples, 1 round, 2 links, fewer rows")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None, help="also write the tables as markdown here")
    parser.add_argument("--measure-reference", type=Path, default=None, metavar="PKG",
                        help="only measure PKG's full-depth latency here (a device speed's reference)")  # fmt: skip
    args = parser.parse_args()
    if args.measure_reference is not None:
        measure_reference(args.measure_reference, rounds=5, runs=40)
        return
    if args.package is None:
        parser.error("--package is required (a package with tails, e.g. from `edgeexit export --codecs fp16`)")
    if args.quick:
        args.samples, args.rounds, args.links = 20, 1, QUICK_LINKS
    speed = device_speed(args.device_speed, args.speed_reference)
    x, y, source = load_data(args.package, args.data, args.samples, args.seed)
    setup = bench.BenchSetup.load(args.package, x[:32], codec=args.codec, speed=speed)
    codecs = sorted({t.codec for t in setup.early.manifest.tails})
    if setup.codec not in codecs:  # no split row could run: say so before minutes of local rows
        parser.error(f"{args.package} has no tails with codec {setup.codec!r}; it has {codecs or 'none'} (--codec)")
    specs = [LinkSpec.parse(text) for text in args.links.split(";")]
    names = row_names(setup, args.quick, args.rows)
    console.print(f"package {args.package}; data {source}; {len(x)} samples x {args.rounds} rounds; rows {names}",
                  highlight=False)  # fmt: skip
    console.print(f"device {speed.label}: {speed.source}", highlight=False)
    console.print(f"device segments {[round(v, 3) for v in setup.segment_ms]} ms at that speed", highlight=False)
    results: dict[str, tuple[dict[str, list[bench.BenchRow]], dict[str, object]]] = {}
    collected: dict[str, dict[str, list[bench.BenchRow]]] = {str(s): {n: [] for n in names} for s in specs}
    costs = setup.policy_costs()
    probed: dict[str, float] = {}
    with local_tail_server(args.package) as address:
        for spec in specs:
            probed[str(spec)] = probe_rtt_s(address, spec, args.seed, args.timeout)
        local = setup.measure("local", setup.early.run, x, y, specs[0])
        slo_ms = args.slo_factor * local.mean_ms
        console.print(f"latency SLO {slo_ms:.2f} ms = {args.slo_factor} x all-local {local.mean_ms:.2f} ms")
        for r in range(args.rounds):
            for spec in specs:
                order = names[r % len(names) :] + names[: r % len(names)]  # rotated: no row always runs first
                for name in order:
                    console.print(f"  round {r + 1} {spec} / {name}", highlight=False)
                    row = measure(setup, name, spec, address, x, y, slo_ms, args.seed, args.timeout)
                    collected[str(spec)][name].append(row)
    for link, rows in collected.items():
        summary = summarize(rows, slo_ms)
        spec = next(s for s in specs if str(s) == link)
        summary["probe_rtt_s"] = probed[link]
        summary["modelled"] = modelled_plans(costs, spec, probed[link])
        results[link] = (rows, summary)
        body = [[n, f"{med(rs, 'accuracy'):.3f}", f"{med(rs, 'mean_ms'):.2f}", f"{spread(rs, 'mean_ms'):.2f}",
                 f"{med(rs, 'decide_ms'):.3f}", f"{med(rs, 'energy_mj'):.2f}", f"{100 * med(rs, 'offload_rate'):.0f}",
                 sum(r.fallbacks for r in rs)] for n, rs in rows.items()]  # fmt: skip
        console.print(table(f"link {link}, device {speed.label}, {len(x)} samples x {args.rounds} rounds",
                            ["row", "acc", "median ms", "spread ms", "decide ms", "energy mJ", "offload %",
                             "fallbacks"], body))  # fmt: skip
    meta = {"device_speed": speed.label, "package": str(args.package), "samples": len(x), "rounds": args.rounds,
            "codec": setup.codec, "slo_ms": slo_ms, "segment_ms": list(setup.segment_ms),
            "source": speed.source}  # fmt: skip
    text = markdown(results, slo_ms, meta)
    console.print(text, highlight=False, markup=False)
    if args.markdown is not None:
        args.markdown.write_text(text, encoding="utf-8")
    if args.json is not None:
        dump = {link: {"rows": {n: [r.to_dict() for r in rs] for n, rs in rows.items()}, "summary": s}
                for link, (rows, s) in results.items()}  # fmt: skip
        dump["_meta"] = meta
        args.json.write_text(json.dumps(dump, indent=2, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    import _tool  # beside this script

    _tool.run(main)
