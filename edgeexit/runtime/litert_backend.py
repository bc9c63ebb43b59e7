"""Segments on LiteRT (TFLite): the same interface as ``OrtSegment``, for boxes that run TFLite.

numpy and ``ai_edge_litert`` only, imported lazily so a device without the ``[tflite]`` extra
still loads this module's callers. (The old ``tflite-runtime`` wheel needs numpy<2, so it is
not supported.)

The ``.tflite`` graphs come from ``edgeexit.compile.tflite`` (litert-torch). Their signature
names tensors by position, ``args_0..`` and ``output_0..``, so they are mapped to the
manifest's names by order: the graph's inputs are ``spec.inputs`` in order (the hidden tensor,
then any context such as an ``attention_mask``), its outputs ``spec.outputs`` in order. Load
checks that mapping against the manifest's shapes (every axis but the dynamic ones) and refuses
a graph that does not match, so a wrong order can never run silently.

Batching: the converter exports a dynamic batch axis, so a batch of N runs as one invoke after
``resize_tensor_input`` + ``allocate_tensors`` (done only when the input shapes change, since
re-planning costs more than a small segment's invoke). A graph whose batch is fixed at 1 (the
converter's fallback when a model would not export with a dynamic batch) runs its batch one
sample at a time: resizing such a graph fails in XNNPACK on its baked-in reshapes.

Tokens: a text encoder's graphs have a fixed token length (litert-torch converts them only with
static shapes; ``edgeexit.compile.tflite``) where the manifest's token axis is dynamic. A shorter
request is padded along axis 1 with zeros, ids 0 and ``attention_mask`` 0, so the padding is
masked out and the real tokens' outputs are what the ONNX graphs give; every token output
(N, L, ...) is cropped back to the request's length. A longer request is an InputError naming the
limit: truncating it would silently change the answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeexit.errors import InputError, PackageError
from edgeexit.manifest import SegmentSpec, TensorSpec

TFLITE_EXTRA = "pip install 'edgeexit[tflite]'"


def load_interpreter(path: Path, threads: int) -> Any:
    """An ``ai_edge_litert`` Interpreter for ``path``, with a clear error when the runtime is absent."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as err:
        raise PackageError(
            f"running the TFLite segments needs ai-edge-litert, which is not importable ({err}); "
            f"install it with {TFLITE_EXTRA}, or run the ONNX segments (backend onnxruntime)"
        ) from None
    try:
        return Interpreter(model_path=str(path), num_threads=threads)
    except (ValueError, RuntimeError) as err:
        raise PackageError(
            f"{path} is not a loadable TFLite model ({err}); re-export the package with --tflite"
        ) from None


def _matches(spec: TensorSpec, signature: np.ndarray) -> bool:
    """The graph's shape signature (-1: dynamic) agrees with the manifest's (None: dynamic)."""
    if len(spec.shape) != len(signature):
        return False
    return all(want is None or int(got) in (-1, want) for want, got in zip(spec.shape[1:], signature[1:], strict=True))


