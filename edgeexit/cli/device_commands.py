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
