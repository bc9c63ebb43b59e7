"""Float codecs: fp32 sends the tensor as it is; fp16 halves it (the tail casts back in-graph)."""

from __future__ import annotations

import numpy as np

from edgeexit.codecs.base import CODECS, Codec, Encoded


@CODECS.register("fp32")
class Float32(Codec):
    name = "fp32"
    datatype = "FP32"

    def encode(self, x: np.ndarray) -> Encoded:
        return Encoded(self.name, np.ascontiguousarray(x, dtype=np.float32))

    def decode(self, payload: Encoded) -> np.ndarray:
        return payload.data.astype(np.float32, copy=False)


@CODECS.register("fp16")
class Float16(Codec):
    """Half precision: values beyond fp16's range (65504) saturate instead of becoming inf."""

    name = "fp16"
    datatype = "FP16"
    _LIMIT = float(np.finfo(np.float16).max)

    def encode(self, x: np.ndarray) -> Encoded:
        return Encoded(self.name, np.clip(x, -self._LIMIT, self._LIMIT).astype(np.float16))

    def decode(self, payload: Encoded) -> np.ndarray:
        return payload.data.astype(np.float32)
