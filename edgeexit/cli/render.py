"""Tables the commands print, built from the API's records. The ones ``edgeexit demo`` prints too
(per-exit accuracy, parity, segments) live in ``edgeexit.reports`` and are imported from there."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from edgeexit.console import table
from edgeexit.manifest import NEVER_THRESHOLD, CalibrationRecord, Manifest
from edgeexit.reports import accuracy_table, criterion_label, parity_table, segments_table, shape_text


def tails_table(manifest: Manifest) -> Table:
    """The offload tails: what each takes, its bytes per sample on the wire, and its parity at export."""
    measured = {r.get("model"): r for r in manifest.metadata.get("export", {}).get("tails", []) if isinstance(r, dict)}
    rows = []
    for tail in manifest.tails:
        segment = manifest.segments[tail.boundary]
        hidden = segment.output(segment.hidden) if segment.hidden else None
        record = measured.get(tail.model, {})
        agreement = record.get("agreement")
        rows.append(
            (
                tail.model,
                tail.boundary,
                tail.codec,
                shape_text(hidden.shape, len(segment.carries)) if hidden and tail.boundary >= 0 else "-",
                tail.encoded_bytes,
                f"{tail.encoded_bytes / segment.hidden_bytes:.2f}"
                if tail.encoded_bytes and segment.hidden_bytes
                else None,
                f"{record['max_abs_diff']:.2e}" if "max_abs_diff" in record else None,
                f"{100 * agreement:.1f}%" if agreement is not None else None,
                record.get("tolerance"),
            )
        )
    return table(
        f"tails/: {len(rows)} Triton model(s), input = boundary tensor encoded, output = final logits",
        ["tail", "boundary", "codec", "hidden", "bytes/sample", "of fp32", "max |diff| vs local", "top-1 agree",
         "held to"],
        rows,
    )  # fmt: skip


def _result_row(labels: Sequence[str], sample: object, result: object) -> tuple[object, ...]:
    """input, prediction, true class, exit, score, ms: the columns every run table starts with."""
    true = sample.true_class  # type: ignore[attr-defined]
    return (
        sample.name,  # type: ignore[attr-defined]
        result.label if result.label is not None else "(no classifier)",  # type: ignore[attr-defined]
        None if true is None else (labels[true] if true < len(labels) else true),
        result.exit,  # type: ignore[attr-defined]
        f"{result.score:.3f}",  # type: ignore[attr-defined]
        f"{result.latency_ms:.3f}",  # type: ignore[attr-defined]
    )


_RESULT_COLUMNS = ["input", "prediction", "true", "exit", "score", "ms"]


def results_table(manifest: Manifest, samples: Sequence[object], results: Sequence[object]) -> Table:
    """``samples`` are runtime.inputs.Sample, ``results`` runtime.engine.Result (same order)."""
    rows = [_result_row(manifest.labels, s, r) for s, r in zip(samples, results, strict=True)]
    return table(f"{manifest.model_name}: {len(rows)} input(s)", _RESULT_COLUMNS, rows)


def calibration_method(record: CalibrationRecord) -> str:
    """How the thresholds were chosen and what that promises, in one line."""
    found = record.guarantee
    if record.budget_ms is not None:
        return f"compute budget {record.budget_ms:.4g} ms per sample, most accurate within it, {record.samples} samples"
    if found is None:
        return f"max drop {100 * record.max_drop:g} pt, {record.margin:g} s.e. in reserve, {record.samples} samples"
    loss = "disagreement with the final exit" if found.against == "final" else "drop against the labels"
    promise = (f"Learn-then-Test: P({loss} > {100 * found.eps:g} pt) <= {found.delta:g} on new data, "
               f"{record.samples} samples ({found.tested} testing)")  # fmt: skip
    if not found.certified:
        return f"{promise}; no early exit could be certified at this many samples: full depth"
    return f"{promise}; {100 * found.loss:.2f} pt here, {100 * found.bound:.2f} pt at most (1 - delta)"


def calibration_table(manifest: Manifest, choice: object, segment_ms: Sequence[float]) -> Table:
    """Per exit: criterion, threshold, temperature, exit rate and accuracy of those that exit."""
    record = manifest.calibration
    assert record is not None
    rows = []
    for spec, exit_record in zip(manifest.exits, record.exits, strict=True):
        never = spec.threshold >= NEVER_THRESHOLD
        rows.append(
            (
                spec.index,
                criterion_label(spec),
                "final" if spec.final else ("never" if never else f"{spec.threshold:.4f}"),
                f"{spec.temperature:.3f}",
                f"{100 * exit_record.exit_rate:.1f}%",
                f"{100 * exit_record.accuracy:.2f}%",
                f"{segment_ms[spec.segment]:.3f}",
            )
        )
    full_ms = sum(segment_ms)
    title = (
        f"calibration ({calibration_method(record)}): accuracy "
        f"{100 * record.accuracy:.2f}% vs final exit {100 * record.final_accuracy:.2f}%, expected "
        f"{record.expected_latency_ms:.3f} ms vs full depth {full_ms:.3f} ms "
        f"({full_ms / record.expected_latency_ms:.2f}x)"
    )
    return table(
        title, ["exit", "criterion", "threshold", "temperature", "exit rate", "accuracy there", "segment ms"], rows
    )


def offload_results_table(manifest: Manifest, samples: Sequence[object], results: Sequence[object]) -> Table:
    """``results_table`` plus how each input reaching the split was answered: offloaded (by which
    server, bytes sent, transfer ms) or fallback (finished on the device); "-" for a local exit."""
    rows = []
    for sample, result in zip(samples, results, strict=True):
        info = result.offload  # type: ignore[attr-defined]
        rows.append(
            (
                *_result_row(manifest.labels, sample, result),
                None if info is None else ("fallback" if info.fallback else "offloaded"),
                None if info is None or info.fallback else info.server,
                None if info is None else f"{info.bytes_sent:,}",
                None if info is None else f"{info.transfer_ms:.3f}",
            )
        )
    return table(
        f"{manifest.model_name}: {len(rows)} input(s)",
        [*_RESULT_COLUMNS, "offload", "server", "bytes sent", "transfer ms"],
        rows,
    )


__all__ = [
    "accuracy_table",
    "calibration_table",
    "offload_results_table",
    "parity_table",
    "results_table",
    "segments_table",
    "tails_table",
]
