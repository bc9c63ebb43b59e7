"""Weight-only quantized variants of a decoder's graphs: ONNX Runtime's MatMulNBits.

Decoding one token at batch 1 multiplies every weight matrix by a single vector, so a CPU spends
its time reading weights: four times fewer bytes per weight is what makes int4 fast, as
onnxruntime-genai ships it. Every MatMul with a constant weight becomes a MatMulNBits of ``bits``
(blocks of 32 along the input axis, symmetric, as onnxruntime-genai's builder does), with
``accuracy_level`` 4: activations are quantized to int8 inside the kernel, the path ONNX Runtime
has fast kernels for on AVX2 and AVX-512 alike (measured here: the LM head at one token 2.7 ms
fp32, 0.35 ms int4, 0.95 ms int8; at levels 0-3 int8 unpacks its weights on every call and is
11-30x slower than fp32). Results at level 4 differ slightly between CPUs (int8 activations on
kernels of different widths), so agreement with fp32 is measured, not assumed.

The embedding stays float32: it is a row lookup, one row per token, and costs no bandwidth.
"""

from __future__ import annotations

from pathlib import Path

from edgeexit.errors import ExportError
from edgeexit.fileio import atomic_write_bytes

#: The variants ``export_decoder`` knows: name -> bits.
WEIGHT_VARIANTS = {"int8": 8, "int4": 4}
BLOCK_SIZE = 32
ACCURACY_LEVEL = 4


def quantize_weights(source: Path, target: Path, bits: int, *, block_size: int = BLOCK_SIZE) -> int:
    """Write ``source`` with its constant-weight MatMuls as ``bits``-bit MatMulNBits to ``target``;
    returns how many were converted (ExportError when none was: a graph the quantizer skipped, a
    Gemm or a weight it cannot see, would otherwise pass for quantized)."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size,
        is_symmetric=True,
        accuracy_level=ACCURACY_LEVEL,
        bits=bits,
        quant_format=QuantFormat.QOperator,
        op_types_to_quantize=("MatMul",),
    )
    quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), algo_config=config)
    chatty = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = chatty.level
    chatty.setLevel(logging.WARNING)  # a line per node at INFO, which the quantizer's own module turns on
    try:
        quantizer.process()
    finally:
        chatty.setLevel(level)
    proto = quantizer.model.model
    converted = sum(node.op_type == "MatMulNBits" for node in proto.graph.node)
    if converted == 0:
        raise ExportError(f"{source.name}: no MatMul was converted to {bits}-bit MatMulNBits; expected the weights")
    atomic_write_bytes(target, proto.SerializeToString())
    return converted
