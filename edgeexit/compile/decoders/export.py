"""Export a decoder LLM into a decoder package: embedding, layer-group segments with their KV cache,
head, tokenizer, chat frame, parity with PyTorch, optional weight-only quantized variants.

Parity is checked twice before the package is written: every graph against the PyTorch part it
came from, on a prompt's prefill and on a decode step over a cache (largest absolute difference
recorded per graph); and greedy continuations of the export's prompts through the device runtime
(``DecoderEngine``) against Hugging Face's own ``generate`` on the same weights, token for token.
A continuation that differs fails the export: a package that does not generate what the model
generates is not one to ship.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import edgeexit
from edgeexit.compile.decoders.llama import KVProjection, LayerGroup, LlamaShape, split_llama
from edgeexit.compile.decoders.weights import ACCURACY_LEVEL, BLOCK_SIZE, WEIGHT_VARIANTS, quantize_weights
from edgeexit.compile.exporter import export_graph
from edgeexit.errors import ExportError
from edgeexit.fileio import atomic_write_text, sha256_file, staged_directory
from edgeexit.generation.manifest import (
    DecoderManifest,
    DecoderSegment,
    DecoderShape,
    GraphSpec,
    Tokens,
    WeightVariant,
)
from edgeexit.generation.package import DecoderPackage, open_decoder_package
from edgeexit.manifest import MANIFEST_FILE, TensorSpec, package_id_of

#: Largest |ONNX Runtime - PyTorch| accepted per graph at fp32, relative to the largest |value|
#: of that output (SmolLM2's hidden state carries outlier features up to 22,000, where
#: reordered float32 sums alone move the last digits).
PARITY_RTOL = 1e-4
#: Text that masks a chat message while the template is rendered into its single-turn frame.
_SENTINEL = "\u2063EDGEEXIT-MESSAGE\u2063"


@dataclass(frozen=True)
class DecoderSource:
    """What a decoder factory returns: the model, its tokenizer and what to check it on.

    ``model``: a Hugging Face ``LlamaForCausalLM`` in eval mode. ``tokenizer``: its fast tokenizer
    (a ``PreTrainedTokenizerFast``; None: token-id prompts only). ``prompts``: text the export
    checks greedy continuations on (chat-framed when the tokenizer has a chat template)."""

    name: str
    model: Any
    tokenizer: Any | None
    max_context: int
    prompts: tuple[str, ...] = ()
    stop_tokens: tuple[int, ...] = ()
    boundaries: tuple[int, ...] = ()
    notes: dict[str, Any] = field(default_factory=dict)


def default_boundaries(layers: int, segments: int = 5) -> tuple[int, ...]:
    """``segments`` layer groups as even as they come (30 layers: 6, 12, 18, 24, 30)."""
    segments = max(1, min(segments, layers))
    return tuple(round(layers * (k + 1) / segments) for k in range(segments))


def export_decoder(
    source: DecoderSource,
    out: str | Path,
    *,
    boundaries: Sequence[int] | None = None,
    weights: Sequence[str] = ("int8", "int4"),
    parity_tokens: int = 12,
    agreement_tokens: int = 32,
    overwrite: bool = False,
) -> DecoderPackage:
    """Write ``source`` as a decoder package at ``out`` (staged, moved into place when complete),
    with a weight-only quantized variant per name in ``weights`` (``int8``, ``int4``; their
    agreement with fp32 over ``agreement_tokens``-token greedy continuations of the prompts
    recorded in the manifest)."""
    started = time.perf_counter()
    out = Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; pass --force (overwrite=True in Python) to replace it")
    unknown = sorted(set(weights) - set(WEIGHT_VARIANTS))
    if unknown:
        raise ExportError(f"unknown weight variant(s) {unknown}; expected some of {', '.join(WEIGHT_VARIANTS)}")
    model = source.model.eval()
    shape = LlamaShape(model.config)
    chosen = tuple(boundaries or source.boundaries or default_boundaries(shape.layers))
    embedding, groups, head, _ = split_llama(model, chosen)
    with staged_directory(out, overwrite=True) as stage:
        (stage / "graphs").mkdir()
        opset, specs = _export_graphs(stage, embedding, groups, head, shape)
        extra: list[str] = []
        tokenizer_file = None
        frame = None
        template = None
        if source.tokenizer is not None:
            tokenizer_file = "tokenizer.json"
            source.tokenizer.backend_tokenizer.save(str(stage / tokenizer_file))
            extra.append(tokenizer_file)
            template = getattr(source.tokenizer, "chat_template", None)
            frame = chat_frame(source.tokenizer) if template else None
        graph_files = [specs["embedding"].file, *(s.graph.file for s in specs["segments"]), specs["head"].file,
                       *(s.propagate.file for s in specs["segments"] if s.propagate is not None)]  # fmt: skip
        files = {name: sha256_file(stage / name) for name in [*graph_files, *extra]}
        manifest = DecoderManifest(
            model_name=source.name,
            package_id=package_id_of(files, graph_files),
            edgeexit_version=edgeexit.__version__,
            opset=opset,
            architecture="llama",
            shape=DecoderShape(
                hidden=shape.hidden,
                layers=shape.layers,
                heads=shape.heads,
                kv_heads=shape.kv_heads,
                head_dim=shape.head_dim,
                vocab=shape.vocab,
                max_context=source.max_context,
            ),
            tokens=Tokens(stop=tuple(source.stop_tokens), pad=int(_pad_id(source))),
            embedding=specs["embedding"],
            segments=tuple(specs["segments"]),
            head=specs["head"],
            files=files,
            tokenizer=tokenizer_file,
            chat_template=template,
            metadata={"chat_frame": list(frame) if frame else None, "source": dict(source.notes)},
        )
        manifest.validate()
        atomic_write_text(stage / MANIFEST_FILE, manifest.to_json())
        package = open_decoder_package(stage)
        graphs = graph_parity(package, embedding, groups, head)
        bad = [row for row in graphs if row["max_abs_diff"] > PARITY_RTOL * max(row["max_abs"], 1.0)]
        if bad:
            raise ExportError(f"ONNX Runtime differs from PyTorch beyond {PARITY_RTOL} of the largest value: {bad}")
        from edgeexit.generation.engine import DecoderEngine

        reference = DecoderEngine(package)  # loaded once: the continuations and the variants' agreement
        continuations = greedy_parity(reference, source, parity_tokens)
        differing = [row for row in continuations if not row["identical"]]
        if differing:
            raise ExportError(
                f"greedy continuations through the device runtime differ from transformers' generate on "
                f"{len(differing)} of {len(continuations)} prompts: {differing[0]}"
            )
        manifest = _with_variants(reference, weights, source, agreement_tokens)
        manifest = DecoderManifest(**{**manifest.__dict__, "reference": {
            "framework": f"transformers {_transformers_version()}, torch {torch.__version__}",
            "graphs": graphs,
            "greedy": continuations,
        }, "metadata": {**manifest.metadata, "export": {
            "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
            "boundaries": list(chosen),
            "seconds": round(time.perf_counter() - started, 1),
        }}})  # fmt: skip
        package.save_manifest(manifest)
    return open_decoder_package(out)


def _with_variants(reference: Any, names: Sequence[str], source: DecoderSource,
                   tokens: int) -> DecoderManifest:  # fmt: skip
    """The manifest with a weight-only variant per name: segments and head quantized, hashed, and
    measured against fp32 on the source's prompts."""
    from edgeexit.generation.agreement import agreement
    from edgeexit.generation.engine import DecoderEngine

    package = reference.package
    manifest = package.manifest
    if not names:
        return manifest
    prompts = [_prompt_ids(source, reference, prompt) for prompt in source.prompts or ("",)]
    files = dict(manifest.files)
    variants = []
    for name in names:
        bits = WEIGHT_VARIANTS[name]
        (package.root / name).mkdir(exist_ok=True)
        mapping = {}
        for graph in [*(s.graph.file for s in manifest.segments), manifest.head.file]:
            target = f"{name}/{Path(graph).name}"
            quantize_weights(package.path(graph), package.path(target), bits)
            files[target] = sha256_file(package.path(target))
            mapping[graph] = target
        variants.append(WeightVariant(name=name, bits=bits, block_size=BLOCK_SIZE, files=mapping))
    manifest = DecoderManifest(**{**manifest.__dict__, "files": files, "variants": tuple(variants)})
    package = package.save_manifest(manifest)
    measured = []
    for variant in variants:
        found = agreement(reference, DecoderEngine(package, variant=variant.name), prompts, tokens)
        found["accuracy_level"] = ACCURACY_LEVEL
        measured.append(WeightVariant(**{**variant.__dict__, "agreement": found}))
    return DecoderManifest(**{**manifest.__dict__, "variants": tuple(measured)})


