"""Checking what a caller hands the runtime against the package, once, before any segment runs.

The one place that knows what a model input must look like (one float32 array, or for a text
encoder a mapping of integer (N, L) arrays) and what a boundary or a ``Pending`` must be. The
engine checks every call with it, and ``edgeexit quantize`` its calibration data, so both accept
the same inputs and explain a mismatch in the same words. The well-formed path builds no message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from edgeexit.errors import InputError, UsageError
from edgeexit.manifest import InputSpec, SegmentSpec
from edgeexit.runtime.results import Context, Pending

_FLOAT32 = np.dtype(np.float32)


class InputCheck:
    """The package's input contract: its input tensor, its context inputs and its boundaries."""

    def __init__(self, spec: InputSpec, segments: Sequence[SegmentSpec]) -> None:
        self.spec = spec
        self.context_names = tuple(c.name for c in spec.context)
        self.names = (spec.name, *self.context_names)
        self._segments = tuple(segments)
        #: The sample shape when no axis but the batch is dynamic: one tuple comparison then
        #: checks an input (the batch-1 hot path), else None and ``_fits`` checks axis by axis.
        self._sample_shape = None if any(d is None for d in spec.shape[1:]) else tuple(spec.shape[1:])
        #: One sample with its batch axis, when that fixes every axis and nothing else is input.
        static = self._sample_shape is not None and not self.context_names
        self._one_sample = (1, *self._sample_shape) if static else None  # type: ignore[misc]

    def inputs(self, x: object, *, batched: bool) -> tuple[np.ndarray, Context]:
        """The model input as one batch-first array, and the context inputs (rows aligned)."""
        # The batch-1 hot path first, in as few operations as it takes: between two ONNX Runtime
        # runs the general checks below (the Mapping ABC's isinstance above all) cost 6.5 us, a
        # quarter of the engine's overhead on a 0.4 ms CNN (docs/benchmarks.md, point 5).
        if type(x) is np.ndarray and x.shape == self._one_sample and x.dtype == _FLOAT32 and x.flags.c_contiguous:
            return x, {}
        if type(x) is not np.ndarray and isinstance(x, Mapping):
            return self._mapping(x, batched=batched)
        if self.context_names:
            raise InputError(
                f"this model takes several inputs {list(self.names)}; pass a mapping from each name to its array "
                "(for text: edgeexit.runtime.text.TextEncoder.from_package(...).encode(texts) gives it)"
            )
        return self._array(x, batched=batched), {}

    def boundary(self, boundary: int) -> None:
        """``boundary`` is one a request can be split at: one with a later segment, or -1 (the input)."""
        last = len(self._segments) - 2
        if isinstance(boundary, bool) or not isinstance(boundary, (int, np.integer)) or not -1 <= boundary <= last:
            where = f"0..{last}, or -1: the model input" if last >= 0 else "-1 (the model input) only"
            raise UsageError(
                f"boundary {boundary!r} cannot be split at; expected a boundary with a later segment ({where}), "
                f"the package has {len(self._segments)} segments"
            )

    def pending(self, pending: Pending) -> None:
        """``pending`` was split from this package: its boundary exists and its tensor has that boundary's shape."""
        self.boundary(pending.boundary)
        if pending.boundary == -1:
            want = self.spec.shape[1:]
        else:
            spec = self._segments[pending.boundary]
            want = spec.output(spec.hidden).shape[1:]  # type: ignore[arg-type]
        got = pending.hidden.shape
        if len(got) != len(want) + 1 or any(w is not None and w != g for w, g in zip(want, got[1:], strict=True)):
            raise InputError(
                f"pending hidden tensor has shape {tuple(got)}; boundary {pending.boundary} of this package has "
                f"(N, {', '.join('?' if d is None else str(d) for d in want)}): it came from another package"
            )

    def _mapping(self, x: Mapping[str, object], *, batched: bool) -> tuple[np.ndarray, Context]:
        names = list(self.names)
        if sorted(x) != sorted(names):
            raise InputError(f"input mapping has keys {sorted(x)}; expected exactly {names}")
        if not self.context_names:
            return self._array(x[self.spec.name], batched=batched), {}
        if not np.issubdtype(np.dtype(self.spec.dtype), np.integer):
            return self._several(x, batched=batched)
        arrays: dict[str, np.ndarray] = {}
        for name in names:
            value = x[name]
            if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.integer):
                what = f"dtype {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
                raise InputError(f"input {name!r} is {what}; expected an integer numpy array (token ids or a 0/1 mask)")
            if not batched and value.ndim == 1:
                value = value[None]
            if value.ndim != 2 or value.shape[0] == 0 or value.shape[1] == 0 or (not batched and value.shape[0] != 1):
                what = "(N, L)" if batched else "(L,) or (1, L)"
                raise InputError(f"input {name!r} has shape {tuple(value.shape)}; expected {what} with N, L >= 1")
            arrays[name] = np.ascontiguousarray(value, dtype=np.int64)
        shapes = {name: a.shape for name, a in arrays.items()}
        if len(set(shapes.values())) != 1:
            raise InputError(f"inputs have different shapes {shapes}; expected one (N, L) shape for all")
        primary = arrays.pop(self.spec.name)
        return primary, arrays

    def _several(self, x: Mapping[str, object], *, batched: bool) -> tuple[np.ndarray, Context]:
        """A traced model's several inputs (an image and a side vector): each as its spec says,
        one row per sample in all of them."""
        primary = self._array(x[self.spec.name], batched=batched)
        context: dict[str, np.ndarray] = {}
        for spec in self.spec.context:
            value = x[spec.name]
            want = np.dtype(spec.dtype)
            if not isinstance(value, np.ndarray) or value.dtype != want:
                what = f"dtype {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
                raise InputError(f"input {spec.name!r} is {what}; expected a numpy array of {want}")
            if not batched and value.ndim == len(spec.shape) - 1:
                value = value[None]
            fits = value.ndim == len(spec.shape) and all(
                d is None or d == g for d, g in zip(spec.shape[1:], value.shape[1:], strict=False)
            )
            if not fits or value.shape[0] != primary.shape[0]:
                dims = "x".join("N" if d is None else str(d) for d in spec.shape)
                raise InputError(
                    f"input {spec.name!r} has shape {tuple(value.shape)}; expected {dims} with the same N as "
                    f"{self.spec.name!r} ({primary.shape[0]})"
                )
            context[spec.name] = np.ascontiguousarray(value)
        return primary, context

    def _array(self, x: object, *, batched: bool) -> np.ndarray:
        spec = self.spec
        if not isinstance(x, np.ndarray):
            raise InputError(f"input must be a numpy array; got {type(x).__name__}")
        if x.dtype != _FLOAT32:
            raise InputError(
                f"input dtype is {x.dtype}; expected float32 (model-ready values, preprocessed as the "
                f"manifest says): convert with x.astype(np.float32)"
            )
        sample_rank = len(spec.shape) - 1
        if not batched and x.ndim == sample_rank:
            x = x[None]
        shape = x.shape
        fits = shape[1:] == self._sample_shape and shape[0] > 0 if self._sample_shape is not None else self._fits(shape)
        if fits and len(shape) == len(spec.shape) and (batched or shape[0] == 1):
            return x if x.flags.c_contiguous else np.ascontiguousarray(x)  # the hot path: no messages built
        expected = self.expected_shape()
        if x.ndim != len(spec.shape) or (not batched and x.shape[0] != 1):
            what = "one sample" if not batched else "a batch"
            raise InputError(
                f"input shape {tuple(x.shape)} does not fit {what}; expected {expected} ({spec.layout})"
                + ("" if batched else " or the same without the batch axis")
            )
        for axis, (want, got) in enumerate(zip(spec.shape[1:], x.shape[1:], strict=True), start=1):
            if want is not None and want != got:
                name = spec.layout[axis] if len(spec.layout) == len(spec.shape) else f"axis {axis}"
                what = "channel count" if name == "C" else f"size of {name}"
                raise InputError(
                    f"input {what} is {got}; expected {want} (input shape {expected}, layout {spec.layout}); "
                    f"got shape {tuple(x.shape)}"
                )
        raise InputError("input batch is empty; expected at least one sample")

    def expected_shape(self) -> str:
        """The input shape as messages write it: ``Nx1x8x8``."""
        return "x".join("N" if d is None else str(d) for d in self.spec.shape)

    def _fits(self, shape: tuple[int, ...]) -> bool:
        if shape[0] == 0:
            return False
        return all(want is None or want == got for want, got in zip(self.spec.shape[1:], shape[1:], strict=True))
