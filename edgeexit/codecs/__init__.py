"""Codecs for the boundary tensor a device offloads (numpy only), picked by name:
``fp32``, ``fp16``, ``int8``. See ``edgeexit.codecs.base`` for the contract."""

from __future__ import annotations

from edgeexit.codecs import affine, floats  # noqa: F401  (they register themselves)
from edgeexit.codecs.base import (
    CODECS,
    DATATYPES,
    HIDDEN,
    LOGITS,
    ORT_TYPES,
    SCALE,
    ZERO_POINT,
    Codec,
    Encoded,
    WireTensor,
    base_name,
    datatype_of,
    wire_name,
)


def create_codec(name: str) -> Codec:
    return CODECS.get(name)()


def list_codecs(pattern: str = "*") -> list[str]:
    return CODECS.names(pattern)


__all__ = [
    "CODECS",
    "DATATYPES",
    "HIDDEN",
    "LOGITS",
    "ORT_TYPES",
    "SCALE",
    "ZERO_POINT",
    "Codec",
    "Encoded",
    "WireTensor",
    "base_name",
    "create_codec",
    "datatype_of",
    "list_codecs",
    "wire_name",
]