class LiteRtSegment:
    """One ``.tflite`` segment and the names the manifest gives its tensors."""

    def __init__(self, path: Path, spec: SegmentSpec, *, threads: int = 1) -> None:
        self.spec = spec
        self.path = Path(path)
        self.interpreter = load_interpreter(self.path, threads)
        inputs, outputs = _signature_tensors(self.interpreter, self.path)
        self._check(inputs, spec.inputs, "inputs")
        self._check(outputs, spec.outputs, "outputs")
        self._inputs = [(want.name, d["index"], d["dtype"]) for want, d in zip(spec.inputs, inputs, strict=True)]
        self._outputs = [(want.name, d["index"], want.dtype) for want, d in zip(spec.outputs, outputs, strict=True)]
        self.dynamic_batch = all(int(d["shape_signature"][0]) == -1 for d in inputs)
        self.sequence_length = self._token_length(inputs)
        #: Outputs with a token axis (the manifest's axis 1 is dynamic): cropped after padding.
        self._token_outputs = {t.name for t in spec.outputs if len(t.shape) >= 2 and t.shape[1] is None}
        #: Padded input buffers by (input position, shape): np.pad costs ~20 us a call, a copy ~1 us.
        self._buffers: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}
        self._shapes: tuple[tuple[int, ...], ...] | None = None
        self._ensure([tuple(int(n) for n in d["shape"]) for d in inputs])

    def _check(self, found: list[dict[str, Any]], wanted: tuple[TensorSpec, ...], kind: str) -> None:
        have = [(d["name"], [int(n) for n in d["shape_signature"]]) for d in found]
        expect = [(t.name, list(t.shape)) for t in wanted]
        if len(found) != len(wanted) or not all(
            _matches(t, d["shape_signature"]) for t, d in zip(wanted, found, strict=True)
        ):
            raise PackageError(
                f"{self.path} has {kind} {have}; the manifest declares segment {self.spec.index}'s {kind} "
                f"{expect} (in this order, None and -1 mark dynamic axes); the .tflite file does not belong "
                "to this manifest: re-export the package with --tflite"
            )

    def _token_length(self, inputs: list[dict[str, Any]]) -> int | None:
        """The graph's fixed token length, where the manifest's token axis (axis 1) is dynamic."""
        found = {
            int(d["shape_signature"][1])
            for want, d in zip(self.spec.inputs, inputs, strict=True)
            if len(want.shape) >= 2 and want.shape[1] is None and int(d["shape_signature"][1]) != -1
        }
        if len(found) > 1:
            raise PackageError(
                f"{self.path} fixes its inputs' token axes at different lengths {sorted(found)}; a text segment "
                "takes one length for the hidden tensor and its mask: re-export the package with --tflite"
            )
        return found.pop() if found else None

    def _ensure(self, shapes: list[tuple[int, ...]]) -> None:
        """Resize and re-plan the graph only when the input shapes change."""
        key = tuple(shapes)
        if key == self._shapes:
            return
        for (_, index, _), shape in zip(self._inputs, shapes, strict=True):
            self.interpreter.resize_tensor_input(index, list(shape), strict=True)
        self.interpreter.allocate_tensors()
        self._shapes = key

    def run(self, x: np.ndarray, context: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        values = [x, *self._context(context)]
        length = None
        if self.sequence_length is not None:
            length = int(np.shape(x)[1])
            values = self._padded(values, length)
        batch = int(x.shape[0])
        if self.dynamic_batch or batch == 1:
            found = self._invoke(values)
        else:
            rows = [self._invoke([v[i : i + 1] for v in values]) for i in range(batch)]  # a fixed batch-1 graph
            found = {name: np.concatenate([row[name] for row in rows]) for name, _, _ in self._outputs}
        if length is not None and length != self.sequence_length:
            for name in self._token_outputs:
                found[name] = np.ascontiguousarray(found[name][:, :length])
        return found

    def _padded(self, values: list[np.ndarray], length: int) -> list[np.ndarray]:
        """Every token input (manifest axis 1 dynamic) zero-padded to the graph's token length."""
        limit = int(self.sequence_length or 0)
        if length > limit:
            raise InputError(
                f"the request has {length} tokens but segment {self.spec.index}'s TFLite graph takes at most "
                f"{limit} (the length it was converted at); shorten or split the text, run the ONNX segments "
                "(backend onnxruntime), or re-convert with a longer sequence_length"
            )
        padded = []
        for position, (value, (name, _, dtype), spec) in enumerate(
            zip(values, self._inputs, self.spec.inputs, strict=True)
        ):
            array = np.asarray(value)
            if len(spec.shape) >= 2 and spec.shape[1] is None:
                if array.ndim < 2 or array.shape[1] != length:
                    raise InputError(
                        f"segment {self.spec.index}'s input {name!r} has shape {array.shape}; expected (N, {length}, "
                        "...): the same token count as the hidden tensor"
                    )
                if length < limit:
                    shape = (array.shape[0], limit, *array.shape[2:])
                    buffer = self._buffers.get((position, shape))
                    if buffer is None:
                        buffer = self._buffers.setdefault((position, shape), np.zeros(shape, dtype))
                    buffer[:, :length] = array
                    buffer[:, length:] = 0  # token id 0, attention_mask 0: masked out
                    array = buffer  # set_tensor copies it into the interpreter: reusing it is safe
            padded.append(array)
        return padded

    def _context(self, context: Mapping[str, np.ndarray] | None) -> list[np.ndarray]:
        given = context or {}
        missing = [name for name, _, _ in self._inputs[1:] if name not in given]
        if missing:
            raise InputError(
                f"segment {self.spec.index} needs the context input(s) {missing} besides its hidden tensor; "
                f"got {sorted(given)}: pass them with every request (e.g. the tokenizer's attention_mask)"
            )
        return [given[name] for name, _, _ in self._inputs[1:]]

    def _invoke(self, values: list[np.ndarray]) -> dict[str, np.ndarray]:
        arrays = [np.ascontiguousarray(v, dtype=dtype) for v, (_, _, dtype) in zip(values, self._inputs, strict=True)]
        self._ensure([a.shape for a in arrays])
        for array, (_, index, _) in zip(arrays, self._inputs, strict=True):
            self.interpreter.set_tensor(index, array)
        self.interpreter.invoke()
        # get_tensor copies out of the interpreter's arena, which the next invoke overwrites.
        return {
            name: self.interpreter.get_tensor(index).astype(dtype, copy=False) for name, index, dtype in self._outputs
        }


def _signature_tensors(interpreter: Any, path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The graph's inputs and outputs in argument order, read from its (single) signature.

    litert-torch names them ``args_0..`` and ``output_0..``; a graph without a signature falls
    back to the interpreter's tensor order. Either way load verifies the shapes afterwards.
    """
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        if signatures:
            raise PackageError(
                f"{path} has {len(signatures)} signatures {sorted(signatures)}; expected one per segment graph: "
                "re-export the package with --tflite"
            )
        return list(interpreter.get_input_details()), list(interpreter.get_output_details())
    runner = interpreter.get_signature_runner(next(iter(signatures)))
    inputs = runner.get_input_details()
    outputs = runner.get_output_details()
    return (
        [inputs[name] for name in sorted(inputs, key=lambda n: _position(n, "args_", path))],
        [outputs[name] for name in sorted(outputs, key=lambda n: _position(n, "output_", path))],
    )


def _position(name: str, prefix: str, path: Path) -> int:
    """``args_3`` -> 3, ``output_1`` -> 1: litert-torch's signature names, in argument order."""
    number = name.removeprefix(prefix)
    if not name.startswith(prefix) or not number.isdigit():
        raise PackageError(
            f"{path}: signature tensor {name!r} is not named like litert-torch's ({prefix}N); "
            "re-export the package with --tflite"
        )
    return int(number)
