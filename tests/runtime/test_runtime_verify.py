"""``verify_package``: hashes, graph signatures and parity against the stored PyTorch outputs.

Real packages, real ONNX Runtime sessions. The alterations below keep the manifest's hashes (and,
for graphs, the package_id) consistent, so each one reaches the check it is about.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeexit.errors import PackageError
from edgeexit.fileio import sha256_file
from edgeexit.manifest import MANIFEST_FILE, package_id_of
from edgeexit.package import open_package
from edgeexit.runtime import VerifyReport, verify_package


def rehash(root: Path, relative: str) -> None:
    """Record ``relative``'s new sha256 in the manifest and re-derive the package_id, as export would."""
    raw = json.loads((root / MANIFEST_FILE).read_text(encoding="utf-8"))
    raw["files"][relative] = sha256_file(root / relative)
    raw["package_id"] = package_id_of(raw["files"], [s["file"] for s in raw["segments"]])
    (root / MANIFEST_FILE).write_text(json.dumps(raw, indent=2), encoding="utf-8")
    open_package(root)  # hashes and package_id are consistent again


def rewrite_reference(root: Path, **changes: np.ndarray | None) -> None:
    """Replace (or, with None, drop) arrays of reference.npz and re-hash it."""
    with np.load(root / "reference.npz") as data:
        arrays = {key: data[key] for key in data.files}
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    np.savez(root / "reference.npz", **arrays)
    rehash(root, "reference.npz")


def stored(root: Path, key: str) -> np.ndarray:
    with np.load(root / "reference.npz") as data:
        return data[key]


def rename_tensor(file: Path, old: str, new: str) -> None:
    """Rename a graph input or output everywhere it occurs and re-save the model with ``onnx``."""
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(file))
    graph = model.graph
    found = False
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.name == old:
            value.name = new
            found = True
    assert found, f"{file} has no input or output {old!r}"
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    onnx.checker.check_model(model)
    onnx.save(model, str(file))


def test_the_exported_package_verifies(digits_package: Path) -> None:
    report = verify_package(digits_package)
    assert isinstance(report, VerifyReport)
    assert report.ok
    manifest = report.package.manifest
    assert report.files_checked == len(manifest.files) == 23  # 3 segments, monolithic, reference, 9 tails x 2
    assert report.tails_checked == len(manifest.tails) == 9  # boundaries 0, 1 and the input
    assert all(check.ok for check in report.checks)
    assert all(np.isfinite(check.max_abs_diff) for check in report.checks)
    # every output of every segment, every exit output of the monolithic graph and every tail is compared once
    expected = [(f"segment {s.index}", o.name) for s in manifest.segments for o in s.outputs]
    expected += [("monolithic", o.name) for s in manifest.segments for o in s.outputs if o.name != s.hidden]
    expected += [(f"tail {t.model}", "logits") for t in manifest.tails]
    assert [(c.graph, c.output) for c in report.checks] == expected


def test_verify_accepts_a_string_path(digits_package: Path) -> None:
    assert verify_package(str(digits_package)).ok


def test_perturbed_reference_outputs_fail_parity(package_copy: Path) -> None:
    logits = stored(package_copy, "1/exit_1_logits")
    rewrite_reference(package_copy, **{"1/exit_1_logits": logits + 0.05})
    report = verify_package(package_copy)  # the hashes pass: only the numbers disagree
    assert not report.ok
    failed = {(c.graph, c.output) for c in report.checks if not c.ok}
    assert failed == {("segment 1", "exit_1_logits"), ("monolithic", "exit_1_logits")}
    assert all(0.04 < c.max_abs_diff < 0.06 for c in report.checks if not c.ok)


def test_every_perturbed_output_is_reported(package_copy: Path) -> None:
    with np.load(package_copy / "reference.npz") as data:
        perturbed = {key: data[key] * 1.5 + 1.0 for key in data.files if key != "input"}
    rewrite_reference(package_copy, **perturbed)
    report = verify_package(package_copy)
    assert not report.ok
    assert not any(c.ok for c in report.checks)


def test_a_tiny_difference_within_tolerance_still_passes(package_copy: Path) -> None:
    atol = open_package(package_copy).manifest.reference.atol  # type: ignore[union-attr]
    hidden = stored(package_copy, "0/hidden_0")
    rewrite_reference(package_copy, **{"0/hidden_0": hidden + np.float32(atol / 10)})
    assert verify_package(package_copy).ok


