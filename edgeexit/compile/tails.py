"""Tails: the rest of the network from a boundary, as a Triton-layout model repository (``tails/``).

A device that has not exited by boundary ``k`` may send boundary k's hidden tensor to a tail
server; the tail ``__from_input`` (boundary -1) takes the model input itself and runs the whole
model (the "offload at the input" baseline). The tail model takes that tensor *encoded* (fp32,
fp16, or 8-bit affine with its scale and zero point) and returns the final exit's logits. It
decodes inside its own graph, so Triton or KServe can serve ``tails/`` with no custom code, and
``edgeexit serve`` runs the very same file.
docs/offload.md is the contract: names, datatypes and shapes of every input and output.

Export measures every tail twice, because two different things can go wrong:

- graph parity (row ``tail <name>``): ONNX Runtime vs PyTorch on the *same* encoded input, held
  to the segments' tolerance for every codec, since decoding is exact fp32 arithmetic. It checks
  the export, as the segments' rows do.
- codec parity (row ``chain via <name>``): the ONNX Runtime segment chain up to boundary ``k``,
  encoded, through the tail, vs the final logits of the full local PyTorch run. It measures what
  offloading costs: nothing beyond the segments' tolerance for fp32, fp16's rounding (held to
  ``FP16_ATOL`` / ``FP16_RTOL``), int8's quantization (reported, and held only to a top-1
  agreement of ``MIN_INT8_AGREEMENT``: its logits move by design, its predictions should not).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeexit.codecs import LOGITS, create_codec, list_codecs
from edgeexit.compile.exporter import export_graph
from edgeexit.compile.model import MultiExitModel
from edgeexit.errors import ExportError
from edgeexit.manifest import TailSpec
from edgeexit.parity import ParityCheck, compare
from edgeexit.repository import tail_config, tail_model_name, write_config
from edgeexit.runtime.sessions import load_session
from edgeexit.runtime.verify import tail_reference_key

TAILS_DIR = "tails"
MODEL_FILE = "model.onnx"
#: fp16 tail vs the full fp32 run: |tail - local| <= FP16_ATOL + FP16_RTOL * |local| per logit.
#: Half precision keeps 11 significant bits (relative step 2**-11 ~ 4.9e-4) of each hidden value.
#: Measured: the trained digits test model's logits (|x| up to ~6.4) moved by at most ~2e-3, over
#: all 1,797 digits images by 1.7e-3 (a tenth of this bound); tiny_vit's by 3e-4. The bound leaves
#: room for deeper tails and larger logits while still catching a tail that computes something else.
FP16_ATOL = 1e-2
FP16_RTOL = 1e-2
#: int8 tail vs the full fp32 run: the share of parity samples whose top-1 class must agree.
#: Quantization moves logits by design (the digits model's by ~0.02-0.035, with 99.9-100% of the
#: 1,797 images keeping their class), so only the predictions are held: below this, it changes answers.
MIN_INT8_AGREEMENT = 0.9


def _decode_fp32(hidden: torch.Tensor, scale: torch.Tensor | None, zero_point: torch.Tensor | None) -> torch.Tensor:
    return hidden


def _decode_fp16(hidden: torch.Tensor, scale: torch.Tensor | None, zero_point: torch.Tensor | None) -> torch.Tensor:
    return hidden.to(torch.float32)


def _decode_int8(hidden: torch.Tensor, scale: torch.Tensor | None, zero_point: torch.Tensor | None) -> torch.Tensor:
    """``(hidden - zero_point) * scale``, one scale and zero point per sample ([N, 1] broadcast over dims)."""
    if scale is None or zero_point is None:
        raise ExportError("an int8 tail is fed three inputs: hidden, scale and zero_point; got only hidden")
    per_sample = (-1,) + (1,) * (hidden.dim() - 1)
    return (hidden.to(torch.float32) - zero_point.to(torch.float32).reshape(per_sample)) * scale.reshape(per_sample)


Decoder = Callable[[torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"], torch.Tensor]
#: Codecs a tail can decode inside its graph (the numpy codecs in edgeexit.codecs do the encoding).
DECODERS: dict[str, Decoder] = {"fp32": _decode_fp32, "fp16": _decode_fp16, "int8": _decode_int8}


def check_codecs(codecs: Sequence[str] | str) -> tuple[str, ...]:
    """The codecs to write tails for, validated and without repeats; a string is comma-separated.

    Checked before export writes anything, so a typo costs nothing.
    """
    names = codecs.split(",") if isinstance(codecs, str) else list(codecs)
    chosen = tuple(dict.fromkeys(str(name).strip() for name in names if str(name).strip()))
    known = list_codecs()
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise ExportError(
            f"unknown codec(s) {', '.join(map(repr, unknown))}; expected some of {', '.join(known)} "
            "(e.g. --codecs fp32,fp16,int8)"
        )
    undecodable = [name for name in chosen if name not in DECODERS]
    if undecodable:
        raise ExportError(
            f"codec(s) {', '.join(map(repr, undecodable))} have no in-graph decoder, so no tail can take them; "
            f"expected some of {', '.join(DECODERS)}"
        )
    return chosen


class TailGraph(nn.Module):
    """Boundary ``k``'s encoded tensors -> decode -> segments k+1 .. last -> the final exit's logits
    (k = -1: the model input, through every segment).

    Its inputs are each boundary tensor's codec inputs in turn (``hidden``, then for int8 ``scale``
    and ``zero_point``; then ``hidden_1``, ... for a boundary of several tensors)."""

    def __init__(self, model: MultiExitModel, boundary: int, codec: str) -> None:
        super().__init__()
        if not -1 <= boundary < model.num_exits - 1:
            raise ExportError(
                f"no tail from boundary {boundary}: model {model.name!r} has boundaries 0..{model.num_exits - 2} "
                "with a later segment, and -1 (the model input)"
            )
        self.decode: Decoder = DECODERS[codec]
        self.per_tensor = len(create_codec(codec).wire_inputs(()))  # hidden (, scale, zero_point)
        self.body = nn.ModuleList(model.segments[boundary + 1 :])  # the model's own modules, not copies
        self.head = model.head(model.num_exits - 1)

    def forward(self, *wire: torch.Tensor) -> torch.Tensor:
        step = self.per_tensor
        groups = [wire[i : i + step] for i in range(0, len(wire), step)]
        carried: tuple[torch.Tensor, ...] = tuple(self.decode(*group, *(None,) * (3 - step)) for group in groups)
        for segment in self.body:  # a traced segment (the generic adapter) returns its boundary as a tuple
            result = segment(*carried)
            carried = result if isinstance(result, tuple) else (result,)
        return self.head(carried[0])


@dataclass(frozen=True)
class BoundaryTensors:
    """What the segment chain produced at boundary ``k``: what its tails are built and measured on
    (k = -1: the model input itself)."""

    boundary: int
    onnx: tuple[np.ndarray, ...]  # the ONNX Runtime chain's boundary tensors on the parity inputs: what a device sends
    reference: tuple[np.ndarray, ...]  # PyTorch's boundary tensors on the reference samples (reference.npz)


@dataclass(frozen=True)
class TailParity:
    """What export measured on one tail (see the module docstring for the two comparisons)."""

    model: str
    codec: str
    boundary: int
    graph: ParityCheck  # ONNX Runtime vs PyTorch, same encoded input
    chain: ParityCheck  # vs the full local run's final logits
    agreement: float  # share of parity samples whose top-1 class matches the full local run
    tolerance: str  # what ``chain`` was held to, in words

    @property
    def ok(self) -> bool:
        return self.graph.ok and self.chain.ok

    def record(self) -> dict[str, object]:
        """The manifest's metadata entry (``export.tails``), read back by ``edgeexit inspect``."""
        return {
            "model": self.model,
            "codec": self.codec,
            "boundary": self.boundary,
            "max_abs_diff": self.chain.max_abs_diff,
            "agreement": self.agreement,
            "tolerance": self.tolerance,
            "ok": self.ok,
        }


