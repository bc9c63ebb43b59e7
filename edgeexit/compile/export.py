"""Export a ``MultiExitModel`` into a verified package: one ONNX graph per segment, the offload
tails (``edgeexit.compile.tails``) + manifest.

Every graph is checked with ``onnx.checker`` and run with ONNX Runtime against PyTorch on
sample inputs, per segment and chained end to end; an output beyond tolerance fails the export
loudly with the max difference of every output. The package is built in a staging directory and
moved into place only when all of that passed, so a failed export leaves nothing behind. The
tails come last: their config.pbtxt names the package_id, which hashes the finished segments.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

import edgeexit
from edgeexit.compile.exporter import export_graph, expose_initializer
from edgeexit.compile.graphs import (
    GATE_BUFFERS,
    TEMPERATURE_BUFFER,
    MonolithicGraph,
    SegmentGraph,
    gate_inputs,
    monolithic_output_names,
    segment_input_names,
    segment_output_names,
    temperature_input,
)
from edgeexit.compile.model import MultiExitModel
from edgeexit.compile.tails import BoundaryTensors, Tail, check_codecs, tail_failure, write_tails
from edgeexit.errors import ExportError, ModelError
from edgeexit.fileio import atomic_write_text, sha256_file, staged_directory
from edgeexit.manifest import (
    CRITERION_NAMES,
    IN_GRAPH_CRITERIA,
    LEARNED_CRITERION,
    MANIFEST_FILE,
    ExitSpec,
    InputSpec,
    Manifest,
    Preprocessing,
    Reference,
    SegmentSpec,
    TensorSpec,
    package_id_of,
)
from edgeexit.package import Package, open_package
from edgeexit.parity import ParityCheck, compare
from edgeexit.repository import INPUT_BOUNDARY
from edgeexit.runtime.sessions import load_session

TOKENIZER_FILE = "tokenizer.json"
DEFAULT_THRESHOLD = 0.9
#: Parity tolerance: |onnx - torch| <= atol + rtol * max|torch| for every element of every output
#: (``edgeexit.parity.compare``: the relative part follows each output's range).
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3


def export(
    model: MultiExitModel,
    input_shape: Sequence[int],
    out: str | Path,
    *,
    labels: Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
    sample: np.ndarray | None = None,
    criterion: str = "max_prob",
    threshold: float = DEFAULT_THRESHOLD,
    monolithic: bool = False,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    overwrite: bool = True,
    codecs: Sequence[str] | None = None,
    tokenizer: str | Path | None = None,
    tflite: bool = False,
    tflite_sequence_length: int | Sequence[int] | None = None,
) -> Package:
    """Write ``out/`` (see DESIGN.md: manifest.json, segments/k.onnx, tails/, reference.npz).

    ``sample`` (real inputs, N x input_shape[1:]) makes the parity check meaningful; without it,
    seeded random inputs are used. For a model with context inputs (a text encoder) ``sample`` is
    a mapping with the input (``input_ids``) and every context input (``attention_mask``), each
    (N, L); the sequence axis is exported dynamic. The exit score graphs compute ``criterion``
    (max_prob, margin or entropy); other criteria are evaluated by the runtime from the logits.
    ``codecs`` (fp32, fp16, int8; empty: none; default fp32) chooses the offload tails written
    under ``tails/``, one per boundary with a later segment and codec (docs/offload.md); a boundary
    of several tensors gets tails that take each of them; text encoders get none (their tails
    would need the attention mask on the wire too).
    ``tokenizer`` is a ``tokenizers`` JSON file copied into the package for the device (default:
    the model's ``tokenizer_file``).
    ``tflite`` also converts every segment to ``tflite/k.tflite`` (the ``[tflite-export]`` extra);
    a text encoder's TFLite graphs have fixed token counts, ``tflite_sequence_length`` (one or
    several; default every 8 tokens up to 64, then 96 and 128, each a signature of the same file:
    LiteRT runs a request at the shortest that holds it, padded, and refuses longer ones).
    """
    if not isinstance(model, MultiExitModel):
        raise ModelError(f"export expects a MultiExitModel; got {type(model).__name__} (use attach_exits)")
    if criterion not in CRITERION_NAMES:
        raise ExportError(f"unknown criterion {criterion!r}; expected one of {CRITERION_NAMES}")
    text = bool(model.context_names) and model.context_everywhere  # a mask beside every segment's tensor
    if codecs is None:
        codecs = () if text else ("fp32",)
    chosen_codecs = check_codecs(codecs)
    if text and chosen_codecs:
        raise ExportError(
            f"offload tails for a model with context inputs {list(model.context_names)} are not supported yet; "
            "export it with codecs=() (--codecs '')"
        )
    if not (atol >= 0 and rtol >= 0):  # also refuses NaN
        raise ExportError(f"parity tolerances must be >= 0; got atol={atol}, rtol={rtol}")
    shape = tuple(int(d) for d in input_shape)
    if len(shape) < 2 or any(d <= 0 for d in shape):
        raise ExportError(f"input shape {shape} is invalid; expected positive dims like 1,1,28,28")
    started = time.perf_counter()
    model.eval()
    model.materialize(shape)
    inputs, context = _parity_inputs(model, shape, sample)
    graph_criterion = criterion if criterion in (*IN_GRAPH_CRITERIA, LEARNED_CRITERION) else None
    labels = tuple(labels) if labels is not None else tuple(str(i) for i in range(model.num_classes))
    if len(labels) != model.num_classes:
        raise ExportError(f"got {len(labels)} labels for a model with {model.num_classes} classes")

    if Path(out).exists() and not overwrite:
        raise ExportError(f"{out} already exists; pass --force (overwrite=True in Python) to replace it")
    with staged_directory(out, overwrite=True) as stage:
        manifest = _write_package(
            model, shape, stage, inputs, context, labels, preprocessing, graph_criterion or criterion,
            graph_criterion, threshold, monolithic, atol, rtol, started, chosen_codecs, tokenizer,
        )  # fmt: skip
        if tflite:
            _add_tflite(model, stage, manifest, inputs, context, tflite_sequence_length)
    return open_package(out)


def _write_package(
    model: MultiExitModel,
    shape: tuple[int, ...],
    stage: Path,
    inputs: torch.Tensor,
    context: tuple[torch.Tensor, ...],
    labels: tuple[str, ...],
    preprocessing: Preprocessing | None,
    criterion: str,
    graph_criterion: str | None,
    threshold: float,
    monolithic: bool,
    atol: float,
    rtol: float,
    started: float,
    codecs: tuple[str, ...],
    tokenizer: str | Path | None,
) -> Manifest:
    (stage / "segments").mkdir()
    input_name = model.input_name
    context_names = model.context_names
    context_feeds = {name: value.numpy() for name, value in zip(context_names, context, strict=True)}
    sequence = model.layout == "NL"  # a text encoder: the token axis is dynamic too
    segments: list[SegmentSpec] = []
    exits: list[ExitSpec] = []
    parity: list[ParityCheck] = []
    reference: dict[str, np.ndarray] = {"input": inputs[:2].numpy()}
    reference.update({f"context/{name}": value[:2] for name, value in context_feeds.items()})
    boundaries: list[BoundaryTensors] = []
    final_logits = np.empty(0, np.float32)
    opset = 0
    carried_torch: tuple[torch.Tensor, ...] = (inputs,)  # boundary k-1's tensors as PyTorch computes them
    carried_onnx: tuple[np.ndarray, ...] = (inputs.numpy(),)  # ... and as the ONNX Runtime chain does
    for k in range(model.num_exits):
        graph = SegmentGraph(model, k, graph_criterion).eval()
        in_names = segment_input_names(model, k)
        out_names = segment_output_names(model, k, graph_criterion)
        own_context = model.segment_context(k, context)
        own_feeds = {name: context_feeds[name] for name in in_names[graph.takes :]}
        relative = f"segments/{k}.onnx"
        with torch.no_grad():
            expected = [t.numpy() for t in graph(*carried_torch, *own_context)]
        opset = export_graph(
            graph, [*carried_torch, *own_context], stage / relative, in_names, out_names, f"segment {k}",
            dynamic_sequence=sequence,
        )  # fmt: skip
        temperature = temperature_input(k) if graph.scores_in_graph else None
        if temperature is not None:
            expose_initializer(stage / relative, TEMPERATURE_BUFFER, temperature, f"segment {k}")
        gated = gate_inputs(k) if graph.gate is not None else ()
        for buffer, name in zip(GATE_BUFFERS, gated, strict=False):
            expose_initializer(stage / relative, f"gate.{buffer}", name, f"segment {k}")
        session = load_session(stage / relative)
        carried_names = in_names[: graph.takes]
        torch_feeds = dict(zip(carried_names, (t.numpy() for t in carried_torch), strict=True))
        isolated = session.run(out_names, {**torch_feeds, **own_feeds})
        chained = session.run(out_names, {**dict(zip(carried_names, carried_onnx, strict=True)), **own_feeds})
        for name, ref, got, end_to_end in zip(out_names, expected, isolated, chained, strict=True):
            parity.append(compare(f"segment {k}", name, ref, got, atol, rtol))
            parity.append(compare(f"chain to {k}", name, ref, end_to_end, atol, rtol))
            reference[f"{k}/{name}"] = ref[:2]
        outputs = tuple(_tensor_spec(name, ref, sequence) for name, ref in zip(out_names, expected, strict=True))
        given = [*(t.numpy() for t in carried_torch), *own_feeds.values()]
        hidden = None if k == model.num_exits - 1 else out_names[0]
        spec = SegmentSpec(
            index=k,
            file=relative,
            inputs=tuple(_tensor_spec(name, value, sequence) for name, value in zip(in_names, given, strict=True)),
            outputs=outputs,
            hidden=hidden,
            exit=k,
            flops=_flops(graph, tuple(t[:1] for t in (*carried_torch, *own_context))),
            params=sum(p.numel() for p in graph.parameters()),
            hidden_bytes=_boundary_bytes(outputs[: graph.carries]) if hidden else None,
            carries=tuple(out_names[1 : graph.carries]),
        )
        segments.append(spec)
        head = model.head(k)
        info = model.infos[k]
        final = k == model.num_exits - 1
        exits.append(
            ExitSpec(
                index=k,
                segment=k,
                head=info.head,
                logits=f"exit_{k}_logits" if head is not None else None,
                score=f"exit_{k}_score" if head is not None and graph_criterion else None,
                temperature_input=temperature,
                probabilities=f"exit_{k}_probabilities" if temperature is not None else None,
                gate_inputs=gated,
                criterion=(graph.criterion or criterion) if head is not None else "similarity",
                threshold=0.0 if final else threshold,
                final=final,
            )
        )
        if hidden is not None:
            carried = slice(0, graph.carries)
            boundaries.append(BoundaryTensors(k, tuple(chained[carried]), tuple(e[:2] for e in expected[carried])))
            carried_torch = tuple(torch.from_numpy(t) for t in expected[: graph.carries])
            carried_onnx = tuple(chained[: graph.carries])
        else:
            final_logits = expected[out_names.index(f"exit_{k}_logits")]

    monolithic_file = None
    if monolithic:
        monolithic_file = "monolithic.onnx"
        graph = MonolithicGraph(model, graph_criterion).eval()
        names = monolithic_output_names(model, graph_criterion)
        with torch.no_grad():
            expected = [t.numpy() for t in graph(inputs, *context)]
        export_graph(
            graph, [inputs, *context], stage / monolithic_file, [input_name, *context_names], names,
            "monolithic graph", dynamic_sequence=sequence,
        )  # fmt: skip
        got = load_session(stage / monolithic_file).run(names, {input_name: inputs.numpy(), **context_feeds})
        parity += [compare("monolithic", n, r, g, atol, rtol) for n, r, g in zip(names, expected, got, strict=True)]

    failures = [row for row in parity if not row.ok]
    if failures:
        table = "; ".join(f"{r.graph} {r.output}: max |diff| {r.max_abs_diff:.3g}" for r in parity)
        raise ExportError(
            f"ONNX Runtime disagrees with PyTorch beyond atol={atol:g}, rtol={rtol:g} on "
            f"{len(failures)} output(s). Max differences: {table}"
        )

    graphs = [s.file for s in segments]
    package_id = package_id_of({name: sha256_file(stage / name) for name in graphs}, graphs)
    if boundaries:  # the input tail (the whole model on the server), after the boundaries' tails
        given = (inputs.numpy(), *context_feeds.values())  # a traced model's further inputs travel too
        stored = (reference["input"], *(reference[f"context/{name}"] for name in context_feeds))
        boundaries.append(BoundaryTensors(INPUT_BOUNDARY, given, stored))
    tails = write_tails(model, stage, boundaries, final_logits, codecs, package_id, atol, rtol)
    _check_tails(tails, int(inputs.shape[0]))
    for tail in tails:
        parity += [tail.parity.graph, tail.parity.chain]
        reference.update(tail.reference)

    np.savez(stage / "reference.npz", **reference)
    extra = [monolithic_file] if monolithic_file else []
    tokenizer_file = None
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer_file
    if tokenizer is not None:
        tokenizer_file = TOKENIZER_FILE
        _copy_tokenizer(Path(tokenizer), stage / tokenizer_file)
        extra.append(tokenizer_file)
    tail_files = [name for tail in tails for name in (tail.spec.file, tail.spec.config)]
    files = {name: sha256_file(stage / name) for name in [*graphs, *extra, *tail_files, "reference.npz"]}
    manifest = Manifest(
        format_version=1,
        model_name=model.name,
        package_id=package_id,
        edgeexit_version=edgeexit.__version__,
        opset=opset,
        input=InputSpec(
            name=input_name,
            shape=(None, None) if sequence else (None, *shape[1:]),
            dtype=str(inputs.numpy().dtype),
            layout=model.layout,
            preprocessing=preprocessing or (None if sequence else _default_preprocessing(shape)),
            context=tuple(_tensor_spec(name, value, sequence) for name, value in context_feeds.items()),
            tokenizer=tokenizer_file,
        ),
        labels=labels,
        segments=tuple(segments),
        exits=tuple(exits),
        files=files,
        reference=Reference(file="reference.npz", atol=atol, rtol=rtol),
        monolithic=monolithic_file,
        tails=tuple(tail.spec for tail in tails),
        metadata={
            "export": {
                "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
                "seconds": round(time.perf_counter() - started, 3),
                "parity_samples": int(inputs.shape[0]),
                "parity": [
                    {"graph": r.graph, "output": r.output, "max_abs_diff": r.max_abs_diff, "ok": r.ok} for r in parity
                ],
                "boundaries": [info.boundary for info in model.infos],
                "tails": [tail.parity.record() for tail in tails],
            }
        },
    )
    manifest.validate()
    atomic_write_text(stage / MANIFEST_FILE, manifest.to_json())
    return manifest


def parity_rows(package: Package) -> list[ParityCheck]:
    """The parity figures export measured, as recorded in the manifest."""
    record = package.manifest.metadata.get("export", {})
    return [
        ParityCheck(r["graph"], r["output"], float(r["max_abs_diff"]), bool(r["ok"])) for r in record.get("parity", [])
    ]


def _check_tails(tails: list[Tail], parity_samples: int) -> None:
    failures = [tail.parity for tail in tails if not tail.parity.ok]
    if failures:
        raise tail_failure(failures, parity_samples)


def _parity_inputs(
    model: MultiExitModel, shape: tuple[int, ...], sample: np.ndarray | Mapping[str, np.ndarray] | None
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The inputs every graph is exported with and checked on: up to 8 real samples + 2 random."""
    if model.context_names and model.context_everywhere:
        return _token_inputs(model, shape, sample)
    if model.context_names:
        return _several_inputs(model, sample)
    if isinstance(sample, Mapping):
        raise ExportError(f"sample is a mapping {sorted(sample)}; this image model takes one array of shape {shape}")
    generator = torch.Generator().manual_seed(0)
    random = torch.randn((4, *shape[1:]), generator=generator)
    if sample is None:
        return random, ()
    real = np.asarray(sample, dtype=np.float32)
    if real.shape[1:] != shape[1:]:
        raise ExportError(
            f"sample inputs have shape {real.shape[1:]} per item; expected {shape[1:]} (the --input-shape)"
        )
    return torch.cat([torch.from_numpy(real[:8].copy()), random[:2]]), ()


