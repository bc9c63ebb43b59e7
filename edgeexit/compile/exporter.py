"""The one ONNX exporter every graph of a package goes through: segments, the monolithic graph, tails.

One function so that every graph gets the same exporter (torch.onnx, dynamo), the same opset, the
same dynamic batch axis on every input and the same ``onnx.checker`` full check: a tail that took
a different path than the segments it continues would be a second thing to trust.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from edgeexit.errors import ExportError
from edgeexit.fileio import atomic_write_bytes


def export_graph(
    graph: nn.Module,
    examples: Sequence[torch.Tensor],
    path: Path,
    in_names: Sequence[str],
    out_names: Sequence[str],
    what: str,
    *,
    dynamic_sequence: bool = False,
    dynamic_shapes: Sequence[object] | None = None,
) -> int:
    """torch.onnx (dynamo) with a dynamic batch axis on every input; returns the default-domain opset.

    ``dynamic_sequence`` makes axis 1 of every input dynamic too (a text encoder's token axis:
    ids, attention mask and hidden states all have it there).

    ``examples`` are the forward's positional inputs, in the order of ``in_names``; they all share
    one batch dimension, so a graph with several inputs (an int8 tail's hidden, scale, zero point)
    cannot be fed inputs of different batch sizes.

    ``dynamic_shapes``: torch.export's own per-input axes instead (a decoder's layer group, whose
    past, new and total lengths are three dynamic axes that the graph relates).
    """
    import onnx

    if len(examples) != len(in_names):
        raise ExportError(f"{what}: {len(examples)} example inputs for {len(in_names)} input names {list(in_names)}")
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    batch = torch.export.Dim("batch")
    axes: dict[int, object] = {0: batch, 1: torch.export.Dim("sequence")} if dynamic_sequence else {0: batch}
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's own deprecation chatter, not the user's concern
            program = torch.onnx.export(
                graph,
                tuple(examples),
                None,
                dynamo=True,
                input_names=list(in_names),
                output_names=list(out_names),
                dynamic_shapes=tuple(dynamic_shapes)
                if dynamic_shapes is not None
                else _dynamic_shapes(graph, len(examples), axes),
                external_data=False,
            )
            program.save(str(path), external_data=False)
    except Exception as err:
        raise ExportError(f"torch.onnx.export failed for {what}: {err}\n{chatter.getvalue()[-2000:]}") from None
    finally:
        graph.eval()  # one export path was seen leaving modules in training mode
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as err:
        raise ExportError(f"onnx.checker rejected {what} ({path.name}): {err}") from None
    proto = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _dynamic_shapes(graph: nn.Module, count: int, axes: dict[int, object]) -> tuple[object, ...]:
    return shaped_like_forward(graph, [dict(axes) for _ in range(count)])


def shaped_like_forward(graph: nn.Module, shapes: Sequence[object]) -> tuple[object, ...]:
    """torch.export wants dynamic_shapes shaped like forward's signature: a ``*inputs`` parameter
    is one tuple of inputs, so its entries go in a nested tuple (none for an empty one)."""
    parameters = inspect.signature(graph.forward).parameters.values()
    fixed = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)
    if len(shapes) <= fixed or not any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return tuple(shapes)
    return (*shapes[:fixed], tuple(shapes[fixed:]))


def expose_initializer(path: Path, initializer: str, input_name: str, what: str) -> None:
    """Rename the constant ``initializer`` of the graph at ``path`` to ``input_name`` and list it
    as a graph input too: an overridable initializer, fed when a caller has a value for it and
    its stored value otherwise (ONNX IR >= 4). Every consumer that does not know the input
    (verify, quantization, Triton, an older runtime) runs the graph unchanged at the default."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    graph = proto.graph
    found = next((t for t in graph.initializer if t.name == initializer), None)
    if found is None:
        raise ExportError(
            f"{what}: the exported graph has no constant {initializer!r} to expose as input {input_name!r}; "
            f"expected the exporter to keep the module's buffer (found {[t.name for t in graph.initializer][:8]})"
        )
    found.name = input_name
    for node in graph.node:
        node.input[:] = [input_name if name == initializer else name for name in node.input]
    graph.input.append(onnx.helper.make_tensor_value_info(input_name, found.data_type, list(found.dims)))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as err:
        raise ExportError(f"onnx.checker rejected {what} after exposing {input_name!r}: {err}") from None
    atomic_write_bytes(path, proto.SerializeToString())
