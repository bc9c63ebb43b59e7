"""Tails: a Triton model repository inside the package that finishes inference from a boundary.

Real ONNX Runtime sessions on the shared digits package (exported with fp32, fp16 and int8 tails):
the layout and config.pbtxt of docs/offload.md, the graphs' inputs and outputs, and that a tail fed
the encoded boundary tensor of the real segment chain reproduces the full local run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgeexit.codecs import create_codec
from edgeexit.compile import attach_exits
from edgeexit.compile.export import DEFAULT_ATOL, DEFAULT_RTOL, export, parity_rows
from edgeexit.compile.tails import FP16_ATOL, FP16_RTOL, MIN_INT8_AGREEMENT, check_codecs
from edgeexit.compile.zoo import digits_cnn
from edgeexit.data import LabelledData
from edgeexit.errors import ExportError, PackageError
from edgeexit.fileio import sha256_file
from edgeexit.manifest import MANIFEST_FILE, Manifest, TailSpec, package_id_of
from edgeexit.package import Package, open_package
from edgeexit.repository import CONFIG_FILE, read_config, scan_repository
from edgeexit.transport.generated import model_config_pb2 as pb

CODECS = ("fp32", "fp16", "int8")
SUFFIX = {"fp32": "", "fp16": "__fp16", "int8": "__int8"}
HIDDEN_TYPE = {"fp32": "tensor(float)", "fp16": "tensor(float16)", "int8": "tensor(uint8)"}
BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}
CONFIG_TYPE = {"fp32": pb.TYPE_FP32, "fp16": pb.TYPE_FP16, "int8": pb.TYPE_UINT8}
#: Every tail's boundary, in manifest order: 0 and 1, then -1 (the model input: the whole model).
BOUNDARIES = (0, 1, -1)


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def package(digits_package: Path) -> Package:
    return open_package(digits_package)


@pytest.fixture(scope="module")
def tails(package: Package) -> dict[str, ort.InferenceSession]:
    return {tail.model: session(package.path(tail.file)) for tail in package.manifest.tails}


def name_of(boundary: int, codec: str) -> str:
    return f"digits_cnn__from_{'input' if boundary == -1 else boundary}{SUFFIX[codec]}"


def dims_of(manifest: Manifest, boundary: int) -> list[int]:
    """What the tail from ``boundary`` takes, per sample: boundary k's hidden tensor, or the model input."""
    spec = manifest.input.tensor if boundary == -1 else manifest.segments[boundary].output(f"hidden_{boundary}")
    return list(spec.shape[1:])  # type: ignore[arg-type]


