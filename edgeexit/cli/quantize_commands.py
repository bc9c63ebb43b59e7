"""``edgeexit quantize``: int8 segments calibrated on real data, with what they cost in accuracy.

A workstation step (onnx and onnxruntime.quantization, no torch of its own). The runtime picks
the result with ``--precision int8``. Text encoders take ``--data tweets`` (the labelled tweets of
``edgeexit.data.tweets``, tokenized with the package's own tokenizer).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from edgeexit.cli.labelled import load_labelled
from edgeexit.console import console, table
from edgeexit.manifest import NEVER_THRESHOLD

if TYPE_CHECKING:
    from rich.table import Table

    from edgeexit.compile.quantize import QuantizeReport


def register(app: typer.Typer) -> None:
    app.command()(quantize)


def quantize(
    package: Annotated[Path, typer.Argument(help="Package directory written by `edgeexit export`.")],
    data: Annotated[
        str,
        typer.Option(
            help="Labelled data (as `edgeexit calibrate --data`): a .npz (x, y), an image folder, or a built-in set "
            "(digits, fashion-mnist, mnist-5k, builtin; tweets or rotten-tomatoes for a text encoder). "
            "Its first --samples calibrate the activation ranges (static mode), all of it the int8 exits' thresholds."
        ),
    ],
    eval_data: Annotated[
        str | None,
        typer.Option(help="Labelled data to measure each exit's fp32 vs int8 accuracy on (default: --data)."),
    ] = None,
    samples: Annotated[
        int, typer.Option(min=1, help="Samples whose activations set the int8 ranges (fed through the fp32 segments).")
    ] = 128,
    per_channel: Annotated[
        bool, typer.Option("--per-channel/--per-tensor", help="One weight scale per output channel, or per tensor.")
    ] = True,
    max_drop: Annotated[
        float | None,
        typer.Option(
            min=0.0, max=1.0, help="Accuracy the int8 early exits may cost (default: the manifest's calibration's)."
        ),
    ] = None,
    criterion: Annotated[
        str | None, typer.Option(help="Exit criterion for the int8 exits (default: each exit's own).")
    ] = None,
    margin: Annotated[
        float | None,
        typer.Option(min=0.0, help="Standard errors kept in reserve (default: the manifest's calibration's, else 1)."),
    ] = None,
    split: Annotated[str, typer.Option(help="Split of a built-in --data set.")] = "test",
    eval_split: Annotated[str, typer.Option(help="Split of a built-in --eval-data set.")] = "test",
    limit: Annotated[int | None, typer.Option(min=1, help="Use only the first N samples of each data set.")] = None,
    threads: Annotated[int, typer.Option(min=1, help="ONNX Runtime intra-op threads (timings: batch 1).")] = 1,
    keep_fp32: Annotated[
        str | None,
        typer.Option(
            "--keep-fp32",
            help="Segments the int8 variant runs in fp32 (comma-separated indices, e.g. 0,1): mixed precision.",
        ),
    ] = None,
    auto: Annotated[
        bool,
        typer.Option(
            "--auto",
            help="Also keep in fp32 every segment whose int8 graph is not faster at batch 1 or alone drops the "
            "final exit's agreement with fp32 below --min-agreement.",
        ),
    ] = False,
    min_agreement: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="--auto: final-exit agreement a segment's int8 graph must keep.")
    ] = 0.98,
    mode: Annotated[
        str | None,
        typer.Option(help="static or dynamic (default: static for image models, dynamic for text encoders)."),
    ] = None,
    max_length: Annotated[int, typer.Option(min=2, help="Tokens per text of a text set.")] = 64,
    scheme: Annotated[
        str | None,
        typer.Option(
            help="Integer types: s8s8-7bit (static default), u8u8 (dynamic default), u8s8-7bit; s8s8 and u8s8 "
            "may saturate on x86 without VNNI and are refused where they do."
        ),
    ] = None,
) -> None:
    """Quantize the package's segments to int8 (ONNX Runtime: static QDQ for images, dynamic for text).

    Segment k's activation ranges come from boundary k-1's real hidden tensors (the fp32 segments
    run on --data). Adds the int8 segments under int8/ with their own calibrated thresholds;
    the package_id does not change. The scheme's integer arithmetic is exact on every CPU; this
    machine's kernels are checked against it and the exact outputs stored for `edgeexit verify`.
    A failed run leaves the package as it was.
    """
    from edgeexit.compile.quantize import QuantizeOptions, quantize_package
    from edgeexit.package import open_package, require_directory

    require_directory(package, "add int8 segments")
    opened = open_package(package)
    kept = _segments(keep_fp32)
    x, y, source = load_labelled(data, split, limit, opened, max_length)
    eval_x = eval_y = None
    eval_source = None
    if eval_data is not None:
        eval_x, eval_y, eval_source = load_labelled(eval_data, eval_split, limit, opened, max_length)
    options = QuantizeOptions(
        samples=samples, per_channel=per_channel, max_drop=max_drop, criterion=criterion, margin=margin,
        threads=threads, data_source=source, eval_source=eval_source, keep_fp32=kept, auto=auto,
        min_agreement=min_agreement, mode=mode, scheme=scheme,
    )  # fmt: skip
    report = quantize_package(opened, x, y, options, eval_x=eval_x, eval_y=eval_y)
    console.print(accuracy_change_table(report))
    console.print(f"accuracy measured on: {escape(report.eval_source)}", highlight=False)
    console.print(latency_table(report))
    console.print(thresholds_table(report))
    kernels, scheme = report.variant.report["kernel_check"], report.variant.report["scheme"]
    console.print(
        f"int8 scheme {scheme['name']}: this CPU's kernels ({escape(kernels['machine'].split('int8 features: ')[-1])}) "
        f"match exact integer arithmetic within {kernels['max_error_here']:.2%} of each output's range "
        f"(tolerance {kernels['tolerance']:.0%}); {kernels['file']} holds the exact outputs for verify",
        highlight=False,
    )
    int8 = [f for f in report.variant.files if f.startswith("int8/")]
    mixed = f", segment(s) {', '.join(map(str, report.kept_fp32))} kept fp32" if report.kept_fp32 else ""
    console.print(
        f"[green]quantized[/] {escape(str(package))}: {len(int8)} int8 segment(s) in int8/{mixed}, package_id "
        f"{report.package.manifest.package_id} (unchanged); run them with --precision int8",
        highlight=False,
    )


def _segments(text: str | None) -> tuple[int, ...]:
    """``--keep-fp32 0,2`` as segment indices."""
    from edgeexit.errors import UsageError

    if not text:
        return ()
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(
            f"--keep-fp32 {text!r} is not a list of segment indices; expected e.g. --keep-fp32 0,1"
        ) from None


def _pct(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.2f}%"


def accuracy_change_table(report: QuantizeReport) -> Table:
    """Per exit: full-depth accuracy in fp32 and int8, the change in points, top-1 agreement."""
    rows = [
        (
            c.exit,
            _pct(c.fp32),
            _pct(c.int8),
            None if c.change is None else f"{100 * c.change:+.2f}",
            _pct(c.agreement),
        )
        for c in report.exits
    ]
    title = f"int8 vs fp32 accuracy per exit, every sample judged there ({report.eval_samples} samples)"
    return table(title, ["exit", "fp32 accuracy", "int8 accuracy", "change (points)", "same prediction"], rows)


def latency_table(report: QuantizeReport) -> Table:
    """Per segment: batch-1 fp32 and int8 latency, sizes, which build the variant runs and why, and the
    final exit's agreement with fp32 when that segment alone runs int8."""
    runs = {c.segment: c for c in report.choices}
    rows: list[tuple[object, ...]] = []
    for t in report.segments:
        choice = runs.get(t.segment)
        rows.append(
            (
                t.segment,
                f"{t.fp32_ms:.4f}",
                f"{t.int8_ms:.4f}",
                f"{t.ratio:.2f}x",
                f"{t.fp32_bytes / 1024:.1f}",
                f"{t.int8_bytes / 1024:.1f}",
                None if choice is None else f"{choice.precision}: {choice.reason}",
                None if choice is None else _pct(choice.alone_agreement),
            )
        )
    fp32 = sum(t.fp32_ms for t in report.segments)
    int8 = sum(t.int8_ms for t in report.segments)
    mixed = sum(t.fp32_ms if t.segment in report.kept_fp32 else t.int8_ms for t in report.segments)
    ratio = f"{int8 / fp32:.2f}x" if fp32 else None
    rows.append(("all", f"{fp32:.4f}", f"{int8:.4f}", ratio, None, None, f"variant: {mixed:.4f} ms", None))
    title = "segment latency, batch 1, median, fp32 and int8 measured alternately (int8/fp32 < 1: int8 pays)"
    columns = [
        "segment",
        "fp32 ms",
        "int8 ms",
        "int8/fp32",
        "fp32 KiB",
        "int8 KiB",
        "variant runs",
        "int8 alone: final agreement",
    ]
    return table(title, columns, rows)


