"""How an int8 variant stores its numbers, and the float oracle that says what they must compute.

ONNX Runtime's integer kernels differ by CPU. On x86 without VNNI (AVX2, AVX-512 without VNNI) a
u8 x s8 product pair is summed by ``VPMADDUBSW`` into 16 bits, which saturates when both pairs are
large (255 x 127 x 2 > 32,767); ONNX Runtime's quantization docs warn of it and advise 7-bit
weights (``reduce_range``) or U8U8. With VNNI (``VPDPBUSD``, 32-bit sums) and on ARM (``SDOT`` /
``UDOT``) nothing saturates. So the same int8 graph gave visibly different answers on an AVX2
EPYC and an AVX-512 VNNI Xeon. Measured on an AVX2-only EPYC (``tools/bench_int8_schemes.py``):
the old defaults were off from exact integer arithmetic by 17.6% (static s8s8, a small CNN), 31%
(dynamic u8s8, all-MiniLM-L6-v2) and 121% (s8s8, EfficientNet-Lite0) of an exit output's range,
while 7-bit weights and u8u8 stayed at rounding level (0.00% on the CNN, u8u8 0.00% on MiniLM,
at most 2.2% on EfficientNet-Lite0). One catch:
ONNX Runtime fuses dynamic u8s8 MatMuls into DynamicQuantizeMatMul, which quantizes activations
with its own rounding, so u8s8-7bit drifted 13% from the oracle on MiniLM though no product
saturated; u8u8 is not fused that way and stayed exact. The check below is what catches such things.

A scheme here is chosen so that no kernel on any CPU can saturate: its integer products are
exact everywhere, so an int8 variant means the same thing on a Xeon, an EPYC and a Raspberry Pi.
What is exact is checked, not assumed: ``float_oracle`` rewrites a quantized graph so that every
integer product runs in float (ONNX Runtime with graph optimizations off, so no kernel is fused),
which is the arithmetic the graph specifies; ``edgeexit quantize`` compares this machine's kernels
with it and records the oracle's outputs on the package's reference sample, and ``edgeexit verify``
holds the device's kernels to them.

The schemes are plain records; ``float_oracle`` (workstation side) imports onnx when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeexit.errors import UnknownNameError, UsageError

__all__ = ["DEFAULT_SCHEMES", "SCHEMES", "Int8Scheme", "float_oracle", "get_scheme"]


@dataclass(frozen=True)
class Int8Scheme:
    """The integer types of a quantized graph's activations and weights.

    ``reduce_range`` stores weights in 7 bits (-64..63), which keeps every pair of u8 x s8
    products inside 16 bits: the price is one bit of weight resolution. ``saturation_free`` says
    whether the scheme's products are exact on every CPU ONNX Runtime targets."""

    name: str
    activations: str  # "int8" or "uint8"
    weights: str  # "int8" or "uint8"
    reduce_range: bool
    saturation_free: bool

    def record(self) -> dict[str, Any]:
        """What the manifest keeps: enough to say how the variant was built and to rebuild it."""
        return {
            "name": self.name,
            "activations": self.activations,
            "weights": self.weights,
            "reduce_range": self.reduce_range,
            "saturation_free": self.saturation_free,
        }

    def quant_types(self) -> tuple[Any, Any]:
        """ONNX Runtime's ``QuantType`` for activations and weights."""
        from onnxruntime.quantization import QuantType

        types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
        return types[self.activations], types[self.weights]


SCHEMES: dict[str, Int8Scheme] = {
    scheme.name: scheme
    for scheme in (
        Int8Scheme("s8s8-7bit", "int8", "int8", True, True),  # static default
        # exact products, but dynamic graphs fuse into DynamicQuantizeMatMul, whose own activation
        # rounding drifted 13% from the oracle on MiniLM
        Int8Scheme("u8s8-7bit", "uint8", "int8", True, True),
        Int8Scheme("u8u8", "uint8", "uint8", False, True),  # no VPMADDUBSW, so no saturation; dynamic default
        Int8Scheme("s8s8", "int8", "int8", False, False),  # saturates on x86 without VNNI
        Int8Scheme("u8s8", "uint8", "int8", False, False),  # ONNX Runtime's dynamic default; saturates likewise
    )
}  # fmt: skip
#: Per quantization mode (static QDQ, dynamic): saturation-free schemes, measured in docs/benchmarks.md.
#: Dynamic takes u8u8: on MiniLM it was exact against the oracle, agreed with fp32 as well as
#: u8s8-7bit (92.7 vs 92.3%) and ran as fast on AVX2 (0.65x vs 0.70x of fp32).
DEFAULT_SCHEMES = {"static": "s8s8-7bit", "dynamic": "u8u8"}