def chat_frame(tokenizer: Any) -> tuple[str, str]:
    """The text before and after one user message, the assistant's turn opened, as the model's own
    chat template renders it (transformers' ``apply_chat_template``)."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
    )
    before, found, after = rendered.partition(_SENTINEL)
    if not found:
        raise ExportError("the chat template dropped the user's message; cannot derive its single-turn frame")
    return before, after


# ---------------------------------------------------------------- graphs


def _export_graphs(stage: Path, embedding: torch.nn.Module, groups: list[LayerGroup], head: torch.nn.Module,
                   shape: LlamaShape) -> tuple[int, dict[str, Any]]:  # fmt: skip
    batch, new, past = 2, 3, 4
    auto = torch.export.Dim.AUTO
    ids = torch.zeros((batch, new), dtype=torch.int64)
    opset = export_graph(embedding, [ids], stage / "graphs/embedding.onnx", ["input_ids"], ["hidden"],
                         "the embedding", dynamic_shapes=[{0: auto, 1: auto}])  # fmt: skip
    h = shape.hidden
    hidden_spec = TensorSpec("hidden", (None, None, h), "float32")
    entry = (None, None, shape.kv_heads, shape.head_dim)
    specs: dict[str, Any] = {
        "embedding": GraphSpec(
            "graphs/embedding.onnx",
            (TensorSpec("input_ids", (None, None), "int64"),),
            (hidden_spec,),
            params=_params(embedding),
        )
    }
    segments = []
    first = 0
    for index, group in enumerate(groups):
        layers = range(first, first + len(group.layers))
        in_names = ["hidden", "position_ids", "attention_mask"]
        out_names = ["hidden_out"]
        for layer in layers:
            in_names += [f"past_key_{layer}", f"past_value_{layer}"]
            out_names += [f"key_{layer}", f"value_{layer}"]
        examples = [
            torch.randn(batch, new, h),
            torch.arange(past, past + new).expand(batch, new).contiguous(),
            torch.ones(batch, past + new, dtype=torch.int64),
            *(torch.randn(past, batch, shape.kv_heads, shape.head_dim) for _ in range(2 * len(layers))),
        ]
        axes = [{0: auto, 1: auto}] * 3
        file = f"graphs/segment_{index}.onnx"
        export_graph(group, examples, stage / file, in_names, out_names, f"layers {first}-{layers[-1]}",
                     dynamic_shapes=[*axes, tuple({0: auto, 1: auto} for _ in range(2 * len(layers)))])  # fmt: skip
        inputs = (
            hidden_spec,
            TensorSpec("position_ids", (None, None), "int64"),
            TensorSpec("attention_mask", (None, None), "int64"),
            *(TensorSpec(name, entry, "float32") for name in in_names[3:]),
        )
        outputs = (
            TensorSpec("hidden_out", (None, None, h), "float32"),
            *(TensorSpec(name, entry, "float32") for name in out_names[1:]),
        )
        propagate = None
        if index > 0:  # a token can skip every group but the first
            propagate = _export_propagation(stage, index, group, shape, entry, out_names[1:])
        graph = GraphSpec(file, inputs, outputs, _params(group))
        segments.append(DecoderSegment(index, first, layers.stop, graph, propagate))
        first = layers.stop
    specs["segments"] = segments
    export_graph(head, [torch.randn(batch, new, h)], stage / "graphs/head.onnx", ["hidden"], ["logits"], "the head",
                 dynamic_shapes=[{0: auto, 1: auto}])  # fmt: skip
    specs["head"] = GraphSpec(
        "graphs/head.onnx", (hidden_spec,), (TensorSpec("logits", (None, None, shape.vocab), "float32"),), _params(head)
    )
    return opset, specs


def _export_propagation(stage: Path, index: int, group: LayerGroup, shape: LlamaShape,
                        entry: tuple[int | None, ...], names: list[str]) -> GraphSpec:  # fmt: skip
    """Group ``index``'s keys and values from one hidden state (``KVProjection``), as its own graph."""
    auto = torch.export.Dim.AUTO
    module = KVProjection(list(group.layers), shape)
    file = f"graphs/propagate_{index}.onnx"
    examples = [torch.randn(2, 3, shape.hidden), torch.arange(4, 7).expand(2, 3).contiguous()]
    export_graph(module, examples, stage / file, ["hidden", "position_ids"], names, f"group {index}'s KV projection",
                 dynamic_shapes=[{0: auto, 1: auto}, {0: auto, 1: auto}])  # fmt: skip
    inputs = (TensorSpec("hidden", (None, None, shape.hidden), "float32"),
              TensorSpec("position_ids", (None, None), "int64"))  # fmt: skip
    return GraphSpec(file, inputs, tuple(TensorSpec(n, entry, "float32") for n in names), _params(module))


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- parity