def test_reference_of_the_wrong_shape_fails_parity(package_copy: Path) -> None:
    logits = stored(package_copy, "2/exit_2_logits")
    rewrite_reference(package_copy, **{"2/exit_2_logits": logits[:1]})
    report = verify_package(package_copy)
    bad = [c for c in report.checks if not c.ok]
    assert [(c.graph, c.output) for c in bad] == [("segment 2", "exit_2_logits"), ("monolithic", "exit_2_logits")]
    assert all(c.max_abs_diff == float("inf") for c in bad)


@pytest.mark.parametrize(
    ("relative", "old", "new"),
    [
        ("segments/0.onnx", "exit_0_score", "exit_0_confidence"),
        ("segments/1.onnx", "hidden_1", "features_1"),
        ("segments/2.onnx", "exit_2_logits", "logits"),
        ("segments/1.onnx", "hidden_0", "h0"),  # an input
        ("monolithic.onnx", "exit_1_logits", "logits_1"),
    ],
)
def test_a_graph_with_renamed_tensors_is_refused(package_copy: Path, relative: str, old: str, new: str) -> None:
    rename_tensor(package_copy / relative, old, new)
    rehash(package_copy, relative)
    with pytest.raises(PackageError) as info:
        verify_package(package_copy)
    message = str(info.value)
    assert message.startswith(relative)
    assert repr(new) in message  # what was found
    assert repr(old) in message  # what the manifest declares


def test_renaming_a_segment_changes_the_package_id(package_copy: Path) -> None:
    before = open_package(package_copy).manifest.package_id
    rename_tensor(package_copy / "segments/2.onnx", "exit_2_score", "score")
    rehash(package_copy, "segments/2.onnx")
    assert open_package(package_copy).manifest.package_id != before


def test_reference_lacking_an_output_is_refused(package_copy: Path) -> None:
    rewrite_reference(package_copy, **{"1/hidden_1": None})
    with pytest.raises(PackageError, match=r"reference\.npz lacks the expected output '1/hidden_1'"):
        verify_package(package_copy)


def test_reference_lacking_the_input_is_refused(package_copy: Path) -> None:
    rewrite_reference(package_copy, input=None)
    with pytest.raises(PackageError, match=r"reference\.npz lacks the expected array 'input'"):
        verify_package(package_copy)


def test_reference_input_of_the_wrong_dtype_is_refused(package_copy: Path) -> None:
    rewrite_reference(package_copy, input=stored(package_copy, "input").astype(np.float64))
    with pytest.raises(PackageError) as info:
        verify_package(package_copy)
    assert str(info.value).startswith("ONNX Runtime failed to run segments/0.onnx")


def test_reference_that_is_not_an_npz_is_refused(package_copy: Path) -> None:
    (package_copy / "reference.npz").write_bytes(b"not a zip file")
    rehash(package_copy, "reference.npz")
    with pytest.raises(PackageError, match=r"cannot read the reference sample .*reference\.npz"):
        verify_package(package_copy)


def test_a_segment_that_is_not_onnx_is_refused(package_copy: Path) -> None:
    (package_copy / "segments/1.onnx").write_bytes(b"\x08\x07garbage")
    rehash(package_copy, "segments/1.onnx")
    with pytest.raises(PackageError, match=r"ONNX Runtime cannot load .*segments/1\.onnx"):
        verify_package(package_copy)


def test_a_package_without_reference_is_refused(package_copy: Path) -> None:
    raw = json.loads((package_copy / MANIFEST_FILE).read_text())
    raw["reference"] = None
    (package_copy / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(PackageError, match="no reference sample"):
        verify_package(package_copy)


def test_verify_checks_hashes_first(package_copy: Path) -> None:
    data = bytearray((package_copy / "segments/0.onnx").read_bytes())
    data[-1] ^= 0xFF
    (package_copy / "segments/0.onnx").write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"segments/0\.onnx was altered"):
        verify_package(package_copy)


# --- tails ----------------------------------------------------------------------------------------------------

INT8_TAIL = "tails/digits_cnn__from_1__int8"