@dataclass(frozen=True)
class Tail:
    """One written tail: its manifest entry, its parity, and PyTorch's outputs for reference.npz."""

    spec: TailSpec
    parity: TailParity
    reference: dict[str, np.ndarray]


def write_tails(
    model: MultiExitModel,
    stage: Path,
    boundaries: Sequence[BoundaryTensors],
    final_logits: np.ndarray,
    codecs: Sequence[str],
    package_id: str,
    atol: float,
    rtol: float,
) -> list[Tail]:
    """One tail per boundary and codec under ``stage/tails``; ``final_logits``: the full local run's."""
    return [
        _write_tail(model, stage, tensors, final_logits, codec, package_id, atol, rtol)
        for tensors in boundaries
        for codec in codecs
    ]


def _write_tail(
    model: MultiExitModel,
    stage: Path,
    tensors: BoundaryTensors,
    final_logits: np.ndarray,
    codec: str,
    package_id: str,
    atol: float,
    rtol: float,
) -> Tail:
    k = tensors.boundary
    name = tail_model_name(model.name, k, codec)
    relative = f"{TAILS_DIR}/{name}/1/{MODEL_FILE}"
    dims = tuple(tuple(int(d) for d in array.shape[1:]) for array in tensors.onnx)
    graph = TailGraph(model, k, codec).eval()
    coder = create_codec(codec)
    in_names = [wire.name for wire in coder.boundary_wire_inputs(dims)]
    feed = coder.encode_boundary(tensors.onnx).tensors()  # one request: a scale and zero point per tensor
    expected = _torch_logits(graph, feed, in_names)
    (stage / relative).parent.mkdir(parents=True)
    export_graph(graph, [torch.from_numpy(feed[n].copy()) for n in in_names], stage / relative, in_names, [LOGITS],
                 f"tail {name}")  # fmt: skip
    got = load_session(stage / relative).run([LOGITS], feed)[0]
    write_config(
        stage / TAILS_DIR / name,
        tail_config(
            name=name,
            codec=codec,
            boundary=k,
            hidden_dims=dims[0],
            num_classes=model.num_classes,
            package_id=package_id,
            more_dims=dims[1:],
        ),
    )
    spec = TailSpec(
        boundary=k,
        model=name,
        file=relative,
        codec=codec,
        # measured, not computed: the first parity input (a real sample when export was given ``sample``)
        encoded_bytes=coder.encode_boundary([array[:1] for array in tensors.onnx]).nbytes,
    )
    reference_feed = coder.encode_boundary(tensors.reference).tensors()
    return Tail(
        spec=spec,
        parity=_parity(name, codec, k, expected, got, final_logits, atol, rtol),
        reference={tail_reference_key(name): _torch_logits(graph, reference_feed, in_names)},
    )


