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

from edgeexit.console import console

if TYPE_CHECKING:
    from edgeexit.policy import DeviceCosts, Policy
    from edgeexit.runtime.engine import Engine, Result
    from edgeexit.runtime.inputs import Sample
    from edgeexit.transport.client import TlsConfig

PackageArg = Annotated[
    Path, typer.Argument(help="Package directory written by `edgeexit export`, or a tar of one (`edgeexit pack`).")
]
#: calibrate rewrites the manifest, so it takes the directory (a tar would change only its cache entry).
PackageDirArg = Annotated[Path, typer.Argument(help="Package directory written by `edgeexit export`.")]
CriterionOpt = Annotated[
    str | None,
    typer.Option(help="Exit criterion for every early exit: max_prob, margin, entropy, patience, similarity."),
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
#: Without --profile, the radio preset the costs assume (when edgeexit.profile.record has it).
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
    from edgeexit.runtime.engine import Engine
    from edgeexit.runtime.inputs import load_samples

    if bool(inputs) == bool(texts):
        raise typer.BadParameter("give input files, or --text for a package with a tokenizer (not both)")
    split_at = _parse_split(split)
    _check_policy_options(policy, split, server, profile, objective, energy_budget_j, latency_slo_ms, decision_log)
    offload = _offload_settings(server, split, codec, token_file, tls_ca, tls_cert, tls_key, policy=policy)
    engine = Engine(package, threads=threads, criterion=criterion, threshold=threshold, backend=backend,
                    precision=precision)  # fmt: skip
    if texts:
        if offload is not None or policy is not None:
            raise typer.BadParameter("text models run on the device only: offload of context inputs is not built yet")
        samples, results = _run_texts(engine, texts, batch)
    else:
        samples = load_samples(inputs or [], engine.manifest.input)
        results = _run_samples(engine, samples, batch, offload, policy, server, split_at, codec, timeout_ms, profile,
                               objective, energy_budget_j, latency_slo_ms, decision_log)  # fmt: skip
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
    if offload is not None:
        from edgeexit.cli.render import offload_results_table

        console.print(offload_results_table(engine.manifest, samples, results))
        console.print(_offload_summary(results), highlight=False)
        return
    from edgeexit.cli.render import results_table

    console.print(results_table(engine.manifest, samples, results))


def _run_samples(
    engine: Engine,
    samples: list[Sample],
    batch: bool,
    offload: tuple[str | None, TlsConfig | None] | None,
    policy: str | None,
    server: list[str] | None,
    split_at: int | None,
    codec: str | None,
    timeout_ms: float,
    profile: Path | None,
    objective: str,
    energy_budget_j: float | None,
    latency_slo_ms: float | None,
    decision_log: Path | None,
) -> list[Result]:
    """Files' samples: locally, offloaded at a fixed split, or boundary by boundary under a policy."""
    if policy is not None:
        token, tls = offload if offload is not None else (None, None)
        chosen = _policy(engine, samples, policy, profile, codec, objective, energy_budget_j, latency_slo_ms)
        return _run_policy(engine, samples, server, chosen, codec, timeout_ms, decision_log, token=token, tls=tls)
    if offload is not None and server and split_at is not None:
        token, tls = offload
        return _run_offloaded(engine, samples, batch, server, split_at, codec, timeout_ms, token=token, tls=tls)
    if batch:
        import numpy as np

        return engine.run_batch(np.stack([s.x for s in samples]))
    return [engine.run(s.x) for s in samples]


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


def _parse_split(split: str | None) -> int | None:
    """``--split``: a boundary K, or ``input`` (boundary -1: the input tail runs the whole model)."""
    from edgeexit.errors import EdgeExitError

    if split is None:
        return None
    text = split.strip().lower()
    if text == "input":
        return -1
    if not text.isdigit():
        raise EdgeExitError(f"--split {split!r}: expected a boundary K (0, 1, ...) or 'input'")
    return int(text)


def _check_policy_options(
    policy: str | None,
    split: str | None,
    server: list[str] | None,
    profile: Path | None,
    objective: str,
    energy_budget_j: float | None,
    latency_slo_ms: float | None,
    decision_log: Path | None,
) -> None:
    from edgeexit.errors import EdgeExitError

    if policy is None:
        given = {
            "--profile": profile,
            "--energy-budget-j": energy_budget_j,
            "--latency-slo-ms": latency_slo_ms,
            "--decision-log": decision_log,
            "--objective": None if objective == "latency" else objective,
        }
        extra = [name for name, value in given.items() if value is not None]
        if extra:
            verb = "applies" if len(extra) == 1 else "apply"
            raise EdgeExitError(f"{', '.join(extra)} only {verb} with --policy (local, split@K, best-static, adaptive)")
        return
    if split is not None:
        raise EdgeExitError(f"--split {split} and --policy {policy} both choose where to offload: give one "
                            f"(--split {split} is --policy split@{split})")  # fmt: skip
    if not server and policy.strip() != "local":
        raise EdgeExitError(
            f"--policy {policy} offloads to a tail server, but no --server HOST:PORT was given: add --server "
            "(e.g. --server 127.0.0.1:8001, where `edgeexit serve PACKAGE` listens) or use --policy local"
        )


def _policy(
    engine: Engine,
    samples: list[Sample],
    name: str,
    profile: Path | None,
    codec: str | None,
    objective: str,
    energy_budget_j: float | None,
    latency_slo_ms: float | None,
) -> Policy:
    """The policy by name, with the device's costs when it weighs them (or a profile was given)."""
    from edgeexit.policy import Objective, create_policy

    goal = Objective(kind=objective, energy_budget_j=energy_budget_j, latency_slo_ms=latency_slo_ms)  # type: ignore[arg-type]
    needs_costs = name.strip() in ("best-static", "adaptive") or profile is not None
    costs = _device_costs(engine, samples, profile, _policy_codec(engine, codec)) if needs_costs else None
    return create_policy(name, costs, goal)


def _policy_codec(engine: Engine, codec: str | None) -> str:
    from edgeexit.device.tails import PREFERRED_CODECS

    if codec is not None:
        return codec
    have = {t.codec for t in engine.manifest.tails}
    return next((c for c in PREFERRED_CODECS if c in have), "fp16")


def _device_costs(engine: Engine, samples: list[Sample], profile: Path | None, codec: str) -> DeviceCosts:
    """From ``--profile`` (edgeexit.profile.record), else measured here with a power preset."""
    from edgeexit.errors import EdgeExitError

    if profile is not None:
        try:
            from edgeexit.profile.record import device_costs, load_profile
        except ImportError as err:
            raise EdgeExitError(
                f"--profile needs edgeexit.profile.record, which this installation lacks ({err}); "
                "drop --profile to measure the segments here"
            ) from None
        return device_costs(load_profile(profile), engine.manifest, codec=codec)
    import numpy as np

    from edgeexit.policy import DeviceCosts
    from edgeexit.profile.power import get_preset

    preset = get_preset(DEFAULT_POWER_PRESET)
    segment_ms = engine.segment_latency(np.stack([s.x for s in samples[:16]]))
    radio = None
    try:
        from edgeexit.profile.record import cost_radio

        radio = cost_radio(DEFAULT_RADIO)
    except (ImportError, EdgeExitError):
        pass  # no radio model: the upload's energy counts only the idle power while waiting
    return DeviceCosts.from_manifest(engine.manifest, segment_ms, codec=codec, active_w=preset.active_w,
                                     idle_w=preset.idle_w, radio=radio)  # fmt: skip


def _run_policy(
    engine: Engine,
    samples: list[Sample],
    server: list[str] | None,
    policy: Policy,
    codec: str | None,
    timeout_ms: float,
    decision_log: Path | None,
    *,
    token: str | None,
    tls: TlsConfig | None,
) -> list[Result]:
    """Every input through a PolicyRunner (``--batch``: still decided per input)."""
    from contextlib import ExitStack

    from edgeexit.console import err_console
    from edgeexit.device import PolicyRunner, TailClient

    with ExitStack() as stack:
        client = None
        if server:
            client = stack.enter_context(TailClient(server, timeout_s=timeout_ms / 1e3, token=token, tls=tls))
        runner = stack.enter_context(
            PolicyRunner(engine, client, policy, codec=_policy_codec(engine, codec), decision_log=decision_log)
        )
        if client is not None and policy.name in ("best-static", "adaptive"):
            runner.probe()  # one light round trip first: the RTT estimate starts from this link
        results = [runner.run(s.x, sample_id=s.name) for s in samples]  # --batch too: decisions are per input
    reasons = Counter(r.offload.reason or "unknown" for r in results if r.offload is not None and r.offload.fallback)
    for reason, count in reasons.items():  # on stderr: --json keeps stdout pure JSON
        err_console.print(f"[yellow]fallback:[/] {count} input(s) finished on this device: {escape(reason)}",
                          highlight=False, soft_wrap=True)  # fmt: skip
    return results


def _offload_settings(
    server: list[str] | None,
    split: str | None,
    codec: str | None,
    token_file: Path | None,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    *,
    policy: str | None = None,
) -> tuple[str | None, TlsConfig | None] | None:
    """Check the offload options together, before loading anything: (token, TLS), or None when
    not offloading."""
    from edgeexit.errors import EdgeExitError

    given = {"--codec": codec, "--token-file": token_file, "--tls-ca": tls_ca, "--tls-cert": tls_cert,
             "--tls-key": tls_key}  # fmt: skip
    if not server:
        if split is not None:
            raise EdgeExitError(
                f"--split {split} offloads to a tail server, but no --server HOST:PORT was given: add --server "
                "(e.g. --server 127.0.0.1:8001, where `edgeexit serve PACKAGE` listens) or drop --split"
            )
        extra = [name for name, value in given.items() if value is not None]
        if extra:
            verb = "applies" if len(extra) == 1 else "apply"
            raise EdgeExitError(f"{', '.join(extra)} only {verb} when offloading: add --server HOST:PORT and --split K")
        return None
    if split is None and policy is None:
        raise EdgeExitError(
            "--server needs --split K: the boundary after which inputs not yet exited are offloaded "
            "(0 .. segments-2; `edgeexit inspect PACKAGE` lists the segments and tails)"
        )
    token = None
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            reason = getattr(err, "strerror", None) or err
            raise EdgeExitError(f"cannot read the token file {token_file}: {reason}; expected the token") from None
    tls = None
    if any(p is not None for p in (tls_ca, tls_cert, tls_key)):
        from edgeexit.transport.client import TlsConfig

        tls = TlsConfig(ca=tls_ca, cert=tls_cert, key=tls_key)
    return token, tls


def _run_offloaded(
    engine: Engine,
    samples: list[Sample],
    batch: bool,
    server: list[str],
    split: int,
    codec: str | None,
    timeout_ms: float,
    *,
    token: str | None,
    tls: TlsConfig | None,
) -> list[Result]:
    import numpy as np

    from edgeexit.console import err_console
    from edgeexit.device import OffloadRunner, TailClient

    with TailClient(server, timeout_s=timeout_ms / 1e3, token=token, tls=tls) as client:
        runner = OffloadRunner(engine, client, split=split, codec=codec)
        results = runner.run_batch(np.stack([s.x for s in samples])) if batch else [runner.run(s.x) for s in samples]
    reasons = Counter(r.offload.reason or "unknown" for r in results if r.offload is not None and r.offload.fallback)
    for reason, count in reasons.items():  # on stderr: --json keeps stdout pure JSON
        err_console.print(f"[yellow]fallback:[/] {count} input(s) finished on this device: {escape(reason)}",
                          highlight=False, soft_wrap=True)  # fmt: skip
    return results


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
            "tweets for a text encoder (tokenized with the package's tokenizer)."
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
    split: Annotated[str, typer.Option(help="Split of a built-in data set to use.")] = "test",
    limit: Annotated[int | None, typer.Option(help="Use only the first N samples.")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Where to write the accuracy vs. expected-latency Pareto PNG.")
    ] = None,
    threads: ThreadsOpt = 1,
    backend: BackendOpt = "onnxruntime",
    precision: PrecisionOpt = "fp32",
    max_length: Annotated[int, typer.Option(min=2, help="Tokens per text for --data tweets.")] = 64,
) -> None:
    """Choose each exit's threshold and temperature on labelled data.

    Overall accuracy stays within --max-drop of the final exit (with --margin standard errors in
    reserve) while expected latency is lowest. Rewrites the manifest atomically; the package_id
    (the weights) does not change.
    """
    from rich.markup import escape

    from edgeexit.calibration import calibrate_manifest, digest_data, pareto_for, plot_pareto
    from edgeexit.cli.labelled import load_labelled
    from edgeexit.cli.render import calibration_table
    from edgeexit.package import require_directory
    from edgeexit.runtime.engine import Engine

    require_directory(package, "calibrate it")  # before the run: a tar's manifest cannot be rewritten
    engine = Engine(package, threads=threads, backend=backend, precision=precision)
    x, y, source = load_labelled(data, split, limit, engine.package, max_length)
    full = engine.run_full(x)
    # A variant (int8, tflite) is calibrated on its own outputs, into its own exits.
    view = dataclasses.replace(engine.manifest, exits=engine.exits)
    manifest, choice = calibrate_manifest(
        view, full, y, criterion=criterion, max_drop=max_drop, data_sha256=digest_data(x, y), margin=margin
    )
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
