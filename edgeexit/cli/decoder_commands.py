"""Decoder LLM commands: ``export`` of a decoder (called from ``edgeexit export``) and ``generate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from edgeexit.console import console

if TYPE_CHECKING:
    from edgeexit.compile.decoders.export import DecoderSource


def register(app: typer.Typer) -> None:
    app.command()(generate)


def export_decoder_command(source: DecoderSource, out: Path, *, boundaries: str | None, force: bool) -> None:
    from edgeexit.compile.decoders.export import export_decoder
    from edgeexit.errors import ExportError

    chosen = None
    if boundaries:
        try:
            chosen = [int(part) for part in boundaries.split(",")]
        except ValueError:
            raise ExportError(f"--boundaries {boundaries!r}: expected layer counts, e.g. 6,12,18,24,30") from None
    package = export_decoder(source, out, boundaries=chosen, overwrite=force)
    manifest = package.manifest
    table = Table(title="parity: ONNX Runtime vs PyTorch (largest |difference|, relative to the largest |value|)")
    for column in ("graph", "max |diff|", "max |value|", "relative"):
        table.add_column(column, justify="left" if column == "graph" else "right")
    for row in manifest.reference.get("graphs", []):
        table.add_row(row["graph"], f"{row['max_abs_diff']:.3g}", f"{row['max_abs']:.4g}",
                      f"{row['max_abs_diff'] / max(row['max_abs'], 1.0):.2g}")  # fmt: skip
    console.print(table)
    greedy = manifest.reference.get("greedy", [])
    same = sum(bool(row["identical"]) for row in greedy)
    console.print(f"greedy continuations identical to transformers' generate on {same} of {len(greedy)} prompts")
    segments = ", ".join(f"{s.first_layer}-{s.stop_layer - 1}" for s in manifest.segments)
    seconds = manifest.metadata.get("export", {}).get("seconds", 0.0)
    console.print(f"[green]exported[/] {out}: embedding, layer groups {segments}, head; in {seconds:.1f} s")


def generate(
    package: Annotated[
        Path, typer.Argument(help="A decoder package written by `edgeexit export` (e.g. smollm2_135m).")
    ],
    prompt: Annotated[str, typer.Option(help="The text to continue (with --chat: the user's message).")],
    chat: Annotated[bool, typer.Option(help="Frame the prompt with the model's chat template.")] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 64,
    mode: Annotated[str, typer.Option(help="full (every layer for every token), early-exit, or speculative.")] = "full",
    variant: Annotated[str, typer.Option(help="Weights: fp32, or a weight-only variant the package holds.")] = "fp32",
    temperature: Annotated[float, typer.Option(help="0: greedy; above 0: sample (seeded with --seed).")] = 0.0,
    top_k: Annotated[int, typer.Option(help="Sample among the k most probable tokens (0: all).")] = 0,
    top_p: Annotated[float, typer.Option(help="Sample within this much probability mass.")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling.")] = None,
    threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads.")] = 1,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print text, tokens, tokens_per_s, mean_layers and mode as JSON.")
    ] = False,
) -> None:
    """Generate text on this machine from a decoder package: ONNX Runtime and tokenizers, no torch."""
    from edgeexit.generation.engine import DecoderEngine

    engine = DecoderEngine(package, variant=variant, threads=threads)
    result = engine.generate(prompt, max_new_tokens, mode=mode, chat=chat, temperature=temperature, top_k=top_k,
                             top_p=top_p, seed=seed)  # fmt: skip
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    console.print(result.text, markup=False, highlight=False)
    console.print(
        f"[dim]{len(result.tokens)} tokens ({result.finish}), {result.tokens_per_s:.1f} tokens/s, "
        f"{result.mean_layers:.1f} layers per token, mode {result.mode}, prompt {result.prompt_tokens} tokens "
        f"in {result.prefill_ms:.0f} ms[/]"
    )