def _torch_logits(graph: TailGraph, feed: dict[str, np.ndarray], in_names: Sequence[str]) -> np.ndarray:
    # copies: a tail may start with an in-place op (ReLU(inplace=True)) that must not touch the feed
    with torch.no_grad():
        return graph(*(torch.from_numpy(feed[n].copy()) for n in in_names)).numpy()


def _parity(
    name: str,
    codec: str,
    boundary: int,
    expected: np.ndarray,
    got: np.ndarray,
    final_logits: np.ndarray,
    atol: float,
    rtol: float,
) -> TailParity:
    graph = compare(f"tail {name}", LOGITS, expected, got, atol, rtol)
    agreement = float(np.mean(got.argmax(axis=-1) == final_logits.argmax(axis=-1)))
    where = f"chain via {name}"
    if codec == "int8":
        diff = compare(where, LOGITS, final_logits, got, 0.0, 0.0).max_abs_diff
        chain = ParityCheck(where, LOGITS, diff, agreement >= MIN_INT8_AGREEMENT)
        tolerance = f"top-1 agreement >= {MIN_INT8_AGREEMENT:.0%}"
    else:
        tail_atol, tail_rtol = (FP16_ATOL, FP16_RTOL) if codec == "fp16" else (atol, rtol)
        chain = compare(where, LOGITS, final_logits, got, tail_atol, tail_rtol)
        tolerance = f"atol={tail_atol:g}, rtol={tail_rtol:g}"
    return TailParity(name, codec, boundary, graph, chain, agreement, tolerance)


def tail_failure(failures: Sequence[TailParity], parity_samples: int) -> ExportError:
    """The error export raises when a tail misses its tolerance, with every number it measured."""
    rows = "; ".join(
        f"{p.model}: vs PyTorch max |diff| {p.graph.max_abs_diff:.3g} ({'ok' if p.graph.ok else 'FAILED'}), "
        f"vs the full local run max |diff| {p.chain.max_abs_diff:.3g} and top-1 agreement {p.agreement:.0%} "
        f"(held to {p.tolerance}: {'ok' if p.chain.ok else 'FAILED'})"
        for p in failures
    )
    return ExportError(
        f"{len(failures)} tail(s) missed their parity on {parity_samples} samples: {rows}. "
        "A tail that differs from PyTorch is an export bug; one that differs only from the full run "
        "loses too much in its codec: drop that codec from --codecs (fp32 is exact)"
    )