def chain(package: Package, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The ONNX Runtime segment chain, as a device runs it: every boundary tensor and the final logits."""
    hidden, feed, final = [], x, None
    for spec in package.manifest.segments:
        names = [o.name for o in spec.outputs]
        values = dict(zip(names, session(package.path(spec.file)).run(names, {spec.inputs[0].name: feed}), strict=True))
        if spec.hidden:
            feed = values[spec.hidden]
            hidden.append(feed)
        else:
            final = values[f"exit_{spec.index}_logits"]
    assert final is not None
    return hidden, final


def run_tail(tails: dict[str, ort.InferenceSession], boundary: int, codec: str, hidden: np.ndarray) -> np.ndarray:
    """Encode as a device does (one request: one scale and zero point) and run the tail."""
    return tails[name_of(boundary, codec)].run(["logits"], create_codec(codec).encode(hidden).tensors())[0]


# --------------------------------------------------------------------------- layout and config.pbtxt


def test_one_tail_per_boundary_and_codec_in_the_triton_layout(package: Package) -> None:
    expected = sorted(name_of(k, codec) for k in BOUNDARIES for codec in CODECS)
    root = package.path("tails")
    assert sorted(p.name for p in root.iterdir()) == expected
    for name in expected:
        assert sorted(str(p.relative_to(root / name)) for p in (root / name).rglob("*")) == [
            "1",
            "1/model.onnx",
            CONFIG_FILE,
        ]
    models = scan_repository(root)  # what `edgeexit serve` (and Triton) would load
    assert [m.name for m in models] == expected
    assert all(sorted(m.versions) == [1] for m in models)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_config_pbtxt_parses_back_with_what_docs_offload_says(package: Package, boundary: int, codec: str) -> None:
    manifest = package.manifest
    name = name_of(boundary, codec)
    config = read_config(package.path(f"tails/{name}/config.pbtxt"))
    assert config.name == name
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size > 0
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == 0  # Triton's default: never wait for a fuller batch
    dims = dims_of(manifest, boundary)
    inputs = [(i.name, i.data_type, list(i.dims)) for i in config.input]
    expected = [("hidden", CONFIG_TYPE[codec], dims)]
    if codec == "int8":
        expected += [("scale", pb.TYPE_FP32, [1]), ("zero_point", pb.TYPE_UINT8, [1])]
    assert inputs == expected
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("logits", pb.TYPE_FP32, [10])]
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert parameters == {"package_id": manifest.package_id, "codec": codec, "boundary": str(boundary)}


def test_manifest_lists_and_hashes_every_tail(package: Package) -> None:
    manifest = package.manifest
    hidden_elements = {k: math.prod(dims_of(manifest, k)) for k in BOUNDARIES}
    assert manifest.tails == tuple(
        TailSpec(
            boundary=k,
            model=name_of(k, codec),
            file=f"tails/{name_of(k, codec)}/1/model.onnx",
            codec=codec,
            encoded_bytes=BYTES_PER_ELEMENT[codec] * hidden_elements[k],
        )
        for k in BOUNDARIES
        for codec in CODECS
    )
    assert manifest.tails[0].encoded_bytes == manifest.segments[0].hidden_bytes  # fp32: the tensor as it is
    for tail in manifest.tails:
        for relative in (tail.file, tail.config):
            assert manifest.files[relative] == sha256_file(package.path(relative))
    # tails name no weights of their own: the package_id still hashes the segments only
    assert manifest.package_id == package_id_of(manifest.files, [s.file for s in manifest.segments])
    assert Manifest.from_json(manifest.to_json()) == manifest


# --------------------------------------------------------------------------- the graphs


@pytest.mark.parametrize("codec", CODECS)
def test_tail_graphs_take_and_return_what_the_contract_says(package: Package, codec: str) -> None:
    for k in BOUNDARIES:
        path = package.path(f"tails/{name_of(k, codec)}/1/model.onnx")
        onnx.checker.check_model(str(path), full_check=True)
        proto = onnx.load(str(path))
        assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [package.manifest.opset]
        sess = session(path)
        dims = dims_of(package.manifest, k)
        inputs = [(i.name, i.type, i.shape[1:]) for i in sess.get_inputs()]
        expected = [("hidden", HIDDEN_TYPE[codec], dims)]
        if codec == "int8":
            expected += [("scale", "tensor(float)", [1]), ("zero_point", "tensor(uint8)", [1])]
        assert inputs == expected
        assert [(o.name, o.type, o.shape[1:]) for o in sess.get_outputs()] == [("logits", "tensor(float)", [10])]
        batch_axes = {a.shape[0] for a in [*sess.get_inputs(), *sess.get_outputs()]}
        assert len(batch_axes) == 1  # one symbolic batch axis shared by every input and the output
        assert isinstance(batch_axes.pop(), str)


@pytest.mark.parametrize("batch", [1, 7])
def test_tails_fed_the_encoded_chain_reproduce_the_full_local_run(
    package: Package, tails: dict[str, ort.InferenceSession], digits: LabelledData, batch: int
) -> None:
    x = digits.x[200 : 200 + batch]
    hidden, final = chain(package, x)
    hidden.append(x)  # hidden[-1]: the model input, the input tail's
    for k in BOUNDARIES:
        exact = run_tail(tails, k, "fp32", hidden[k])
        assert exact.shape == (batch, 10)
        np.testing.assert_allclose(exact, final, atol=DEFAULT_ATOL, rtol=DEFAULT_RTOL)
        half = run_tail(tails, k, "fp16", hidden[k])
        np.testing.assert_allclose(half, final, atol=FP16_ATOL, rtol=FP16_RTOL)
        if k >= 0:  # the digits' pixels (multiples of 1/16) are exact in half precision
            assert np.abs(half - final).max() > 0  # it really went through half precision
        quantized = run_tail(tails, k, "int8", hidden[k])
        assert quantized.shape == (batch, 10)
        assert np.array_equal(quantized.argmax(axis=1), final.argmax(axis=1))


def test_int8_tails_keep_the_predictions_on_the_whole_data_set(
    package: Package, tails: dict[str, ort.InferenceSession], digits: LabelledData
) -> None:
    x = digits.x[:600]
    hidden, final = chain(package, x)
    hidden.append(x)
    for k in BOUNDARIES:
        got = np.concatenate([run_tail(tails, k, "int8", hidden[k][i : i + 50]) for i in range(0, len(x), 50)])
        agreement = float(np.mean(got.argmax(axis=1) == final.argmax(axis=1)))
        assert agreement >= 0.98, (k, agreement)  # measured 99.9 to 100%; export refuses below 90%
        assert np.abs(got - final).max() < 0.25  # quantization moves the logits (~0.03 here), modestly


@pytest.mark.parametrize("codec", ["fp16", "int8"])
def test_the_graph_decodes_exactly_as_the_codec_does(
    package: Package, tails: dict[str, ort.InferenceSession], digits: LabelledData, codec: str
) -> None:
    """The in-graph decode equals the numpy codec's decode fed to the fp32 tail."""
    hidden, _ = chain(package, digits.x[:7])
    hidden.append(digits.x[:7])
    coder = create_codec(codec)
    for k in BOUNDARIES:
        encoded = coder.encode(hidden[k])
        via_graph = tails[name_of(k, codec)].run(["logits"], encoded.tensors())[0]
        via_numpy = tails[name_of(k, "fp32")].run(["logits"], {"hidden": coder.decode(encoded)})[0]
        np.testing.assert_allclose(via_graph, via_numpy, atol=1e-5, rtol=1e-5)


def test_int8_scale_and_zero_point_apply_per_sample(
    package: Package, tails: dict[str, ort.InferenceSession], digits: LabelledData
) -> None:
    """Rows with their own scale and zero point (a Triton-batched set of requests) decode row by row."""
    hidden, _ = chain(package, digits.x[:5])
    coder = create_codec("int8")
    rows = [coder.encode(hidden[1][i : i + 1]).tensors() for i in range(5)]
    stacked = {name: np.concatenate([row[name] for row in rows]) for name in rows[0]}
    assert len(set(stacked["scale"][:, 0].tolist())) > 1  # the rows really differ
    together = tails[name_of(1, "int8")].run(["logits"], stacked)[0]
    alone = np.concatenate([tails[name_of(1, "int8")].run(["logits"], row)[0] for row in rows])
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- parity measured at export


def test_export_measured_and_recorded_every_tails_parity(package: Package) -> None:
    rows = {(r.graph, r.output): r for r in parity_rows(package)}
    record = {r["model"]: r for r in package.manifest.metadata["export"]["tails"]}
    assert sorted(record) == sorted(t.model for t in package.manifest.tails)
    for tail in package.manifest.tails:
        graph, chained = rows[(f"tail {tail.model}", "logits")], rows[(f"chain via {tail.model}", "logits")]
        assert graph.ok
        assert graph.max_abs_diff < 1e-4  # ONNX Runtime vs PyTorch on the same encoded input
        assert chained.ok
        entry = record[tail.model]
        assert (entry["codec"], entry["boundary"], entry["ok"]) == (tail.codec, tail.boundary, True)
        assert entry["max_abs_diff"] == chained.max_abs_diff
        assert entry["agreement"] >= MIN_INT8_AGREEMENT
        if tail.codec == "fp32":
            assert chained.max_abs_diff < 1e-4
            assert entry["tolerance"] == f"atol={DEFAULT_ATOL:g}, rtol={DEFAULT_RTOL:g}"
        elif tail.codec == "fp16":
            assert 0 < chained.max_abs_diff < FP16_ATOL
            assert entry["tolerance"] == f"atol={FP16_ATOL:g}, rtol={FP16_RTOL:g}"
        else:
            assert 0 < chained.max_abs_diff < 0.25
            assert entry["tolerance"] == "top-1 agreement >= 90%"


# --------------------------------------------------------------------------- tampering


@pytest.mark.parametrize("file", ["1/model.onnx", "config.pbtxt"])
def test_a_tampered_tail_is_refused(package_copy: Path, file: str) -> None:
    path = package_copy / "tails" / "digits_cnn__from_1__int8" / file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(PackageError, match=rf"digits_cnn__from_1__int8/{file} was altered"):
        open_package(package_copy)


def test_a_missing_tail_config_is_refused(package_copy: Path) -> None:
    (package_copy / "tails" / "digits_cnn__from_0" / "config.pbtxt").unlink()
    with pytest.raises(PackageError, match=r"digits_cnn__from_0/config\.pbtxt is missing"):
        open_package(package_copy)


def test_a_manifest_that_does_not_hash_a_tail_config_is_refused(package_copy: Path) -> None:
    raw = json.loads((package_copy / MANIFEST_FILE).read_text())
    del raw["files"]["tails/digits_cnn__from_0__fp16/config.pbtxt"]
    (package_copy / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(PackageError, match=r"'tails/digits_cnn__from_0__fp16/config\.pbtxt' has no sha256"):
        open_package(package_copy)


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("boundary", 2, "starts at boundary 2; expected one of 0..1"),
        ("boundary", -2, r"starts at boundary -2; expected one of 0..1 .* or -1 \(the model input\)"),
        ("file", "tails/other/1/model.onnx", "is not in the Triton layout"),
        ("model", "digits_cnn__from_0__fp16", "repeats the model name"),
    ],
)
def test_the_manifest_refuses_tails_that_break_the_layout(
    package_copy: Path, field: str, value: object, fragment: str
) -> None:
    raw = json.loads((package_copy / MANIFEST_FILE).read_text())
    raw["tails"][0][field] = value
    if field == "model":  # keep the file in its own directory, so only the repeated name is wrong
        raw["tails"][0]["file"] = f"tails/{value}/1/model.onnx"
    (package_copy / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(PackageError, match=fragment):
        open_package(package_copy)


# --------------------------------------------------------------------------- export arguments and failures


def test_check_codecs_accepts_a_list_or_a_comma_separated_string() -> None:
    assert check_codecs(("int8", "fp32", "int8")) == ("int8", "fp32")
    assert check_codecs("fp16, int8") == ("fp16", "int8")
    assert check_codecs(()) == ()
    assert check_codecs("") == ()


def test_an_unknown_codec_fails_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ExportError) as info:
        export(digits_cnn(), (1, 1, 8, 8), tmp_path / "pkg", codecs=("fp32", "bf16"))
    message = str(info.value)
    assert "unknown codec(s) 'bf16'" in message
    assert "fp16, fp32, int8" in message
    assert list(tmp_path.iterdir()) == []


