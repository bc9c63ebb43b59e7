"""Text generation on this CPU: edgeexit's device loop against Hugging Face transformers, side by side.

    python tools/bench_generation.py PKG [--tokens 64] [--prompts 8] [--variants fp32,int8,int4]
                                         [--modes full,early-exit,speculative] [--criteria gate,max_prob,similarity]
                                         [--no-transformers] [--threads 1] [--json OUT]

PKG is a decoder package (``edgeexit export smollm2_135m --out PKG``). Every prompt (chat-framed
instructions) is generated greedily by each row in turn, one row after the other per prompt, so
that a neighbour's load falls on all rows alike; tokens/s is generated tokens over wall time of
the whole call (the prompt's pass included), summed over the prompts. transformers runs the same
float32 weights (``smollm2_135m``, dequantized from the same GGUF file) with ``generate(do_sample=False)``
on one torch thread by default, and every row's continuations are compared with its, token for
token. A weight variant's agreement with fp32 is the export's measurement, quoted from the manifest.

Quality against the full model (fp32, full depth) for every row: *agreement*, the share of
generated tokens that are the full model's greedy choice given the same text before them, and
the full model's *perplexity* on the generated text (full depth's own text sets the floor).
Speculative rows also report the acceptance rate of drafted tokens and the mean tokens kept per
verification round. Early exit runs once per ``--criteria`` entry.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import _tool

#: Instructions of the kind an assistant on a small device answers; chat-framed.
PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a CPU does in two sentences.",
    "Give me three tips for sleeping better.",
    "Tell me a short story about a dragon who learns to cook.",
    "What are the main causes of the seasons on Earth?",
    "Write a polite email declining a meeting invitation.",
    "List the planets of the solar system in order.",
    "How do I boil an egg?",
    "Summarize the plot of Romeo and Juliet.",
    "What is the difference between weather and climate?",
    "Suggest a name for a coffee shop and explain it.",
)


@dataclass
class Row:
    name: str
    tokens: int = 0
    seconds: float = 0.0
    layers: list[float] = field(default_factory=list)
    outputs: list[tuple[int, ...]] = field(default_factory=list)
    agreed: int = 0
    nll: float = 0.0
    judged: int = 0
    details: dict[str, float] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path)
    parser.add_argument("--tokens", type=int, default=64, help="max new tokens per prompt")
    parser.add_argument("--prompts", type=int, default=8, help=f"how many of the {len(PROMPTS)} built-in prompts")
    parser.add_argument("--variants", default="fp32,int8,int4")
    parser.add_argument("--modes", default="full", help="generation modes to run per variant")
    parser.add_argument("--criteria", default="gate", help="early exit's criteria, one row each")
    parser.add_argument("--skipped", default="recompute", help="early exit's skipped-layer KV: recompute, "
                        "propagate, or both comma-separated (a row each)")  # fmt: skip
    parser.add_argument("--drafts", default="own", help="speculative's drafts, one row each: own (the engine's "
                        "layers) or a weight variant (int4)")  # fmt: skip
    parser.add_argument("--max-draft", type=int, default=None)
    parser.add_argument("--stop-below", type=float, default=None)
    parser.add_argument("--no-transformers", action="store_true", help="skip the transformers rows")
    parser.add_argument("--assistant-early-exit", type=int, action="append", default=[],
                        help="also run transformers' generate(assistant_early_exit=N) (LayerSkip self-speculation "
                        "with the model's own head after N layers); repeatable")  # fmt: skip
    parser.add_argument("--threads", default="1", help="intra-op threads, comma-separated: a row per count "
                        "(transformers too), so each side is compared at its best")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from edgeexit.generation import DecoderEngine

    prompts = PROMPTS[: args.prompts]
    from edgeexit.generation.agreement import judge

    engines = {}
    counts = [int(part) for part in str(args.threads).split(",")]
    for variant, threads in itertools.product(args.variants.split(","), counts):
        engine = DecoderEngine(args.package, variant=variant, threads=threads)
        if threads > 1:
            variant = f"{variant} t{threads}"
        for mode in args.modes.split(","):
            if mode == "early-exit":
                for criterion in args.criteria.split(","):
                    for skipped in args.skipped.split(","):
                        name = f"edgeexit {mode} ({criterion}, {skipped}) {variant}"
                        engines[name] = (engine, mode, {"criterion": criterion, "skipped": skipped})
            elif mode == "speculative":
                for draft in args.drafts.split(","):
                    options = {"draft_variant": draft, "max_draft": args.max_draft,
                               "stop_below": args.stop_below}  # fmt: skip
                    engines[f"edgeexit {mode} ({draft} draft) {variant}"] = (engine, mode, options)
            else:
                engines[f"edgeexit {mode} {variant}"] = (engine, mode, {})
    judge_engine = DecoderEngine(args.package)
    first = judge_engine
    manifest = first.manifest
    encoded = [first.codec.encode(p, chat=first.codec.chat_frame is not None) for p in prompts]
    rows = {name: Row(name) for name in engines}
    references = {}
    if not args.no_transformers:
        run = _transformers(manifest.model_name)
        for threads in counts:
            suffix = f" t{threads}" if threads > 1 else ""
            references[f"transformers generate fp32{suffix}"] = lambda ids, n, stops, t=threads: run(ids, n, stops, t)
            for layers in args.assistant_early_exit:  # LayerSkip-style self-speculation, its own untrained exit
                references[f"transformers assistant_early_exit={layers}{suffix}"] = (
                    lambda ids, n, stops, t=threads, layers=layers: run(ids, n, stops, t, assistant_early_exit=layers)
                )
        rows.update({name: Row(name) for name in references})
    for engine, mode, options in engines.values():  # warm: sessions' first runs, arenas
        engine.generate(encoded[0], 4, mode=mode, **options)
    for ids in encoded:
        for name, (engine, mode, options) in engines.items():
            result = engine.generate(ids, args.tokens, mode=mode, **options)
            row = rows[name]
            row.tokens += len(result.tokens)
            row.seconds += result.total_ms / 1e3
            row.layers.extend([result.mean_layers] * len(result.tokens))
            row.outputs.append(result.tokens)
            for key, value in result.details.items():
                if key not in ("acceptance_rate", "mean_accepted"):
                    row.details[key] = row.details.get(key, 0.0) + value
        for name, reference in references.items():
            tokens, seconds = reference(ids, args.tokens, manifest.tokens.stop)
            row = rows[name]
            row.tokens += len(tokens)
            row.seconds += seconds
            row.layers.extend([float(manifest.shape.layers)] * len(tokens))
            row.outputs.append(tokens)
    for row in rows.values():  # the full model's view of every row's text
        for ids, tokens in zip(encoded, row.outputs, strict=True):
            agreed, nll, count = judge(judge_engine, ids, tokens)
            row.agreed += agreed
            row.nll += nll
            row.judged += count

    def fastest(prefix: str) -> Row | None:  # each side at its best thread count
        found = [row for name, row in rows.items() if name.startswith(prefix) and row.tokens]
        return max(found, key=lambda row: row.tokens_per_s) if found else None

    baseline = fastest("transformers generate fp32") or next(iter(rows.values()))
    full = fastest("edgeexit full fp32") or baseline
    report = {
        "package": str(args.package),
        "model": manifest.model_name,
        "prompts": len(prompts),
        "max_new_tokens": args.tokens,
        "threads": counts,
        "baselines": {"transformers": baseline.name, "edgeexit_full": full.name},
        "rows": [],
    }
    print(f"{manifest.model_name}: {len(prompts)} chat prompts x up to {args.tokens} new tokens, greedy, "
          f"threads {counts} (rows without t<N>: 1)")  # fmt: skip
    print(f"ratios against the fastest of each: {baseline.name!r} and {full.name!r}")
    print(f"{'row':46} {'tokens/s':>9} {'x transformers':>15} {'x edgeexit full':>16} {'layers/token':>13} "
          f"{'agreement':>10} {'perplexity':>11} {'identical to transformers':>26} "
          f"{'to edgeexit fp32':>17}")  # fmt: skip
    for row in rows.values():
        same_as_baseline = sum(a == b for a, b in zip(row.outputs, baseline.outputs, strict=True))
        same_as_full = sum(a == b for a, b in zip(row.outputs, full.outputs, strict=True))
        entry = {
            "row": row.name,
            "tokens": row.tokens,
            "seconds": row.seconds,
            "tokens_per_s": row.tokens_per_s,
            "vs_transformers": row.tokens_per_s / baseline.tokens_per_s,
            "vs_full": row.tokens_per_s / full.tokens_per_s,
            "mean_layers": statistics.mean(row.layers) if row.layers else 0.0,
            "agreement": row.agreed / row.judged if row.judged else 1.0,
            "perplexity": math.exp(row.nll / row.judged) if row.judged else float("nan"),
            "identical_to_transformers": same_as_baseline,
            "identical_to_full": same_as_full,
            "details": row.details,
        }
        drafted = row.details.get("drafted")
        if drafted:
            entry["acceptance_rate"] = row.details["accepted"] / drafted
            entry["mean_accepted"] = (row.details["accepted"] + row.details["rounds"]) / row.details["rounds"]
        report["rows"].append(entry)
        print(f"{row.name:46} {row.tokens_per_s:9.1f} {entry['vs_transformers']:15.2f} {entry['vs_full']:16.2f} "
              f"{entry['mean_layers']:13.1f} {entry['agreement']:10.3f} {entry['perplexity']:11.2f} "
              f"{same_as_baseline:>20} of {len(prompts):<3} {same_as_full:>11} of {len(prompts)}")  # fmt: skip
        if drafted:
            print(f"{'':46} drafts accepted {100 * entry['acceptance_rate']:.1f}%, "
                  f"{entry['mean_accepted']:.2f} tokens kept per verification round")  # fmt: skip
        exits = {k: v for k, v in row.details.items() if k.startswith("exit_") or k == "full_depth"}
        if exits:
            total = sum(exits.values())
            print(f"{'':46} tokens leaving at " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in exits.items())
                  + f"; recomputed positions {row.details.get('recomputed_positions', 0):.0f}")  # fmt: skip
    for variant in manifest.variants:
        found = variant.agreement
        print(f"{variant.name} (export's measurement against fp32): {100 * found['teacher_forced_agreement']:.1f}% "
              f"of next tokens agree teacher-forced over {found['prompts']} prompts x {found['tokens']} tokens, "
              f"{found['identical_continuations']} continuations identical")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


def _transformers(name: str):  # type: ignore[no-untyped-def]
    """transformers' greedy ``generate`` on the package's source model, as ``(ids, tokens, stops,
    threads) -> (generated ids without the stop, seconds)``."""
    import torch

    from edgeexit.compile.factory import build_object

    source = build_object(name, {})
    model = source.model

    def run(ids: list[int], tokens: int, stops: tuple[int, ...], threads: int = 1,
            **extra: object) -> tuple[tuple[int, ...], float]:  # fmt: skip
        torch.set_num_threads(threads)
        tick = time.perf_counter()
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.int64),
                                 max_new_tokens=tokens, do_sample=False, num_beams=1, eos_token_id=list(stops),
                                 pad_token_id=stops[0] if stops else 0, **extra)  # fmt: skip
        seconds = time.perf_counter() - tick
        generated = [int(t) for t in out[0, len(ids) :]]
        if generated and generated[-1] in stops:
            generated = generated[:-1]
        return tuple(generated), seconds

    run([1, 2, 3], 2, stops=(2,))  # warm
    return run


if __name__ == "__main__":
    _tool.run(main)
