"""``edgeexit verify``: is this package what export wrote, and does it still compute the same?

Checks, in order: the manifest's schema and version, every file's sha256, that each ONNX graph's
inputs and outputs are the ones the manifest declares, and that running the stored reference
input through the chained segments (and the monolithic graph) reproduces PyTorch's outputs.
Runs on the device: ONNX Runtime and numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeexit.errors import PackageError
from edgeexit.manifest import TensorSpec
from edgeexit.package import Package, open_package
from edgeexit.parity import ParityCheck, compare
from edgeexit.runtime.sessions import load_session


@dataclass(frozen=True)
class VerifyReport:
    package: Package
    files_checked: int
    checks: tuple[ParityCheck, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def verify_package(path: str | Path) -> VerifyReport:
    package = open_package(path)  # schema, version, hashes
    manifest = package.manifest
    if manifest.reference is None:
        raise PackageError(f"{path}: the manifest has no reference sample to verify parity against")
    reference = _load_reference(package)
    atol, rtol = manifest.reference.atol, manifest.reference.rtol
    checks: list[ParityCheck] = []
    if "input" not in reference:
        raise PackageError(f"{manifest.reference.file} lacks the expected array 'input' (the reference sample)")
    x = reference["input"]
    for segment in manifest.segments:
        session = load_session(package.path(segment.file))
        _check_signature(session, segment.inputs, segment.outputs, segment.file)
        names = [o.name for o in segment.outputs]
        outputs = _run(session, names, {segment.inputs[0].name: x}, segment.file)
        for name, got in zip(names, outputs, strict=True):
            key = f"{segment.index}/{name}"
            if key not in reference:
                raise PackageError(f"{manifest.reference.file} lacks the expected output {key!r}")
            checks.append(compare(f"segment {segment.index}", name, reference[key], got, atol, rtol))
        if segment.hidden is not None:
            x = outputs[names.index(segment.hidden)]
    if manifest.monolithic:
        session = load_session(package.path(manifest.monolithic))
        # the monolithic graph computes every segment's outputs but the hidden tensors, in order
        declared = [o for s in manifest.segments for o in s.outputs if o.name != s.hidden]
        _check_signature(session, (manifest.input.tensor,), tuple(declared), manifest.monolithic)
        names = [o.name for o in declared]
        outputs = _run(session, names, {manifest.input.name: reference["input"]}, manifest.monolithic)
        by_name = {key.split("/", 1)[1]: value for key, value in reference.items() if "/" in key}
        for name, got in zip(names, outputs, strict=True):
            if name in by_name:
                checks.append(compare("monolithic", name, by_name[name], got, atol, rtol))
    return VerifyReport(package, len(manifest.files), tuple(checks))


def _load_reference(package: Package) -> dict[str, np.ndarray]:
    assert package.manifest.reference is not None
    file = package.path(package.manifest.reference.file)
    try:
        with np.load(file, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except Exception as err:
        raise PackageError(f"cannot read the reference sample {file}: {err}") from None


def _run(session, names: list[str], feed: dict[str, np.ndarray], file: str) -> list[np.ndarray]:
    try:
        return session.run(names, feed)
    except Exception as err:  # onnxruntime raises its own untyped errors
        raise PackageError(f"ONNX Runtime failed to run {file} on the reference sample: {str(err)[:300]}") from None


def _check_signature(session, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], file: str) -> None:
    declared = [i.name for i in inputs], [o.name for o in outputs]
    found = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
    if declared != found:
        raise PackageError(
            f"{file} has inputs {found[0]} and outputs {found[1]}; "
            f"the manifest declares {declared[0]} and {declared[1]}"
        )
    for spec, arg in zip(outputs, session.get_outputs(), strict=True):
        rank = len(arg.shape)
        if rank != len(spec.shape):
            raise PackageError(f"{file} output {spec.name} has rank {rank}; the manifest declares shape {spec.shape}")
