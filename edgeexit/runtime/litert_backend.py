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

Tokens: a text encoder's graphs have fixed token lengths (litert-torch converts them only with
static shapes; ``edgeexit.compile.tflite``) where the manifest's token axis is dynamic. One file
holds a signature per length, ``tokens_<L>``, sharing the weights; a request runs at the smallest
length that fits it, padded along axis 1 with zeros, ids 0 and ``attention_mask`` 0, so the
padding is masked out and the real tokens' outputs are what the ONNX graphs give; every token
output (N, L, ...) is cropped back to the request's length. (A file with one unnamed signature,
as earlier exports wrote, is one length.) A request longer than the longest is an InputError
naming the limit: truncating it would silently change the answer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeexit.errors import InputError, PackageError
from edgeexit.manifest import SegmentSpec, TensorSpec

TFLITE_EXTRA = "pip install 'edgeexit[tflite]'"
#: A text graph's signature for one token length: ``tokens_32`` takes (1, 32) ids and mask.
TOKEN_SIGNATURE = "tokens_{}"
_TOKEN_SIGNATURE = re.compile(r"tokens_(\d+)")


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
        #: Never fed: a TFLite graph's exit temperature is a built-in constant (1).
        self.constants: dict[str, np.ndarray] = {}
        #: Per token length, the signature that runs it (text graphs with ``tokens_<L>`` signatures).
        self._runners: dict[int, Any] = {}
        self._runner_names: tuple[list[str], list[str]] = ([], [])
        inputs, outputs = self._token_signatures() or _signature_tensors(self.interpreter, self.path)
        self._check(inputs, spec.inputs, "inputs")
        self._check(outputs, spec.outputs, "outputs")
        self._inputs = [(want.name, d["index"], d["dtype"]) for want, d in zip(spec.inputs, inputs, strict=True)]
        self._outputs = [(want.name, d["index"], want.dtype) for want, d in zip(spec.outputs, outputs, strict=True)]
        self.dynamic_batch = not self._runners and all(int(d["shape_signature"][0]) == -1 for d in inputs)
        self.sequence_length = max(self._runners) if self._runners else self._token_length(inputs)
        #: The token lengths the graph runs at, shortest first (empty: no token axis).
        self.sequence_lengths = tuple(sorted(self._runners)) or (
            (self.sequence_length,) if self.sequence_length is not None else ()
        )
        #: Outputs with a token axis (the manifest's axis 1 is dynamic): cropped after padding.
        self._token_outputs = {t.name for t in spec.outputs if len(t.shape) >= 2 and t.shape[1] is None}
        #: Padded input buffers by (input position, shape): np.pad costs ~20 us a call, a copy ~1 us.
        self._buffers: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}
        self._shapes: tuple[tuple[int, ...], ...] | None = None
        if not self._runners:  # signature runners size and allocate their own subgraphs
            self._ensure([tuple(int(n) for n in d["shape"]) for d in inputs])

    def _token_signatures(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        """A text graph's ``tokens_<L>`` signatures, each checked against the manifest and kept
        by length; returns the longest one's tensors (None: not such a graph)."""
        keys = self.interpreter.get_signature_list()
        lengths = {int(m.group(1)): key for key in keys if (m := _TOKEN_SIGNATURE.fullmatch(key))}
        if not lengths:
            return None
        if len(lengths) != len(keys):
            raise PackageError(
                f"{self.path} has signatures {sorted(keys)}; expected only tokens_<length> ones in a text graph: "
                "re-export the package with --tflite"
            )
        found: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
        for length, key in sorted(lengths.items()):
            runner = self.interpreter.get_signature_runner(key)
            found = _ordered(runner.get_input_details(), runner.get_output_details(), self.path)
            for details, wanted, kind in (
                (found[0], self.spec.inputs, "inputs"),
                (found[1], self.spec.outputs, "outputs"),
            ):
                self._check(details, wanted, f"{kind} at {length} tokens")
            self._runners[length] = runner
        inputs, outputs = _ordered(runner.get_input_details(), runner.get_output_details(), self.path, names=True)
        self._runner_names = (inputs, outputs)
        return found

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

    def accepts(self, name: str, shape: tuple[int, ...] | None = None) -> bool:
        return False  # TFLite graphs take only the model's own inputs

    def run(self, x: np.ndarray, context: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        values = [x, *self._context(context)]
        length = None
        if self.sequence_length is not None:
            length = int(np.shape(x)[1])
            values = self._padded(values, length, self._fitting(length))
        batch = int(x.shape[0])
        if self.dynamic_batch or batch == 1:
            found = self._invoke(values)
        else:
            rows = [self._invoke([v[i : i + 1] for v in values]) for i in range(batch)]  # a fixed batch-1 graph
            found = {name: np.concatenate([row[name] for row in rows]) for name, _, _ in self._outputs}
        if length is not None and length != int(values[0].shape[1]):
            for name in self._token_outputs:
                found[name] = np.ascontiguousarray(found[name][:, :length])
        return found

    def _fitting(self, length: int) -> int:
        """The shortest token length the graph runs at that holds ``length`` tokens."""
        for candidate in self.sequence_lengths:
            if length <= candidate:
                return candidate
        raise InputError(
            f"the request has {length} tokens but segment {self.spec.index}'s TFLite graph takes at most "
            f"{self.sequence_length} (the longest length it was converted at); shorten or split the text, run the "
            "ONNX segments (backend onnxruntime), or re-convert with a longer sequence_length"
        )

    def _padded(self, values: list[np.ndarray], length: int, limit: int) -> list[np.ndarray]:
        """Every token input (manifest axis 1 dynamic) zero-padded from ``length`` to ``limit`` tokens."""
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
        if self._runners:  # the signature for this token length (its own subgraph, shared weights)
            args, results = self._runner_names
            found = self._runners[int(arrays[0].shape[1])](**dict(zip(args, arrays, strict=True)))
            return {
                name: found[key].astype(dtype, copy=False)
                for (name, _, dtype), key in zip(self._outputs, results, strict=True)
            }
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
    return _ordered(runner.get_input_details(), runner.get_output_details(), path)


def _ordered(inputs: dict[str, Any], outputs: dict[str, Any], path: Path, *, names: bool = False) -> tuple[list, list]:
    """A signature's input and output details (or, with ``names``, their signature names) in
    argument order."""
    ins = sorted(inputs, key=lambda n: _position(n, "args_", path))
    outs = sorted(outputs, key=lambda n: _position(n, "output_", path))
    if names:
        return ins, outs
    return [inputs[n] for n in ins], [outputs[n] for n in outs]


def _position(name: str, prefix: str, path: Path) -> int:
    """``args_3`` -> 3, ``output_1`` -> 1: litert-torch's signature names, in argument order."""
    number = name.removeprefix(prefix)
    if not name.startswith(prefix) or not number.isdigit():
        raise PackageError(
            f"{path}: signature tensor {name!r} is not named like litert-torch's ({prefix}N); "
            "re-export the package with --tflite"
        )
    return int(number)
