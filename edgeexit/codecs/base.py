"""What a codec is: ``encode(x) -> Encoded`` and ``decode(Encoded) -> x``, nothing else
(CompressAI's contract). Sizes are measured on what ``encode`` returns, never estimated.

A codec also names the tensors a tail model takes (``wire_inputs``), because the tail graph
decodes inside itself: the export writes those inputs into the graph and its config.pbtxt,
the device client sends them, the tail server checks requests against them.

A boundary may carry several tensors (a U-Net's skips beside its hidden tensor): each is encoded
on its own (its own scale and zero point), and the tail takes the j-th one's inputs under the
names ``hidden_j``, ``scale_j``, ``zero_point_j`` (j >= 1; the first keeps the plain names).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgeexit.registry import Registry

HIDDEN = "hidden"  # the encoded boundary tensor, every codec's first tail input
SCALE = "scale"  # affine codecs: per-sample scale, shape (N, 1)
ZERO_POINT = "zero_point"  # affine codecs: per-sample zero point, shape (N, 1)
LOGITS = "logits"  # every tail's output: the final exit's logits

# v2 protocol datatype strings and their numpy types (little-endian on the wire).
DATATYPES: dict[str, np.dtype] = {
    "FP32": np.dtype("<f4"),
    "FP16": np.dtype("<f2"),
    "FP64": np.dtype("<f8"),
    "UINT8": np.dtype("u1"),
    "INT8": np.dtype("i1"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "BOOL": np.dtype("?"),
}


# ONNX Runtime's type strings for the same datatypes (``NodeArg.type``), for checking a graph
# against its config.pbtxt.
ORT_TYPES: dict[str, str] = {
    "FP32": "tensor(float)",
    "FP16": "tensor(float16)",
    "FP64": "tensor(double)",
    "UINT8": "tensor(uint8)",
    "INT8": "tensor(int8)",
    "INT32": "tensor(int32)",
    "INT64": "tensor(int64)",
    "BOOL": "tensor(bool)",
}


def datatype_of(array: np.ndarray) -> str:
    """The v2 datatype string of a numpy array's dtype."""
    for name, dtype in DATATYPES.items():
        if array.dtype == dtype:
            return name
    raise ValueError(f"dtype {array.dtype} has no v2 datatype; expected one of {', '.join(DATATYPES)}")


def wire_name(base: str, j: int) -> str:
    """The tail input ``base`` (hidden, scale, zero_point) of a boundary's j-th tensor."""
    return base if j == 0 else f"{base}_{j}"


def base_name(name: str) -> str:
    """``wire_name``'s inverse: ``scale_2`` -> ``scale``; a name without a numeric suffix as is."""
    head, _, tail = name.rpartition("_")
    return head if head and tail.isdigit() else name


@dataclass(frozen=True)
class WireTensor:
    """One tail input: its name, v2 datatype and per-sample shape (no batch axis)."""

    name: str
    datatype: str
    dims: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Encoded:
    """An encoded batch of boundary tensors: ``data`` travels as raw bytes; an affine codec
    adds one scale and zero point for the whole request (dynamic quantization per request).
    ``more``: the boundary's further tensors, each encoded on its own, in the boundary's order."""

    codec: str
    data: np.ndarray
    scale: float | None = None
    zero_point: int | None = None
    more: tuple[Encoded, ...] = ()

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data that travel (the request's framing and parameters excluded)."""
        return int(self.data.nbytes) + sum(part.nbytes for part in self.more)

    @property
    def parts(self) -> tuple[Encoded, ...]:
        """Every tensor of the boundary, this one first, each with its own side values."""
        return (self, *self.more) if self.more else (self,)

    def tensors(self) -> dict[str, np.ndarray]:
        """Every tail input as an array with the batch axis: what Triton-style clients send."""
        found: dict[str, np.ndarray] = {}
        for j, part in enumerate(self.parts):
            found[wire_name(HIDDEN, j)] = part.data
            if part.scale is not None and part.zero_point is not None:
                n = part.data.shape[0]
                found[wire_name(SCALE, j)] = np.full((n, 1), part.scale, np.float32)
                found[wire_name(ZERO_POINT, j)] = np.full((n, 1), part.zero_point, np.uint8)
        return found


class Codec:
    """Turns a float32 boundary tensor into what travels, and back."""

    name: str = ""
    datatype: str = ""  # v2 datatype of the encoded ``hidden`` tensor

    def encode(self, x: np.ndarray) -> Encoded:
        raise NotImplementedError

    def decode(self, payload: Encoded) -> np.ndarray:
        raise NotImplementedError

    def wire_inputs(self, dims: tuple[int, ...]) -> tuple[WireTensor, ...]:
        """The tail model's inputs for a boundary tensor of per-sample shape ``dims``."""
        return (WireTensor(HIDDEN, self.datatype, tuple(dims)),)

    def encode_boundary(self, tensors: Sequence[np.ndarray]) -> Encoded:
        """A boundary of one or several tensors (the hidden one first), each encoded on its own."""
        first = self.encode(tensors[0])
        if len(tensors) == 1:
            return first
        return dataclasses.replace(first, more=tuple(self.encode(t) for t in tensors[1:]))

    def boundary_wire_inputs(self, dims: Sequence[tuple[int, ...]]) -> tuple[WireTensor, ...]:
        """The tail's inputs for a boundary whose tensors have per-sample shapes ``dims``, in order."""
        return tuple(
            WireTensor(wire_name(wire.name, j), wire.datatype, wire.dims)
            for j, shape in enumerate(dims)
            for wire in self.wire_inputs(tuple(shape))
        )


CODECS: Registry[type[Codec]] = Registry("codec")