def get_scheme(name: str | None, mode: str) -> Int8Scheme:
    """The named scheme, or the mode's default. Dynamic quantization always has uint8 activations
    (``DynamicQuantizeLinear`` makes them), so a scheme with int8 activations is refused there."""
    chosen = name if name is not None else DEFAULT_SCHEMES[mode]
    if chosen not in SCHEMES:
        raise UnknownNameError(f"unknown int8 scheme {chosen!r}; expected one of: {', '.join(SCHEMES)}")
    scheme = SCHEMES[chosen]
    if mode == "dynamic" and scheme.activations != "uint8":
        dynamic = ", ".join(n for n, s in SCHEMES.items() if s.activations == "uint8")
        raise UsageError(
            f"int8 scheme {chosen!r} has int8 activations, but dynamic quantization always makes uint8 ones; "
            f"expected one of: {dynamic}"
        )
    return scheme


#: Integer ops whose products the oracle computes in float, and the float op that replaces each.
_INTEGER_OPS = {"MatMulInteger": "MatMul", "ConvInteger": "Conv"}


def float_oracle(quantized: Path, out: Path) -> None:
    """Write ``quantized`` with every integer product made float: ``MatMulInteger(a, b, za, zb)``
    becomes ``Cast(MatMul(float(a) - float(za), float(b) - float(zb)), int32)`` (likewise
    ``ConvInteger``, its attributes kept). Run it with graph optimizations off, so that the QDQ
    pairs of a static graph stay Dequantize -> float op -> Quantize instead of fused integer kernels.

    float32 holds every product and sum exactly up to 2**24; beyond that it rounds relative to the
    sum (1e-7), far below one quantization step, which is what the comparison needs to see."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(quantized))
    nodes = []
    for n, node in enumerate(model.graph.node):
        if node.op_type not in _INTEGER_OPS:
            nodes.append(node)
            continue
        prefix = f"edgeexit_oracle_{n}"
        operands = []
        for side, (value, zero) in enumerate(((node.input[0], _input(node, 2)), (node.input[1], _input(node, 3)))):
            as_float = f"{prefix}/{side}/float"
            nodes.append(helper.make_node("Cast", [value], [as_float], to=TensorProto.FLOAT))
            if zero:
                zero_float = f"{prefix}/{side}/zero"
                nodes.append(helper.make_node("Cast", [zero], [zero_float], to=TensorProto.FLOAT))
                if node.op_type == "ConvInteger" and side == 1:  # per output channel: (M,) -> (M, 1, 1, ...)
                    zero_float = _per_channel(nodes, zero_float, prefix, model, node)
                centred = f"{prefix}/{side}/centred"
                nodes.append(helper.make_node("Sub", [as_float, zero_float], [centred]))
                as_float = centred
            operands.append(as_float)
        product = f"{prefix}/product"
        nodes.append(helper.make_node(_INTEGER_OPS[node.op_type], operands, [product], name=f"{prefix}/op"))
        nodes[-1].attribute.extend(node.attribute)
        nodes.append(helper.make_node("Cast", [product], [node.output[0]], to=TensorProto.INT32))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(out))


def _input(node: Any, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def _per_channel(nodes: list[Any], zero: str, prefix: str, model: Any, node: Any) -> str:
    """A ConvInteger's per-output-channel weight zero point, shaped to broadcast over its weight."""
    from onnx import helper, numpy_helper

    rank = next((len(init.dims) for init in model.graph.initializer if init.name == node.input[1]), 4)
    shape = numpy_helper.from_array(np.array([-1] + [1] * (rank - 1), dtype=np.int64), f"{prefix}/zero_shape")
    model.graph.initializer.append(shape)
    shaped = f"{prefix}/zero_shaped"
    nodes.append(helper.make_node("Reshape", [zero, shape.name], [shaped]))
    return shaped
