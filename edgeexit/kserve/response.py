"""ModelInferResponse building: output tensors as raw bytes, and typed response parameters.

Outputs travel in ``raw_output_contents`` (little-endian, row-major), one entry per output in
the order of ``outputs``, as KServe v2 clients (tritonclient's ``as_numpy``) read them.
"""

from __future__ import annotations

from collections.abc import MutableMapping

import numpy as np

from edgeexit.transport.generated import grpc_service_pb2 as pb

__all__ = ["add_output", "set_parameter"]


def add_output(response: pb.ModelInferResponse, name: str, datatype: str, array: np.ndarray) -> None:
    """Append output ``name`` (``datatype``, ``array``'s shape) and its bytes to ``response``."""
    array = np.ascontiguousarray(array)
    response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
    response.raw_output_contents.append(array.tobytes())


def set_parameter(
    parameters: MutableMapping[str, pb.InferParameter], key: str, value: bool | int | float | str
) -> None:
    """Set ``key`` in the parameter oneof that fits ``value``'s type (bool before int: a bool is an int)."""
    parameter = parameters[key]
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    elif isinstance(value, str):
        parameter.string_param = value
    else:  # e.g. a numpy scalar: convert it, rather than guess its oneof
        raise TypeError(f"response parameter {key!r}: {type(value).__name__} is not bool, int, float or str")