def thresholds_table(report: QuantizeReport) -> Table:
    """The int8 exits' new calibration next to the fp32 thresholds they replace."""
    manifest = report.package.manifest
    record = report.variant.calibration
    assert record is not None
    rows = []
    for old, new, measured in zip(manifest.exits, report.variant.exits, record.exits, strict=True):
        never = new.threshold >= NEVER_THRESHOLD
        rows.append(
            (
                new.index,
                new.criterion,
                "final" if old.final else ("never" if old.threshold >= NEVER_THRESHOLD else f"{old.threshold:.4f}"),
                "final" if new.final else ("never" if never else f"{new.threshold:.4f}"),
                f"{new.temperature:.3f}",
                f"{100 * measured.exit_rate:.1f}%",
                _pct(measured.accuracy),
            )
        )
    title = (
        f"int8 calibration (max drop {100 * record.max_drop:g} pt, {record.margin:g} s.e. in reserve, "
        f"{record.samples} samples): accuracy {100 * record.accuracy:.2f}% vs int8 final exit "
        f"{100 * record.final_accuracy:.2f}%, expected {record.expected_latency_ms:.4f} ms"
    )
    return table(
        title, ["exit", "criterion", "fp32 threshold", "int8 threshold", "temperature", "exit rate", "accuracy there"],
        rows,
    )  # fmt: skip
