"""The manifest as a contract: exact JSON round trip, and every schema violation named by its JSON path.

All cases start from the manifest that the shared fixture package really wrote, so the tests follow
the format export produces rather than a hand-written sample.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgeexit.errors import EdgeExitError, PackageError
from edgeexit.manifest import (
    CRITERION_NAMES,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_FILE,
    CalibrationRecord,
    ExitCalibration,
    Manifest,
    TailSpec,
    package_id_of,
)

SOURCE = "some/pkg/manifest.json"


@pytest.fixture
def manifest_text(digits_package: Path) -> str:
    return (digits_package / MANIFEST_FILE).read_text(encoding="utf-8")


@pytest.fixture
def manifest(manifest_text: str) -> Manifest:
    return Manifest.from_json(manifest_text)


@pytest.fixture
def raw(manifest_text: str) -> dict[str, Any]:
    return json.loads(manifest_text)


def refused(raw_or_text: dict[str, Any] | str) -> str:
    """Parse and expect a PackageError; return its message."""
    text = raw_or_text if isinstance(raw_or_text, str) else json.dumps(raw_or_text)
    with pytest.raises(PackageError) as info:
        Manifest.from_json(text, source=SOURCE)
    message = str(info.value)
    assert message.startswith(SOURCE), f"the error does not name the manifest file: {message}"
    return message


def calibrated(manifest: Manifest, thresholds: tuple[float, ...]) -> Manifest:
    exits = tuple(
        dataclasses.replace(spec, threshold=t, temperature=1.5)
        for spec, t in zip(manifest.exits, thresholds, strict=True)
    )
    record = CalibrationRecord(
        criterion="max_prob",
        max_drop=1.0,
        samples=359,
        data_sha256="ab" * 32,
        final_accuracy=0.95,
        accuracy=0.94,
        expected_latency_ms=0.25,
        exits=tuple(
            ExitCalibration(exit=s.index, threshold=s.threshold, temperature=1.5, accuracy=0.9, exit_rate=0.3)
            for s in exits
        ),
    )
    return manifest.with_exits(exits, record)


# --- round trip -----------------------------------------------------------------------------------------------


def test_round_trip_of_the_exported_manifest_is_identity(manifest_text: str, manifest: Manifest) -> None:
    assert manifest.to_json() == manifest_text
    again = Manifest.from_json(manifest.to_json())
    assert again == manifest
    assert Manifest.from_dict(json.loads(manifest_text)) == manifest


def test_parsed_manifest_has_python_types(manifest: Manifest) -> None:
    assert manifest.format == FORMAT_NAME
    assert manifest.format_version == FORMAT_VERSION
    assert manifest.model_name == "digits_cnn"
    assert manifest.input.shape == (None, 1, 8, 8)
    assert isinstance(manifest.segments, tuple)
    assert [s.index for s in manifest.segments] == [0, 1, 2]
    assert manifest.segments[0].inputs[0].shape == (None, 1, 8, 8)
    assert manifest.segments[-1].hidden is None
    assert manifest.exits[-1].final
    assert manifest.input.preprocessing is not None
    assert manifest.input.preprocessing.size == (8, 8)
    assert manifest.num_classes == len(manifest.labels) == 10
    assert manifest.exit_of_segment(1) == manifest.exits[1]


def test_round_trip_with_calibration_and_tails(manifest: Manifest) -> None:
    files = {**manifest.files, "tails/digits_cnn__from_1/1/model.onnx": "cd" * 32}
    tail = TailSpec(boundary=1, model="digits_cnn__from_1", file="tails/digits_cnn__from_1/1/model.onnx", codec="fp16",
                    encoded_bytes=1024)  # fmt: skip
    richer = dataclasses.replace(calibrated(manifest, (0.7, 0.8, 0.0)), files=files, tails=(tail,))
    richer.validate()
    assert Manifest.from_json(richer.to_json()) == richer


# --- schema violations name the JSON path ---------------------------------------------------------------------


def _set(path: str | tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets ``path`` (dots and [i]) to ``value``."""

    def apply(raw: dict[str, Any]) -> None:
        *parents, last = _steps(path)
        node: Any = raw
        for step in parents:
            node = node[step]
        node[last] = value

    return apply