def hot_boundary_model() -> nn.Module:
    """Two segments whose boundary tensor reaches ~1e6: beyond half precision's 65504."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 3))
    with torch.no_grad():
        backbone[0].weight.mul_(1e6)
    return attach_exits(backbone, exits=[0], head="linear", num_classes=3, name="hot")


def test_a_codec_that_misses_its_tolerance_fails_the_export_with_the_numbers(tmp_path: Path) -> None:
    with pytest.raises(ExportError) as info:
        export(hot_boundary_model(), (1, 6), tmp_path / "pkg", codecs=("fp32", "fp16"))
    message = str(info.value)
    assert message.startswith("1 tail(s) missed their parity on 4 samples: hot__from_0__fp16:")
    assert f"held to atol={FP16_ATOL:g}, rtol={FP16_RTOL:g}: FAILED" in message
    assert "vs the full local run max |diff|" in message
    assert "drop that codec from --codecs" in message
    assert "hot__from_0:" not in message  # the fp32 tail passed
    assert list(tmp_path.iterdir()) == []


def test_no_codecs_no_tails_and_a_single_segment_has_none(tmp_path: Path) -> None:
    package = export(hot_boundary_model(), (1, 6), tmp_path / "none", codecs=())
    assert package.manifest.tails == ()
    assert not package.path("tails").exists()
    single = attach_exits(nn.Sequential(nn.Linear(6, 3)), exits=[], num_classes=3, name="single")
    package = export(single, (1, 6), tmp_path / "single", codecs=("fp32", "int8"))
    assert package.manifest.tails == ()
    hot = export(hot_boundary_model(), (1, 6), tmp_path / "hot", codecs=("int8",))  # int8 keeps the range
    assert [t.model for t in hot.manifest.tails] == ["hot__from_0__int8", "hot__from_input__int8"]
    assert all(r.ok for r in parity_rows(hot))


def test_the_input_tail_is_the_whole_model(package: Package, digits: LabelledData) -> None:
    """``__from_input``: the model input, encoded, through every segment; the manifest accepts boundary -1."""
    manifest = package.manifest
    inputs = [t for t in manifest.tails if t.boundary == -1]
    assert [t.model for t in inputs] == [name_of(-1, codec) for codec in CODECS]
    assert inputs[0].encoded_bytes == 4 * math.prod(dims_of(manifest, -1))  # fp32: the input as it is
    manifest.validate()
    x = digits.x[:9]
    _, final = chain(package, x)
    got = session(package.path(inputs[0].file)).run(["logits"], {"hidden": x})[0]
    np.testing.assert_allclose(got, final, atol=DEFAULT_ATOL, rtol=DEFAULT_RTOL)