def graph_parity(package: DecoderPackage, embedding: torch.nn.Module, groups: list[LayerGroup],
                 head: torch.nn.Module, *, prompt_length: int = 7) -> list[dict[str, Any]]:  # fmt: skip
    """Every graph against its PyTorch part on a prefill of ``prompt_length`` tokens (batch 2) and
    then one decode step over that cache: the largest |difference| per graph and output kind, and
    the largest |value| it is relative to."""
    from edgeexit.runtime.sessions import load_session

    manifest = package.manifest
    rng = np.random.default_rng(0)
    ids = rng.integers(0, manifest.shape.vocab, size=(2, prompt_length + 1), dtype=np.int64)
    sessions = [load_session(package.path(s.graph.file)) for s in manifest.segments]
    projections = [None if s.propagate is None else load_session(package.path(s.propagate.file))
                   for s in manifest.segments]  # fmt: skip
    rows: dict[str, tuple[float, float]] = {}

    def note(name: str, ours: np.ndarray, theirs: torch.Tensor) -> None:
        if not ours.size:
            return
        diff = float(np.max(np.abs(ours - theirs.numpy())))
        scale = float(np.max(np.abs(theirs.numpy())))
        before = rows.get(name, (0.0, 0.0))
        rows[name] = (max(before[0], diff), max(before[1], scale))

    embed_session = load_session(package.path(manifest.embedding.file))
    head_session = load_session(package.path(manifest.head.file))
    empty = torch.zeros(0, 2, manifest.shape.kv_heads, manifest.shape.head_dim)
    caches = [[empty] * (2 * len(group.layers)) for group in groups]
    with torch.no_grad():
        for start, stop in ((0, prompt_length), (prompt_length, prompt_length + 1)):
            chunk = ids[:, start:stop]
            hidden = embedding(torch.from_numpy(chunk))
            (ours,) = embed_session.run(None, {"input_ids": chunk})
            note("embedding", ours, hidden)
            positions = np.broadcast_to(np.arange(start, stop, dtype=np.int64), chunk.shape).copy()
            mask = np.ones((2, stop), dtype=np.int64)
            for segment, session, group, cache in zip(manifest.segments, sessions, groups, caches, strict=True):
                feeds = {"hidden": hidden.numpy(), "position_ids": positions, "attention_mask": mask}
                for i, layer in enumerate(segment.layers):
                    feeds[f"past_key_{layer}"] = cache[2 * i].numpy()
                    feeds[f"past_value_{layer}"] = cache[2 * i + 1].numpy()
                outputs = session.run(None, feeds)
                expected = group(hidden, torch.from_numpy(positions), torch.from_numpy(mask), *cache)
                note(f"segment {segment.index} hidden", outputs[0], expected[0])
                if segment.propagate is not None:
                    projected = projections[segment.index].run(  # type: ignore[union-attr]
                        None, {"hidden": hidden.numpy(), "position_ids": positions}
                    )
                    reference = KVProjection(list(group.layers), group.shape)(hidden, torch.from_numpy(positions))
                    for value, want in zip(projected, reference, strict=True):
                        note(f"propagate {segment.index}", value, want)
                for i, (value, reference) in enumerate(zip(outputs[1:], expected[1:], strict=True)):
                    note(f"segment {segment.index} cache", value, reference)
                    cache[i] = torch.cat((cache[i], reference), dim=0)
                hidden = expected[0]
            (ours,) = head_session.run(None, {"hidden": hidden.numpy()})
            note("head logits", ours, head(hidden))
    return [{"graph": name, "max_abs_diff": diff, "max_abs": scale} for name, (diff, scale) in rows.items()]