def _delete(path: str | tuple[str, ...]) -> Callable[[dict[str, Any]], None]:
    def apply(raw: dict[str, Any]) -> None:
        *parents, last = _steps(path)
        node: Any = raw
        for step in parents:
            node = node[step]
        del node[last]

    return apply


def _steps(path: str | tuple[str, ...]) -> list[str | int]:
    """``"segments[0].flops"`` -> ["segments", 0, "flops"]; a tuple is taken as the steps (for keys with dots)."""
    if isinstance(path, tuple):
        return list(path)
    steps: list[str | int] = []
    for part in path.split("."):
        name, _, rest = part.partition("[")
        steps.append(name)
        for index in filter(None, rest.replace("]", "").split("[")):
            steps.append(int(index))
    return steps


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        pytest.param(_set("segments[0].flops", "608896"), ["segments[0].flops", "expected an integer", "str"],
                     id="int-as-string"),
        pytest.param(_set("exits[1].threshold", "high"), ["exits[1].threshold", "expected a number", "str 'high'"],
                     id="float-as-string"),
        pytest.param(_set("segments[1].params", 1.5), ["segments[1].params", "expected an integer", "float"],
                     id="int-as-float"),
        pytest.param(_set("segments[0].hidden_bytes", True), ["segments[0].hidden_bytes", "expected an integer",
                     "bool"], id="optional-int-as-bool"),
        pytest.param(_set("exits[0].final", "no"), ["exits[0].final", "expected bool"], id="bool-as-string"),
        pytest.param(_set("input.shape[2]", "8"), ["input.shape[2]", "expected an integer"], id="shape-item"),
        pytest.param(_set("segments", {}), ["segments", "expected a list", "dict"], id="object-for-list"),
        pytest.param(_set("segments[2].outputs[0]", "exit_2_logits"), ["segments[2].outputs[0]", "expected an object"],
                     id="string-for-object"),
        pytest.param(_set(("files", "reference.npz"), 5), ["files.reference.npz", "expected str"], id="hash-as-number"),
        pytest.param(_set("input.preprocessing.color_mode", "CMYK"), ["input.preprocessing.color_mode",
                     "expected one of", "'CMYK'"], id="literal"),
        pytest.param(_set("input.preprocessing.size", [8, 8, 8]), ["input.preprocessing.size", "2 items", "found 3"],
                     id="fixed-length-tuple"),
        pytest.param(_set("reference", "reference.npz"), ["reference", "expected an object"], id="optional-object"),
        pytest.param(_delete("segments[1].params"), ["segments[1]", "missing required field 'params'"],
                     id="missing-nested"),
        pytest.param(_delete("labels"), ["manifest", "missing required field 'labels'"], id="missing-top-level"),
        pytest.param(_delete("input.dtype"), ["input", "missing required field 'dtype'"], id="missing-in-input"),
        pytest.param(_set("segments[0].stride", 2), ["segments[0]", "unknown field(s) ['stride']"],
                     id="unknown-nested"),
        pytest.param(_set("checksum", "x"), ["manifest", "unknown field(s) ['checksum']"], id="unknown-top-level"),
        pytest.param(_set("exits[0].criterion", "confidence"), ["exits[0].criterion", "'confidence'", "unknown",
                     *CRITERION_NAMES], id="unknown-criterion"),
        pytest.param(_set("segments[1].index", 7), ["segments[1].index", "expected 1"], id="segment-order"),
        pytest.param(_set("exits[0].logits", "exit_9_logits"), ["segment 0", "'exit_9_logits'"],
                     id="exit-names-missing-output"),
        pytest.param(_delete(("files", "reference.npz")), ["reference.file", "'reference.npz'", "no sha256"],
                     id="reference-not-hashed"),
        pytest.param(_delete(("files", "monolithic.onnx")), ["monolithic", "'monolithic.onnx'", "no sha256"],
                     id="monolithic-not-hashed"),
    ],
)  # fmt: skip
def test_schema_violation_names_the_json_path(
    raw: dict[str, Any], mutate: Callable[[dict[str, Any]], None], expected: list[str]
) -> None:
    mutate(raw)
    message = refused(raw)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_unsupported_format_version_asks_to_re_export(raw: dict[str, Any]) -> None:
    raw["format_version"] = 99
    message = refused(raw)
    assert "format_version 99 is not supported" in message
    assert f"reads version {FORMAT_VERSION}" in message
    assert "re-export" in message


