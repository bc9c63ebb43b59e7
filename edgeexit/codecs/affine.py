"""8-bit affine quantization, dynamic per request (a quarter of fp32's bytes).

Stored as uint8 with a zero point, ONNX QuantizeLinear's convention: ``x ≈ (q - zero_point) *
scale``. The range always includes 0, so exact zeros (ReLU outputs, padding) stay exact. The
scale and zero point are chosen from the request's own min and max, so nothing needs
calibrating; the tail graph dequantizes before its first layer.
"""

from __future__ import annotations

import numpy as np

from edgeexit.codecs.base import CODECS, SCALE, ZERO_POINT, Codec, Encoded, WireTensor


@CODECS.register("int8")
class Affine8(Codec):
    name = "int8"
    datatype = "UINT8"

    def encode(self, x: np.ndarray) -> Encoded:
        x = np.asarray(x, dtype=np.float32)
        low = min(float(x.min(initial=0.0)), 0.0)
        high = max(float(x.max(initial=0.0)), 0.0)
        scale = (high - low) / 255.0 if high > low else 1.0
        zero_point = int(np.clip(round(-low / scale), 0, 255))
        q = np.clip(np.rint(x / np.float32(scale)) + zero_point, 0, 255).astype(np.uint8)
        return Encoded(self.name, q, scale=float(np.float32(scale)), zero_point=zero_point)

    def decode(self, payload: Encoded) -> np.ndarray:
        if payload.scale is None or payload.zero_point is None:
            raise ValueError("an int8 payload needs its scale and zero_point")
        return (payload.data.astype(np.float32) - np.float32(payload.zero_point)) * np.float32(payload.scale)

    def wire_inputs(self, dims: tuple[int, ...]) -> tuple[WireTensor, ...]:
        return (
            *super().wire_inputs(dims),
            WireTensor(SCALE, "FP32", (1,)),
            WireTensor(ZERO_POINT, "UINT8", (1,)),
        )