def _token_inputs(
    model: MultiExitModel, shape: tuple[int, ...], sample: np.ndarray | Mapping[str, np.ndarray] | None
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Token ids and context for a text encoder: the sample's, or seeded ids with some padding."""
    names = (model.input_name, *model.context_names)
    if sample is None:
        generator = torch.Generator().manual_seed(0)
        length = shape[1] if len(shape) > 1 else 16
        ids = torch.randint(1000, 2000, (4, length), generator=generator)
        mask = torch.ones((4, length), dtype=torch.long)
        for row, keep in enumerate((length, length - 3, length // 2, 2)):
            mask[row, max(keep, 1) :] = 0
        return ids * mask, tuple(mask.clone() for _ in model.context_names)
    if not isinstance(sample, Mapping) or any(name not in sample for name in names):
        found = sorted(sample) if isinstance(sample, Mapping) else type(sample).__name__
        raise ExportError(f"sample for a text encoder must map {list(names)} to (N, L) int arrays; got {found}")
    arrays = [np.asarray(sample[name]) for name in names]
    if any(a.ndim != 2 or a.shape != arrays[0].shape or not np.issubdtype(a.dtype, np.integer) for a in arrays):
        shapes = {name: (a.shape, str(a.dtype)) for name, a in zip(names, arrays, strict=True)}
        raise ExportError(f"sample arrays must all be (N, L) integers of one shape; got {shapes}")
    tensors = [torch.from_numpy(a[:8].astype(np.int64)) for a in arrays]
    return tensors[0], tuple(tensors[1:])


def _several_inputs(
    model: MultiExitModel, sample: np.ndarray | Mapping[str, np.ndarray] | None
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """A traced model's inputs (generic adapter): up to 8 of the sample's rows per input, and
    4 seeded rows shaped like the examples it was traced with."""
    names = (model.input_name, *model.context_names)
    examples = model.example_inputs((4,))
    generator = torch.Generator().manual_seed(0)
    random = [torch.randn(e.shape, generator=generator).to(e.dtype) if e.is_floating_point() else e for e in examples]
    if sample is None:
        return random[0], tuple(random[1:])
    if not isinstance(sample, Mapping) or sorted(sample) != sorted(names):
        found = sorted(sample) if isinstance(sample, Mapping) else type(sample).__name__
        raise ExportError(f"sample for this model must map each of its inputs {list(names)} to an array; got {found}")
    tensors = []
    for name, example in zip(names, random, strict=True):
        real = np.asarray(sample[name])
        if real.shape[1:] != tuple(example.shape[1:]):
            raise ExportError(
                f"sample input {name!r} has shape {real.shape[1:]} per item; expected {tuple(example.shape[1:])}"
            )
        tensors.append(torch.cat([torch.from_numpy(real[:8].copy()).to(example.dtype), example[:2]]))
    rows = {t.shape[0] for t in tensors}
    if len(rows) != 1:
        raise ExportError(f"sample inputs {list(names)} have different numbers of rows; expected one per input")
    return tensors[0], tuple(tensors[1:])


def _boundary_bytes(tensors: Sequence[TensorSpec]) -> int | None:
    """One sample's bytes over a boundary's tensors; None when a token axis makes one unknown."""
    sizes = [t.sample_bytes() for t in tensors]
    return None if any(size is None for size in sizes) else sum(sizes)  # type: ignore[misc]


def _tensor_spec(name: str, value: np.ndarray, sequence: bool = False) -> TensorSpec:
    """Batch axis dynamic; for a text encoder the token axis (axis 1) too."""
    dims = value.shape[1:]
    if sequence and dims:
        dims = (None, *dims[1:])
    return TensorSpec(name=name, shape=(None, *dims), dtype=str(value.dtype))


def _copy_tokenizer(source: Path, target: Path) -> None:
    try:
        text = source.read_text(encoding="utf-8")
        json.loads(text)
    except (OSError, ValueError) as err:
        raise ExportError(f"tokenizer {source} is unreadable ({err}); expected a tokenizers JSON file") from None
    atomic_write_text(target, text)


def _add_tflite(
    model: MultiExitModel,
    stage: Path,
    manifest: Manifest,
    inputs: torch.Tensor,
    context: tuple[torch.Tensor, ...],
    sequence_length: int | Sequence[int] | None,
) -> None:
    """Convert every segment to TFLite beside the ONNX ones, parity-checked against them."""
    from edgeexit.compile.tflite import write_tflite_variant

    variant, hashes = write_tflite_variant(model, stage, manifest, inputs, context, sequence_length=sequence_length)
    updated = manifest.with_variant(variant, hashes)
    updated.validate()
    atomic_write_text(stage / MANIFEST_FILE, updated.to_json())


def _flops(graph: nn.Module, one: tuple[torch.Tensor, ...]) -> int:
    """FLOPs of one sample (its input and context), counted by PyTorch's FlopCounterMode (matmuls, convs)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    # With autograd on, attention takes its decomposed path (linear + bmm) that the counter sees;
    # under no_grad nn.MultiheadAttention's fused fast path would count as zero.
    with counter, torch.enable_grad():
        graph(*one)
    return int(counter.get_total_flops())


def _default_preprocessing(shape: tuple[int, ...]) -> Preprocessing | None:
    if len(shape) == 4 and shape[1] in (1, 3):
        channels = shape[1]
        return Preprocessing(
            color_mode="L" if channels == 1 else "RGB",
            size=(shape[2], shape[3]),
            mean=(0.0,) * channels,
            std=(1.0,) * channels,
        )
    return None
