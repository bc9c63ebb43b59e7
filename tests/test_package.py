"""A package on disk: opened only when every file matches its hash; written atomically.

Every case alters a private copy of the real exported package (``package_copy``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from edgeexit.errors import PackageError
from edgeexit.fileio import atomic_write_text, sha256_file, staged_directory
from edgeexit.manifest import MANIFEST_FILE, Manifest, package_id_of
from edgeexit.package import Package, open_package


def read_raw(root: Path) -> dict:
    return json.loads((root / MANIFEST_FILE).read_text(encoding="utf-8"))


def write_raw(root: Path, raw: dict) -> None:
    (root / MANIFEST_FILE).write_text(json.dumps(raw, indent=2), encoding="utf-8")


def flip_one_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))


def refused(path: Path) -> str:
    with pytest.raises(PackageError) as info:
        open_package(path)
    return str(info.value)


def test_open_package_accepts_the_exported_package(digits_package: Path) -> None:
    package = open_package(digits_package)
    assert isinstance(package, Package)
    assert package.root == digits_package
    assert package.manifest.model_name == "digits_cnn"
    assert set(package.manifest.files) == {
        "segments/0.onnx",
        "segments/1.onnx",
        "segments/2.onnx",
        "monolithic.onnx",
        "reference.npz",
        *(name for tail in package.manifest.tails for name in (tail.file, tail.config)),
    }
    assert len(package.manifest.tails) == 9  # boundaries 0, 1 and -1 (the input), codecs fp32, fp16, int8
    for relative, expected in package.manifest.files.items():
        assert sha256_file(package.path(relative)) == expected


def test_open_package_takes_a_string_path(digits_package: Path) -> None:
    assert open_package(str(digits_package)).manifest.package_id == open_package(digits_package).manifest.package_id


@pytest.mark.parametrize("relative", ["segments/0.onnx", "segments/2.onnx", "monolithic.onnx", "reference.npz"])
def test_a_file_with_one_byte_changed_is_refused(package_copy: Path, relative: str) -> None:
    flip_one_byte(package_copy / relative)
    message = refused(package_copy)
    assert str(package_copy / relative) in message
    assert "was altered" in message
    expected = read_raw(package_copy)["files"][relative]
    assert expected[:12] in message  # what the manifest expects
    assert sha256_file(package_copy / relative)[:12] in message  # what was found


def test_an_altered_file_opens_when_hashes_are_not_verified(package_copy: Path) -> None:
    flip_one_byte(package_copy / "segments/1.onnx")
    assert open_package(package_copy, verify_hashes=False).manifest.model_name == "digits_cnn"


def test_a_missing_segment_file_is_refused(package_copy: Path) -> None:
    (package_copy / "segments/1.onnx").unlink()
    message = refused(package_copy)
    assert str(package_copy / "segments/1.onnx") in message
    assert "is missing" in message


def test_a_missing_manifest_is_refused(package_copy: Path) -> None:
    (package_copy / MANIFEST_FILE).unlink()
    message = refused(package_copy)
    assert str(package_copy / MANIFEST_FILE) in message
    assert "is missing" in message


def test_a_path_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in message
    assert "does not exist" in message


def test_a_file_that_is_not_a_tar_is_refused(package_copy: Path) -> None:
    """A file is taken for a packed package (``edgeexit pack``); anything else says what was expected."""
    message = refused(package_copy / MANIFEST_FILE)
    assert "is not a tar" in message
    assert "`edgeexit export`" in message
    assert "`edgeexit pack`" in message


def test_a_manifest_that_is_not_utf8_is_refused(package_copy: Path) -> None:
    (package_copy / MANIFEST_FILE).write_bytes(b"\xff\xfe{\x00")
    message = refused(package_copy)
    assert str(package_copy / MANIFEST_FILE) in message
    assert "UTF-8" in message


def test_a_schema_error_names_the_manifest_file(package_copy: Path) -> None:
    raw = read_raw(package_copy)
    raw["segments"][0]["flops"] = "many"
    write_raw(package_copy, raw)
    message = refused(package_copy)
    assert message.startswith(str(package_copy / MANIFEST_FILE))
    assert "segments[0].flops" in message


@pytest.mark.parametrize("entry", ["../x", "outside-absolute"])
def test_a_file_entry_pointing_outside_the_package_is_refused(package_copy: Path, entry: str) -> None:
    outside = package_copy.parent / "x"  # exists and matches its hash: the location alone is the problem
    outside.write_bytes(b"not part of the package")
    name = str(outside) if entry == "outside-absolute" else entry
    raw = read_raw(package_copy)
    raw["files"][name] = sha256_file(outside)
    write_raw(package_copy, raw)
    message = refused(package_copy)
    assert repr(name) in message
    assert "points outside the package" in message


# --- writing ------------------------------------------------------------------------------------------------


def test_save_manifest_replaces_it_atomically_and_reopens(package_copy: Path) -> None:
    package = open_package(package_copy)
    exits = tuple(dataclasses.replace(e, threshold=0.5 if not e.final else 0.0) for e in package.manifest.exits)
    before = sorted(os.listdir(package_copy))
    saved = package.save_manifest(package.manifest.with_exits(exits, None))
    assert sorted(os.listdir(package_copy)) == before  # no temporary file left beside it
    reopened = open_package(package_copy)
    assert reopened.manifest == saved.manifest
    assert [e.threshold for e in reopened.manifest.exits] == [0.5, 0.5, 0.0]
    assert reopened.manifest.package_id == package.manifest.package_id
    assert (package_copy / MANIFEST_FILE).read_text(encoding="utf-8") == saved.manifest.to_json()


def test_save_manifest_refuses_an_invalid_manifest_and_keeps_the_old_one(package_copy: Path) -> None:
    package = open_package(package_copy)
    old = (package_copy / MANIFEST_FILE).read_bytes()
    before = sorted(os.listdir(package_copy))
    with pytest.raises(PackageError, match="package_id"):
        package.save_manifest(dataclasses.replace(package.manifest, package_id="0" * 32))
    assert (package_copy / MANIFEST_FILE).read_bytes() == old
    assert sorted(os.listdir(package_copy)) == before


def test_save_manifest_with_new_weights_needs_a_new_package_id(package_copy: Path) -> None:
    # the documented way to re-hash after replacing a graph: package_id_of over the new hashes
    package = open_package(package_copy)
    files = {**package.manifest.files, "segments/1.onnx": "1" * 64}
    graphs = [s.file for s in package.manifest.segments]
    manifest = dataclasses.replace(package.manifest, files=files, package_id=package_id_of(files, graphs))
    package.save_manifest(manifest)
    assert Manifest.from_json((package_copy / MANIFEST_FILE).read_text()).package_id == manifest.package_id
    assert "segments/1.onnx was altered" in refused(package_copy)  # the file itself still has the old hash


def test_atomic_write_that_fails_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(IsADirectoryError):
        atomic_write_text(target, "cannot replace a non-empty directory")
    assert sorted(os.listdir(tmp_path)) == ["taken"]
    assert (target / "keep").read_text() == "x"


def fill_then_fail(target: Path, *, overwrite: bool) -> Path:
    """Write into a staged directory, then fail as a broken export would."""
    with staged_directory(target, overwrite=overwrite) as stage:
        (stage / "new.txt").write_text("new")
        assert stage.parent == target.parent  # staged beside the target, so the final rename is atomic
        raise RuntimeError(f"export failed after writing {stage}")


def test_staged_directory_leaves_nothing_when_the_block_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="export failed"):
        fill_then_fail(tmp_path / "pkg", overwrite=False)
    assert os.listdir(tmp_path) == []


def test_staged_directory_keeps_an_existing_dir_when_the_block_raises(tmp_path: Path) -> None:
    target = tmp_path / "pkg"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="export failed"):
        fill_then_fail(target, overwrite=True)
    assert os.listdir(tmp_path) == ["pkg"]
    assert os.listdir(target) == ["old.txt"]


def test_staged_directory_replaces_an_existing_dir_on_success(tmp_path: Path) -> None:
    target = tmp_path / "pkg"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with staged_directory(target, overwrite=True) as stage:
        (stage / "new.txt").write_text("new")
        assert (target / "old.txt").exists()  # nothing moves until the block has succeeded
    assert os.listdir(tmp_path) == ["pkg"]  # no stage, no retired copy
    assert os.listdir(target) == ["new.txt"]


def test_staged_directory_creates_a_new_dir_on_success(tmp_path: Path) -> None:
    target = tmp_path / "deeper" / "pkg"
    with staged_directory(target, overwrite=False) as stage:
        (stage / "a.txt").write_text("a")
    assert os.listdir(target.parent) == ["pkg"]
    assert (target / "a.txt").read_text() == "a"


def test_staged_directory_without_overwrite_refuses_an_existing_dir(tmp_path: Path) -> None:
    target = tmp_path / "pkg"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(FileExistsError), staged_directory(target, overwrite=False):
        pytest.fail("the block must not run")
    assert os.listdir(tmp_path) == ["pkg"]
    assert os.listdir(target) == ["old.txt"]


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    probe_dir, probe_file = tmp_path / "probe", tmp_path / "probe.txt"
    probe_dir.mkdir()
    probe_file.write_text("x")
    with staged_directory(tmp_path / "pkg", overwrite=False) as stage:
        atomic_write_text(stage / MANIFEST_FILE, "{}")
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert (mode(tmp_path / "pkg"), mode(tmp_path / "pkg" / MANIFEST_FILE)) == (mode(probe_dir), mode(probe_file))
