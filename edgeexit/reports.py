"""Tables of what the toolkit measured, built from the API's records: per-exit accuracy, the
parity of the exported graphs, a package's segments.

A library module, not the CLI's: ``edgeexit demo`` (in ``edgeexit.compile``) prints them as the
commands do, and the library never imports the CLI. ``edgeexit.cli.render`` builds the
commands' other tables on the same ``edgeexit.console.table``.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from edgeexit.console import table
from edgeexit.manifest import LEARNED_CRITERION, ExitSpec, Manifest
from edgeexit.parity import ParityCheck


def accuracy_table(title: str, rows: Sequence[object]) -> Table:
    """``rows`` are ExitAccuracy records (from edgeexit.compile.training)."""
    return table(
        title,
        ["exit", "boundary", "head", "accuracy"],
        [
            (r.exit, r.boundary, r.head or "(none)", None if r.accuracy is None else f"{100 * r.accuracy:.2f}%")  # type: ignore[attr-defined]
            for r in rows
        ],
    )


def parity_table(title: str, checks: Sequence[ParityCheck]) -> Table:
    return table(
        title,
        ["graph", "output", "max |diff|", "ok"],
        [(c.graph, c.output, f"{c.max_abs_diff:.2e}", "yes" if c.ok else "NO") for c in checks],
    )


def criterion_label(spec: ExitSpec) -> str:
    """An exit's criterion, and for a learned one whether its gate is trained (on how many
    samples) and where it runs (in the graph, or numpy on the device)."""
    if spec.criterion != LEARNED_CRITERION or spec.final:
        return spec.criterion
    if spec.gate is None:
        return "learned (untrained: never exits)"
    where = "in graph" if spec.gate_inputs and spec.score else "numpy"
    return f"learned (gate of {spec.gate.samples} samples, {where})"


def shape_text(dims: Sequence[int | None], more: int = 0) -> str:
    """``Nx16x7x7``, and ``+ 2 more`` when a boundary carries further tensors (hidden KiB counts them all)."""
    text = "x".join("N" if d is None else str(d) for d in dims)
    return f"{text} + {more} more" if more else text


def segments_table(manifest: Manifest) -> Table:
    rows = []
    for segment in manifest.segments:
        spec = manifest.exit_of_segment(segment.index)
        hidden = segment.output(segment.hidden) if segment.hidden else None
        taken = len(manifest.segments[segment.index - 1].carries) if segment.index else 0
        rows.append(
            (
                segment.index,
                segment.file,
                shape_text(segment.inputs[0].shape, taken),
                shape_text(hidden.shape, len(segment.carries)) if hidden else "-",
                f"{segment.hidden_bytes / 1024:.1f}" if segment.hidden_bytes else "-",
                f"{segment.flops / 1e6:.2f}",
                f"{segment.params:,}",
                spec.head if spec else "-",
                criterion_label(spec) if spec else "-",
                f"{spec.threshold:.3f}" if spec else "-",
            )
        )
    return table(
        f"{manifest.model_name}  package_id {manifest.package_id}",
        [
            "seg",
            "file",
            "input",
            "hidden",
            "hidden KiB/sample",
            "MFLOPs",
            "params",
            "exit head",
            "criterion",
            "threshold",
        ],
        rows,
    )


__all__ = ["accuracy_table", "criterion_label", "parity_table", "segments_table"]