def greedy_parity(engine: Any, source: DecoderSource, tokens: int) -> list[dict[str, Any]]:
    """Each prompt's greedy continuation through ``engine`` (a ``DecoderEngine``) against
    transformers' ``generate``."""
    rows = []
    for prompt in source.prompts or ("",):
        ids = _prompt_ids(source, engine, prompt)
        with torch.no_grad():
            generated = source.model.generate(
                torch.tensor([ids]), max_new_tokens=tokens, do_sample=False, num_beams=1,
                attention_mask=torch.ones(1, len(ids), dtype=torch.int64), pad_token_id=_pad_id(source),
                eos_token_id=list(source.stop_tokens) or None,
            )  # fmt: skip
        theirs = [int(t) for t in generated[0, len(ids) :] if int(t) not in source.stop_tokens]
        ours = list(engine.generate(ids, max_new_tokens=tokens).tokens)
        rows.append({"prompt": prompt[:60], "prompt_tokens": len(ids), "tokens": len(theirs),
                     "identical": ours == theirs[: len(ours)] and len(ours) == len(theirs),
                     "prompt_ids": ids, "continuation": theirs})  # fmt: skip  # what `edgeexit verify` reruns
    return rows


def _prompt_ids(source: DecoderSource, engine: Any, prompt: str) -> list[int]:
    if source.tokenizer is None or not prompt:
        return [1, 2, 3, 4, 5]
    return engine.codec.encode(prompt, chat=engine.codec.chat_frame is not None)


def _pad_id(source: DecoderSource) -> int:
    pad = getattr(source.model.config, "pad_token_id", None)
    if pad is None:
        pad = source.stop_tokens[0] if source.stop_tokens else 0
    return int(pad if not isinstance(pad, list) else pad[0])


def _transformers_version() -> str:
    import transformers

    return transformers.__version__
