"""Commands that run a package on the device: run (optionally offloading), calibrate. ONNX Runtime and
numpy; grpc only when ``run`` offloads."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from edgeexit.console import console, err_console

if TYPE_CHECKING:
    from edgeexit.device.settings import OffloadSettings
    from edgeexit.policy import DeviceCosts
    from edgeexit.runtime.engine import Engine, Result
    from edgeexit.runtime.inputs import Sample

PackageArg = Annotated[
    Path, typer.Argument(help="Package directory written by `edgeexit export`, or a tar of one (`edgeexit pack`).")
]
#: calibrate rewrites the manifest, so it takes the directory (a tar would change only its cache entry).
PackageDirArg = Annotated[Path, typer.Argument(help="Package directory written by `edgeexit export`.")]
CriterionOpt = Annotated[
    str | None,
    typer.Option(
        help="Exit criterion for every early exit: max_prob, margin, entropy, patience, similarity, or learned "
        "(a gate per exit that calibrate trains on the validation data)."
    ),
]
ThreadsOpt = Annotated[int, typer.Option(min=1, help="Runtime intra-op threads per segment.")]
BackendOpt = Annotated[
    str, typer.Option(help="What runs the segments: onnxruntime, or tflite (the package's LiteRT variant).")
]
PrecisionOpt = Annotated[
    str, typer.Option(help="fp32, or int8: the statically quantized segments `edgeexit quantize` wrote.")
]
#: Without --profile, segment energy is this preset's active power times the measured latency.
DEFAULT_POWER_PRESET = "rpi4"
#: Without --profile, the radio preset the costs assume.
DEFAULT_RADIO = "wifi"


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.command()(calibrate)


def run(
    package: PackageArg,
    inputs: Annotated[
        list[Path] | None, typer.Argument(help=".npy / .npz (x, optional y) or image files.", show_default=False)
    ] = None,
    texts: Annotated[
        list[str] | None,
        typer.Option("--text", help="Text to classify, for a package with a tokenizer (repeat for several)."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    criterion: CriterionOpt = None,
    threshold: Annotated[float | None, typer.Option(help="Threshold for every early exit.")] = None,
    threads: ThreadsOpt = 1,
    backend: BackendOpt = "onnxruntime",
    precision: PrecisionOpt = "fp32",
    batch: Annotated[bool, typer.Option(help="Run all inputs as one batch (batched early exit).")] = False,
    server: Annotated[
        list[str] | None,
        typer.Option(
            "--server",
            metavar="HOST:PORT",
            help="Tail server to offload to (edgeexit serve, Triton, KServe); repeat it for several: "
            "requests are balanced and fail over.",
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            metavar="K|input",
            help="Offload at boundary K (0 .. segments-2) the inputs not exited by then; 'input': send every "
            "input as it is (the server runs the whole model; needs the package's input tail).",
        ),
    ] = None,
    codec: Annotated[
        str | None, typer.Option(help="How the boundary tensor travels: fp32, fp16, int8 (default: fp16 if present).")
    ] = None,
    timeout_ms: Annotated[
        float, typer.Option(min=1.0, help="Deadline of one offload, failover included; then the device finishes it.")
    ] = 1000.0,
    token_file: Annotated[
        Path | None, typer.Option(help="File holding the bearer token the server asks for (one line).")
    ] = None,
    tls_ca: Annotated[Path | None, typer.Option(help="CA certificate (PEM) of the server's: enables TLS.")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="This device's certificate (PEM) for mutual TLS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="This device's private key (PEM) for mutual TLS.")] = None,
    policy: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="Offload policy deciding at each boundary: local, split@K, best-static, adaptive (the last two "
            "weigh the device's costs against the link estimate; --split K is split@K).",
        ),
    ] = None,
    profile: Annotated[
        Path | None,
        typer.Option(
            help="Device profile (from `edgeexit profile`) the policy's costs come from. Without it: segment "
            f"latency measured here on the inputs, energy = the {DEFAULT_POWER_PRESET} preset's active power x that "
            f"latency, its idle power while waiting, a {DEFAULT_RADIO} radio, exit rates from the manifest.",
        ),
    ] = None,
    objective: Annotated[
        str, typer.Option(help="What the policy minimizes: latency (within --energy-budget-j) or energy.")
    ] = "latency",
    energy_budget_j: Annotated[
        float | None, typer.Option(min=0.0, help="Expected device energy per inference, with --objective latency.")
    ] = None,
    latency_slo_ms: Annotated[
        float | None, typer.Option(min=0.0, help="Expected latency per inference, with --objective energy.")
    ] = None,
    constraint_scope: Annotated[
        str,
        typer.Option(
            help="What --energy-budget-j / --latency-slo-ms bound: each request (a sample that can meet it "
            "nowhere takes the closest option), or the mean over all requests (each option judged by its whole plan)."
        ),
    ] = "request",
    decision_log: Annotated[
        Path | None,
        typer.Option(help="Append every policy decision to this JSON-lines file, with its inputs and reason."),
    ] = None,
) -> None:
    """Run inputs through a package, stopping each at its first confident exit.

    With --server and --split, inputs not exited by boundary K are sent to a tail server; any
    failure (unreachable, past --timeout-ms, refused, a bad reply) finishes them on this device.
    With --policy, a policy decides at each boundary whether to offload (see --profile).
    """
    from edgeexit.device.settings import OffloadFlags
    from edgeexit.runtime.engine import Engine
    from edgeexit.runtime.inputs import load_samples
    from edgeexit.runtime.settings import EngineSettings

    if bool(inputs) == bool(texts):
        raise typer.BadParameter("give input files, or --text for a package with a tokenizer (not both)")
    offload = OffloadFlags(
        server=tuple(server or ()), split=split, codec=codec, timeout_ms=timeout_ms, token_file=token_file,
        tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, policy=policy, profile=profile, objective=objective,
        energy_budget_j=energy_budget_j, latency_slo_ms=latency_slo_ms, constraint_scope=constraint_scope,
        decision_log=decision_log,
    ).settings()  # fmt: skip
    settings = EngineSettings(threads=threads, criterion=criterion, threshold=threshold, backend=backend,
                              precision=precision)  # fmt: skip
    engine = Engine.from_settings(package, settings)
    if texts:
        if offload is not None:
            raise typer.BadParameter("text models run on the device only: offload of context inputs is not built yet")
        samples, results = _run_texts(engine, texts, batch)
    else:
        samples = load_samples(inputs or [], engine.manifest.input)
        results = _run_samples(engine, samples, batch, offload)
    labels = engine.manifest.labels
    if json_output:
        rows = []
        for sample, result in zip(samples, results, strict=True):
            row: dict[str, object] = {"input": sample.name, **result.to_json()}
            if sample.true_class is not None:
                row["true_label"] = labels[sample.true_class] if sample.true_class < len(labels) else sample.true_class
            rows.append(row)
        typer.echo(json.dumps(rows, indent=2))
        return
    if offload is not None and offload.servers:
        from edgeexit.cli.render import offload_results_table

        console.print(offload_results_table(engine.manifest, samples, results))
        console.print(_offload_summary(results), highlight=False)
        return
    from edgeexit.cli.render import results_table

    console.print(results_table(engine.manifest, samples, results))


def _run_samples(engine: Engine, samples: list[Sample], batch: bool, offload: OffloadSettings | None) -> list[Result]:
    """Files' samples: locally, offloaded at a fixed split, or boundary by boundary under a policy
    (``--batch`` too: a policy decides per input)."""
    import numpy as np

    if offload is None:
        if batch:
            return engine.run_batch(np.stack([s.x for s in samples]))
        return [engine.run(s.x) for s in samples]
    from edgeexit.device.factory import build_runner  # grpc: only when offloading
    from edgeexit.device.policy_runner import PolicyRunner

    with build_runner(engine, offload, costs=_measured_costs(engine, samples, offload)) as device:
        runner = device.runner
        if isinstance(runner, PolicyRunner):
            if device.client is not None and offload.policy is not None and offload.policy.probes_first:
                runner.probe()  # one light round trip first: the RTT estimate starts from this link
            results = [runner.run(s.x, sample_id=s.name) for s in samples]
        elif batch:
            results = device.run_batch(np.stack([s.x for s in samples]))
        else:
            results = [device.run(s.x) for s in samples]
    reasons = Counter(r.offload.reason or "unknown" for r in results if r.offload is not None and r.offload.fallback)
    for reason, count in reasons.items():  # on stderr: --json keeps stdout pure JSON
        err_console.print(f"[yellow]fallback:[/] {count} input(s) finished on this device: {escape(reason)}",
                          highlight=False, soft_wrap=True)  # fmt: skip
    return results


def _measured_costs(engine: Engine, samples: list[Sample], offload: OffloadSettings) -> DeviceCosts | None:
    """A policy that weighs costs without --profile: segment latency measured here on the inputs,
    energy from the power and radio presets (None: the policy needs none, or reads its profile)."""
    import numpy as np

    from edgeexit.device.tails import default_codec
    from edgeexit.profile.record import modelled_costs

    policy = offload.policy
    if policy is None or not policy.weighs_costs or policy.profile is not None:
        return None
    segment_ms = engine.segment_latency(np.stack([s.x for s in samples[:16]]))
    return modelled_costs(engine.manifest, segment_ms, codec=default_codec(engine.manifest, offload.codec),
                          power=DEFAULT_POWER_PRESET, radio=DEFAULT_RADIO)  # fmt: skip


def _run_texts(engine: Engine, texts: list[str], batch: bool) -> tuple[list[Sample], list[Result]]:
    """Tokenize on the device with the package's own tokenizer, then run (padded to the longest
    text in a batch; one text alone is not padded)."""
    import numpy as np

    from edgeexit.runtime.inputs import Sample
    from edgeexit.runtime.text import TextEncoder

    encoder = TextEncoder.from_package(engine.package)
    samples = [Sample(text if len(text) <= 40 else text[:37] + "...", np.zeros(0)) for text in texts]
    if batch:
        return samples, engine.run_batch(encoder.encode(texts))
    return samples, [engine.run(encoder.encode([text])) for text in texts]


def _offload_summary(results: list[Result]) -> str:
    infos = [r.offload for r in results]
    offloaded = sum(1 for i in infos if i is not None and not i.fallback)
    fallback = sum(1 for i in infos if i is not None and i.fallback)
    first = next((i for i in infos if i is not None), None)
    where = f" at boundary {first.boundary} ({first.codec})" if first is not None else ""
    sent = sum(i.bytes_sent for i in infos if i is not None)
    return (
        f"offloaded {offloaded}, fallback {fallback}, exited before the split {infos.count(None)}{where}; "
        f"{sent:,} bytes sent"
    )


def calibrate(
    package: PackageDirArg,
    data: Annotated[
        str,
        typer.Option(
            help="Labelled validation data: a .npz (x, y), an image folder, or a built-in set; "
            "a text set (tweets, rotten-tomatoes) for a text encoder (tokenized with the package's tokenizer)."
        ),
    ],
    max_drop: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Accuracy the early exits may cost, as a fraction (0.01 = 1 point).")
    ] = 0.01,
    criterion: CriterionOpt = None,
    margin: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Standard errors of the accuracy drop kept in reserve, so --max-drop also holds on new data "
            "(0: spend the whole budget on this data set).",
        ),
    ] = 1.0,
    delta: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Certify instead (Learn-then-Test): the loss on new data exceeds --max-drop with probability at "
            "most DELTA (e.g. 0.1). Without it, the margin method (a heuristic, no guarantee).",
        ),
    ] = None,
    against: Annotated[
        str,
        typer.Option(
            help="With --delta, the certified loss: final (an early answer differs from the final exit's; no labels "
            "needed for it) or labels (the final exit is right and the early answer wrong). Both bound the drop."
        ),
    ] = "final",
    seed: Annotated[int, typer.Option(help="With --delta, seed of the split into ordering and testing samples.")] = 0,
    budget: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Compute budget instead: the most accurate thresholds whose expected latency is at most this "
            "fraction of full depth (from the segment times measured in the same pass), e.g. 0.5.",
        ),
    ] = None,
    budget_ms: Annotated[
        float | None,
        typer.Option(min=0.0, help="Compute budget in ms per sample instead of a fraction (--budget)."),
    ] = None,
    profile: Annotated[
        Path | None,
        typer.Option(
            help="Segment costs from this profile.json (`edgeexit profile PKG --json`: the device's own p50 "
            "latencies) instead of the ones timed during the calibration pass: repeatable, and the target's."
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="Split of a built-in data set to use.")] = "test",
    limit: Annotated[int | None, typer.Option(help="Use only the first N samples.")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Where to write the accuracy vs. expected-latency Pareto PNG.")
    ] = None,
    threads: ThreadsOpt = 1,
    backend: BackendOpt = "onnxruntime",
    precision: PrecisionOpt = "fp32",
    max_length: Annotated[int, typer.Option(min=2, help="Tokens per text of a text set.")] = 64,
) -> None:
    """Choose each exit's threshold and temperature on labelled data.

    Overall accuracy stays within --max-drop of the final exit (with --margin standard errors in
    reserve) while expected latency is lowest; with --delta, the drop (or the disagreement with the
    final exit) stays within --max-drop on new data with probability at least 1 - DELTA
    (Learn-then-Test), or the exits stay off when nothing can be certified; with --budget (or
    --budget-ms), accuracy is highest while expected latency stays within the budget. Rewrites the
    manifest atomically; the package_id (the weights) does not change.
    """
    from rich.markup import escape

    from edgeexit.calibration import calibrate_manifest, digest_data, pareto_for, plot_pareto
    from edgeexit.calibration.risk_control import AGAINST
    from edgeexit.cli.labelled import load_labelled
    from edgeexit.cli.render import calibration_table
    from edgeexit.errors import UsageError
    from edgeexit.package import require_directory
    from edgeexit.profile.record import load_profile, profiled_segment_ms
    from edgeexit.runtime.engine import Engine

    if against not in AGAINST:  # before the run, like everything the user typed
        raise UsageError(f"--against is {against!r}; expected one of {', '.join(AGAINST)}")
    chosen = [flag for flag, value in (("--delta", delta), ("--budget", budget), ("--budget-ms", budget_ms))
              if value is not None]  # fmt: skip
    if len(chosen) > 1:
        raise UsageError(f"{' and '.join(chosen)} are different ways to choose thresholds; give one")
    if budget == 0.0 or budget_ms == 0.0:
        raise UsageError("a compute budget of 0 leaves no time to run anything; expected a budget above 0")
    require_directory(package, "calibrate it")  # before the run: a tar's manifest cannot be rewritten
    engine = Engine(package, threads=threads, backend=backend, precision=precision)
    # a profile of another package is refused before the pass over the data
    profiled = None if profile is None else profiled_segment_ms(load_profile(profile), engine.manifest)
    x, y, source = load_labelled(data, split, limit, engine.package, max_length)
    full = engine.run_full(x)
    if profiled is not None:  # the device's own segment costs: what the budget and the ranking weigh
        full = dataclasses.replace(full, segment_ms=profiled)
    # A variant (int8, tflite) is calibrated on its own outputs, into its own exits.
    view = dataclasses.replace(engine.manifest, exits=engine.exits)
    manifest, choice = calibrate_manifest(
        view, full, y, criterion=criterion, max_drop=max_drop, data_sha256=digest_data(x, y), margin=margin,
        delta=delta, against=against, seed=seed,
        budget_ms=budget_ms if budget is None else budget * sum(full.segment_ms),
    )  # fmt: skip
    # `calibrate .` (or `..`) has no usable name: resolve it so the plot still lands next to the package.
    named = package if package.name not in ("", "..") else package.resolve()
    target = plot or named.with_name(f"{named.name}-pareto.png")
    curve, chosen = pareto_for(manifest, full, y)
    full_point = (sum(full.segment_ms), choice.final_accuracy)
    # The plot before the manifest: a plot path that cannot be written fails the command with the package untouched.
    try:
        plot_pareto(
            curve, chosen, full_point, target, criterion=manifest.calibration.criterion,  # type: ignore[union-attr]
            max_drop=max_drop, target_accuracy=choice.target_accuracy,
        )  # fmt: skip
        plotted = f"Pareto plot: {escape(str(target))}"
    except ImportError as err:
        plotted = f"no Pareto plot: {escape(str(err))}"  # keep the [plots] of the pip hint
    if engine.variant is not None:
        updated = engine.manifest.with_exits(manifest.exits, manifest.calibration, variant=engine.variant.name)
    else:
        updated = manifest
    engine.package.save_manifest(updated)
    console.print(calibration_table(manifest, choice, full.segment_ms))
    console.print(plotted)
    console.print(
        f"[green]calibrated[/] {escape(str(package))} on {len(y)} samples ({escape(source)})", highlight=False
    )
