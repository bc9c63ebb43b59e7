"""What a codec is: ``encode(x) -> Encoded`` and ``decode(Encoded) -> x``, nothing else
(CompressAI's contract). Sizes are measured on what ``encode`` returns, never estimated.

A codec also names the tensors a tail model takes (``wire_inputs``), because the tail graph
decodes inside itself: the export writes those inputs into the graph and its config.pbtxt,
the device client sends them, the tail server checks requests against them.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class WireTensor:
    """One tail input: its name, v2 datatype and per-sample shape (no batch axis)."""

    name: str
    datatype: str
    dims: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Encoded:
    """An encoded batch of boundary tensors: ``data`` travels as raw bytes; an affine codec
    adds one scale and zero point for the whole request (dynamic quantization per request)."""

    codec: str
    data: np.ndarray
    scale: float | None = None
    zero_point: int | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data that travel (the request's framing and parameters excluded)."""
        return int(self.data.nbytes)

    def tensors(self) -> dict[str, np.ndarray]:
        """Every tail input as an array with the batch axis: what Triton-style clients send."""
        found = {HIDDEN: self.data}
        if self.scale is not None and self.zero_point is not None:
            n = self.data.shape[0]
            found[SCALE] = np.full((n, 1), self.scale, np.float32)
            found[ZERO_POINT] = np.full((n, 1), self.zero_point, np.uint8)
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


CODECS: Registry[type[Codec]] = Registry("codec")