def edit_config(root: Path, model: str, old: str, new: str) -> None:
    path = root / "tails" / model / "config.pbtxt"
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    rehash(root, f"tails/{model}/config.pbtxt")


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ('string_value: "int8"', 'string_value: "fp16"', "codec is 'fp16', expected 'int8'"),
        ("dims: 32", "dims: 31", "inputs is [('hidden', 'UINT8', [31, 4, 4])"),
        ("data_type: TYPE_UINT8", "data_type: TYPE_INT8", "inputs is [('hidden', 'INT8', [32, 4, 4])"),
        ('name: "zero_point"', 'name: "zp"', "('zp', 'UINT8', [1])"),
        ('name: "logits"', 'name: "probabilities"', "outputs is [('probabilities', 'FP32', [10])]"),
        ("max_batch_size: 64", "max_batch_size: 0", "max_batch_size is 0, expected > 0"),
        ('string_value: "1"', 'string_value: "0"', "boundary is '0', expected '1'"),
        ('platform: "onnxruntime_onnx"', 'platform: "tensorrt_plan"', "platform is 'tensorrt_plan'"),
    ],
)
def test_a_tail_config_that_does_not_describe_the_tail_is_refused(
    package_copy: Path, old: str, new: str, fragment: str
) -> None:
    edit_config(package_copy, "digits_cnn__from_1__int8", old, new)
    with pytest.raises(PackageError) as info:
        verify_package(package_copy)
    message = str(info.value)
    assert message.startswith(f"{INT8_TAIL}/config.pbtxt does not describe tail digits_cnn__from_1__int8")
    assert fragment in message


def test_a_tail_config_naming_another_package_is_refused(package_copy: Path) -> None:
    package_id = open_package(package_copy).manifest.package_id
    edit_config(package_copy, "digits_cnn__from_0", package_id, "0" * 32)
    with pytest.raises(PackageError, match=rf"package_id is '0{{32}}', expected '{package_id}'"):
        verify_package(package_copy)


def test_a_tail_graph_that_its_config_does_not_describe_is_refused(package_copy: Path) -> None:
    """The fp16 tail's graph under the fp32 tail's name: hashes and config are consistent, the graph is not."""
    (package_copy / "tails/digits_cnn__from_0/1/model.onnx").write_bytes(
        (package_copy / "tails/digits_cnn__from_0__fp16/1/model.onnx").read_bytes()
    )
    rehash(package_copy, "tails/digits_cnn__from_0/1/model.onnx")
    with pytest.raises(PackageError) as info:
        verify_package(package_copy)
    message = str(info.value)
    assert message.startswith("tails/digits_cnn__from_0/1/model.onnx has inputs [('hidden', 'FP16', [16, 8, 8])]")
    assert "its config.pbtxt declares [('hidden', 'FP32', [16, 8, 8])]" in message


def test_a_tail_that_is_not_onnx_is_refused(package_copy: Path) -> None:
    (package_copy / INT8_TAIL / "1/model.onnx").write_bytes(b"\x08\x07garbage")
    rehash(package_copy, f"{INT8_TAIL}/1/model.onnx")
    with pytest.raises(PackageError, match=r"ONNX Runtime cannot load .*digits_cnn__from_1__int8/1/model\.onnx"):
        verify_package(package_copy)


def test_a_tail_config_that_is_not_pbtxt_is_refused(package_copy: Path) -> None:
    (package_copy / INT8_TAIL / "config.pbtxt").write_text("platform: {{{", encoding="utf-8")
    rehash(package_copy, f"{INT8_TAIL}/config.pbtxt")
    with pytest.raises(PackageError, match=r"config\.pbtxt is not a valid Triton model configuration"):
        verify_package(package_copy)


def test_a_tail_that_computes_something_else_fails_parity(package_copy: Path) -> None:
    key = "tails/digits_cnn__from_1__int8/logits"
    rewrite_reference(package_copy, **{key: stored(package_copy, key) + 0.05})
    report = verify_package(package_copy)
    assert [(c.graph, c.ok) for c in report.checks if not c.ok] == [("tail digits_cnn__from_1__int8", False)]


def test_reference_lacking_a_tail_output_is_refused(package_copy: Path) -> None:
    rewrite_reference(package_copy, **{"tails/digits_cnn__from_0__fp16/logits": None})
    with pytest.raises(PackageError, match=r"lacks the expected array 'tails/digits_cnn__from_0__fp16/logits'"):
        verify_package(package_copy)
