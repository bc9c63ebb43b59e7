"""The KV cache in preallocated buffers, bound to the segment graphs without copying.

One float32 buffer per layer for keys and one for values, ``(capacity, batch, kv_heads,
head_dim)``: sequence-major, so the first ``n`` positions are one contiguous block. A segment
reads its past as a view of that block (bound by pointer: no copy) and ONNX Runtime writes the
new tokens' entries straight into the next positions (the output bound by pointer too). So a
token costs no copy of the cache, only the entries it adds.

Each segment (layer group) keeps its own length: a token that leaves at an early exit fills the
layers it ran and not the later ones, whose entries for it are computed when a later token goes
deeper (``pending``); a speculative draft that is rejected is taken back by shortening the
lengths (``truncate``), its entries overwritten by the next ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeexit.errors import InputError
from edgeexit.generation.manifest import DecoderShape


class KVCache:
    """Keys and values of every layer for ``batch`` sequences of up to ``capacity`` positions."""

    def __init__(self, shape: DecoderShape, segments: Sequence[range], *, batch: int, capacity: int) -> None:
        if capacity > shape.max_context:
            raise InputError(f"a cache of {capacity} positions is past the model's context of {shape.max_context}")
        self.capacity = capacity
        self.batch = batch
        slot = (capacity, batch, shape.kv_heads, shape.head_dim)
        self.keys = [np.zeros(slot, dtype=np.float32) for _ in range(shape.layers)]
        self.values = [np.zeros(slot, dtype=np.float32) for _ in range(shape.layers)]
        self.segments = [tuple(layers) for layers in segments]
        #: positions filled per segment (every layer of a segment is filled alike)
        self.lengths = [0] * len(self.segments)
        #: bytes per position of one layer's keys (the stride a pointer moves by)
        self.position_bytes = batch * shape.kv_heads * shape.head_dim * 4
        self.entry_shape = (batch, shape.kv_heads, shape.head_dim)

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in zip(self.keys, self.values, strict=True))

    def room(self, segment: int, new: int) -> None:
        """Refuse ``new`` more positions for ``segment`` past the capacity, in words a caller can act on."""
        if self.lengths[segment] + new > self.capacity:
            raise InputError(
                f"{self.lengths[segment]} cached + {new} new tokens exceed the cache of {self.capacity} positions; "
                "shorten the prompt or max_new_tokens"
            )

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on, in every segment (a rejected draft)."""
        self.lengths = [min(n, length) for n in self.lengths]

    def reset(self) -> None:
        self.lengths = [0] * len(self.segments)
