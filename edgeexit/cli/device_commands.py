"""Commands that run a package on the device: run, calibrate. ONNX Runtime and numpy only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edgeexit.console import console

PackageArg = Annotated[Path, typer.Argument(help="Package directory written by `edgeexit export`.")]
CriterionOpt = Annotated[
    str | None,
    typer.Option(help="Exit criterion for every early exit: max_prob, margin, entropy, patience, similarity."),
]
ThreadsOpt = Annotated[int, typer.Option(min=1, help="ONNX Runtime intra-op threads per segment.")]


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.command()(calibrate)


def run(
    package: PackageArg,
    inputs: Annotated[list[Path], typer.Argument(help=".npy / .npz (x, optional y) or image files.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    criterion: CriterionOpt = None,
    threshold: Annotated[float | None, typer.Option(help="Threshold for every early exit.")] = None,
    threads: ThreadsOpt = 1,
    batch: Annotated[bool, typer.Option(help="Run all inputs as one batch (batched early exit).")] = False,
) -> None:
    """Run inputs through a package, stopping each at its first confident exit."""
    from edgeexit.cli.render import results_table
    from edgeexit.runtime.engine import Engine
    from edgeexit.runtime.inputs import load_samples

    engine = Engine(package, threads=threads, criterion=criterion, threshold=threshold)
    samples = load_samples(inputs, engine.manifest.input)
    if batch:
        import numpy as np

        results = engine.run_batch(np.stack([s.x for s in samples]))
    else:
        results = [engine.run(s.x) for s in samples]
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
    console.print(results_table(engine.manifest, samples, results))


def calibrate(
    package: PackageArg,
    data: Annotated[
        str, typer.Option(help="Labelled validation data: a .npz (x, y), an image folder, or a built-in set.")
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
) -> None:
    """Choose each exit's threshold and temperature on labelled data.

    Overall accuracy stays within --max-drop of the final exit (with --margin standard errors in
    reserve) while expected latency is lowest. Rewrites the manifest atomically; the package_id
    (the weights) does not change.
    """
    from rich.markup import escape

    from edgeexit.calibration import calibrate_manifest, digest_data, pareto_for, plot_pareto
    from edgeexit.cli.render import calibration_table
    from edgeexit.data import load_dataset
    from edgeexit.runtime.engine import Engine
    from edgeexit.runtime.inputs import prepare_dataset

    engine = Engine(package, threads=threads)
    dataset = load_dataset(data, split=split)
    if limit:
        dataset = dataset.head(limit)
    x, y = prepare_dataset(dataset, engine.manifest)
    full = engine.run_full(x)
    manifest, choice = calibrate_manifest(
        engine.manifest, full, y, criterion=criterion, max_drop=max_drop, data_sha256=digest_data(x, y), margin=margin
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
    engine.package.save_manifest(manifest)
    console.print(calibration_table(manifest, choice, full.segment_ms))
    console.print(plotted)
    console.print(
        f"[green]calibrated[/] {escape(str(package))} on {len(y)} samples ({escape(dataset.source)})", highlight=False
    )