def test_missing_format_version_is_refused(raw: dict[str, Any]) -> None:
    del raw["format_version"]
    assert "format_version None is not supported" in refused(raw)


@pytest.mark.parametrize("value", ["onnx-bundle", None, 1])
def test_wrong_format_is_refused(raw: dict[str, Any], value: Any) -> None:
    raw["format"] = value
    message = refused(raw)
    assert f"'format' is {value!r}" in message
    assert repr(FORMAT_NAME) in message


def test_invalid_json_is_refused(manifest_text: str) -> None:
    message = refused(manifest_text[: len(manifest_text) // 2])
    assert "is not valid JSON" in message
    assert "expected an edgeexit manifest" in message


@pytest.mark.parametrize("text", ["[]", "42", '"manifest"', "null"])
def test_json_that_is_not_an_object_is_refused(text: str) -> None:
    assert "expected a JSON object" in refused(text)


def test_package_error_is_an_edgeexit_error(raw: dict[str, Any]) -> None:
    raw["format_version"] = 99
    with pytest.raises(EdgeExitError):
        Manifest.from_dict(raw)


# --- package_id -----------------------------------------------------------------------------------------------


def test_package_id_is_derived_from_the_segment_hashes(manifest: Manifest) -> None:
    graphs = [s.file for s in manifest.segments]
    assert manifest.package_id == package_id_of(manifest.files, graphs)
    assert len(manifest.package_id) == 32
    int(manifest.package_id, 16)


def test_package_id_survives_new_thresholds(manifest: Manifest) -> None:
    recalibrated = calibrated(manifest, (0.55, 0.75, 0.0))
    assert [e.threshold for e in recalibrated.exits] == [0.55, 0.75, 0.0]
    assert recalibrated.calibration is not None
    assert recalibrated.package_id == manifest.package_id
    recalibrated.validate()  # the unchanged package_id still matches the unchanged graphs
    assert Manifest.from_json(recalibrated.to_json()).package_id == manifest.package_id


@pytest.mark.parametrize("segment", [0, 1, 2])
def test_package_id_changes_with_any_segment_hash(manifest: Manifest, segment: int) -> None:
    graphs = [s.file for s in manifest.segments]
    files = {**manifest.files, graphs[segment]: "0" * 64}
    assert package_id_of(files, graphs) != manifest.package_id


def test_package_id_ignores_files_that_are_not_segment_graphs(manifest: Manifest) -> None:
    graphs = [s.file for s in manifest.segments]
    files = {**manifest.files, "reference.npz": "0" * 64}
    assert package_id_of(files, graphs) == manifest.package_id


def test_validate_rejects_an_edited_package_id(manifest: Manifest) -> None:
    edited = dataclasses.replace(manifest, package_id="0" * 32)
    with pytest.raises(PackageError, match="package_id does not match"):
        edited.validate()


def test_segment_hash_edited_without_new_package_id_is_refused(raw: dict[str, Any]) -> None:
    raw["files"]["segments/1.onnx"] = "0" * 64
    message = refused(raw)
    assert "package_id does not match" in message
    assert "re-export" in message


def test_edited_package_id_in_json_is_refused(raw: dict[str, Any]) -> None:
    raw["package_id"] = "f" * 32
    assert "package_id does not match" in refused(raw)
