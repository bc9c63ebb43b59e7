"""``edgeexit.archive``: a package as one reproducible tar, and the refuse-first way back.

Packing: the same package gives the same bytes (twice, from a copy with other mtimes and modes),
with fixed times, owners and modes, manifest.json first, exactly the files the manifest lists.
Reading: every unsafe or foreign entry is refused before anything is written (the cache directory
does not even exist afterwards); a good tar is unpacked once into a cache entry keyed by the
package_id and the manifest, then reused; concurrent unpackers share one entry.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeexit.archive import CACHE_ENV, pack, unpack
from edgeexit.errors import ArchiveError, PackageError
from edgeexit.fileio import sha256_file
from edgeexit.manifest import MANIFEST_FILE
from edgeexit.package import open_package, require_directory


@pytest.fixture(scope="module")
def packed(digits_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits package packed once under the top-level directory ``digits/``; read-only for tests."""
    return pack(digits_package, tmp_path_factory.mktemp("packed") / "digits.tar", root_name="digits").path


def members(archive: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(archive) as tar:
        return tar.getmembers()


def rewrite(source: Path, target: Path, change: Callable[[list[tuple[tarfile.TarInfo, bytes | None]]], None]) -> Path:
    """A copy of the tar ``source`` whose (member, data) list ``change`` edited in place."""
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = []
    with tarfile.open(source) as tar:
        for member in tar.getmembers():
            stream = tar.extractfile(member) if member.isreg() else None
            entries.append((member, stream.read() if stream else None))
    change(entries)
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for member, data in entries:
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return target


def entry(name: str, data: bytes | None = None, kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if data is not None else 0
    return info, data


# --- packing ---------------------------------------------------------------------------------------------------


def test_the_same_package_packs_to_the_same_bytes(digits_package: Path, tmp_path: Path) -> None:
    first = pack(digits_package, tmp_path / "a.tar")
    second = pack(digits_package, tmp_path / "b.tar")
    copy = tmp_path / "elsewhere" / digits_package.name  # same name, new mtimes, other modes
    shutil.copytree(digits_package, copy)
    for file in copy.rglob("*"):
        os.utime(file, (1_234_567_890, 1_234_567_890))
        file.chmod(0o700 if file.is_dir() else 0o600)
    third = pack(copy, tmp_path / "c.tar")
    data = first.path.read_bytes()
    assert second.path.read_bytes() == data
    assert third.path.read_bytes() == data
    assert first.sha256 == third.sha256 == sha256_file(first.path)
    assert first.size == len(data)


def test_entries_are_normalized_and_hold_exactly_the_listed_files(digits_package: Path, packed: Path) -> None:
    manifest = open_package(digits_package).manifest
    found = members(packed)
    name = "digits"
    assert [m.name for m in found[:2]] == [name, f"{name}/{MANIFEST_FILE}"]  # the manifest before any weights
    rest = [m.name for m in found[2:]]
    assert rest == sorted(rest)
    assert {m.name.removeprefix(f"{name}/") for m in found if m.isfile()} == {MANIFEST_FILE, *manifest.files}
    for member in found:
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (0, 0, 0, "", "")
        assert member.mode == (0o755 if member.isdir() else 0o644)
        assert member.isdir() or member.isreg()


def test_source_date_epoch_sets_every_mtime(
    digits_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert {m.mtime for m in members(pack(digits_package, tmp_path / "p.tar").path)} == {1_700_000_000}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(PackageError, match="SOURCE_DATE_EPOCH is 'yesterday'; expected a whole number"):
        pack(digits_package, tmp_path / "q.tar")


def test_files_the_manifest_does_not_list_are_left_out_and_named(package_copy: Path, tmp_path: Path) -> None:
    (package_copy / "notes.txt").write_text("mine", encoding="utf-8")
    (package_copy / "tails" / "scratch").mkdir()
    (package_copy / "tails" / "scratch" / "x.onnx").write_bytes(b"x")
    packed = pack(package_copy, tmp_path / "p.tar", root_name="v2")
    assert packed.skipped == ("notes.txt", "tails/scratch/x.onnx")
    names = [m.name for m in members(packed.path)]
    assert names[0] == "v2"
    assert all(n.startswith("v2/") for n in names[1:])
    assert not any("notes" in n or "scratch" in n for n in names)


def test_a_corrupt_package_is_refused_and_no_tar_is_left(package_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "p.tar").write_bytes(b"the previous tar")
    segment = package_copy / "segments" / "1.onnx"
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 1
    segment.write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"1\.onnx was altered: sha256 .*\(no tar was written\)"):
        pack(package_copy, out / "p.tar")
    assert [p.name for p in out.iterdir()] == ["p.tar"]  # no temporary file left beside it
    assert (out / "p.tar").read_bytes() == b"the previous tar"  # and the old tar untouched


def test_a_compressed_output_name_and_a_bad_root_name_are_refused(digits_package: Path, tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="writes an uncompressed tar"):
        pack(digits_package, tmp_path / "p.tar.gz")
    with pytest.raises(PackageError, match="cannot name the tar's top-level directory"):
        pack(digits_package, tmp_path / "p.tar", root_name="../up")
    assert list(tmp_path.iterdir()) == []


def test_tar_xf_gives_back_a_package(packed: Path, digits_package: Path, tmp_path: Path) -> None:
    subprocess.run(["tar", "-C", str(tmp_path), "-xf", str(packed)], check=True)
    unpacked = open_package(tmp_path / digits_package.name)
    assert unpacked.manifest == open_package(digits_package).manifest


# --- opening a tar ----------------------------------------------------------------------------------------------


def test_open_package_unpacks_a_tar_once_and_reuses_it(packed: Path, digits_package: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = open_package(packed, cache_dir=cache)
    assert first.archive == packed
    assert first.root.parent == cache
    assert first.root.name.startswith(first.manifest.package_id + "-")
    assert first.manifest == open_package(digits_package).manifest
    for relative, expected in first.manifest.files.items():
        assert sha256_file(first.path(relative)) == expected
    again = unpack(packed, cache_dir=cache)
    assert again.reused
    assert again.root == first.root
    assert [p.name for p in cache.iterdir()] == [first.root.name]  # no staging directory left


def test_the_cache_directory_comes_from_the_environment(
    packed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert open_package(packed).root.parent == tmp_path / "xdg" / "edgeexit" / "packages"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert open_package(packed).root.parent == tmp_path / "mine"


def test_a_recalibrated_package_gets_its_own_cache_entry(package_copy: Path, tmp_path: Path) -> None:
    """The package_id survives recalibration (it names the weights): keyed by it alone, the new
    thresholds would never be read."""
    cache = tmp_path / "cache"
    before = open_package(pack(package_copy, tmp_path / "a.tar").path, cache_dir=cache)
    opened = open_package(package_copy)
    exits = tuple(dataclasses.replace(e, threshold=0.25) for e in opened.manifest.exits)
    opened.save_manifest(opened.manifest.with_exits(exits, None))
    after = open_package(pack(package_copy, tmp_path / "b.tar").path, cache_dir=cache)
    assert after.manifest.package_id == before.manifest.package_id
    assert after.root != before.root
    assert [e.threshold for e in after.manifest.exits] == [0.25] * len(exits)


def test_a_damaged_cache_entry_is_replaced(packed: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    opened = open_package(packed, cache_dir=cache)
    (opened.root / "segments" / "0.onnx").write_bytes(b"damaged")
    again = open_package(packed, cache_dir=cache)
    assert again.root == opened.root
    assert sha256_file(again.path("segments/0.onnx")) == again.manifest.files["segments/0.onnx"]


def test_concurrent_unpackers_share_one_complete_entry(packed: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    roots: list[Path] = []
    failures: list[BaseException] = []
    start = threading.Barrier(6)

    def open_it() -> None:
        try:
            start.wait()
            roots.append(open_package(packed, cache_dir=cache).root)
        except BaseException as err:  # reported below, with the others
            failures.append(err)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(set(roots)) == 1
    assert [p.name for p in cache.iterdir()] == [roots[0].name]
    open_package(roots[0])  # every hash matches


def test_a_tar_with_the_files_at_its_root_or_compressed_is_read(packed: Path, tmp_path: Path) -> None:
    """What `tar -C pkg -cf x.tar .` and `gzip` make of a package opens too."""
    subprocess.run(["tar", "-C", str(tmp_path), "-xf", str(packed)], check=True)
    (directory,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    flat = tmp_path / "flat.tar.gz"
    subprocess.run(["tar", "-C", str(directory), "-czf", str(flat), "."], check=True)
    assert open_package(flat, cache_dir=tmp_path / "cache").manifest == open_package(directory).manifest


def test_an_opened_tar_is_read_only(packed: Path, tmp_path: Path) -> None:
    opened = open_package(packed, cache_dir=tmp_path / "cache")
    with pytest.raises(PackageError, match=r"is a packed package \(a tar\): cannot change its manifest"):
        opened.save_manifest(opened.manifest)
    with pytest.raises(PackageError, match="cannot quantize it in it; run this on the package directory"):
        require_directory(packed, "quantize it")


# --- refused before anything is written ---------------------------------------------------------------------------


def _add(*extra: tuple) -> Callable[[list], None]:
    return lambda entries: entries.extend(extra)


def _duplicate(entries: list) -> None:
    member, data = next(e for e in entries if e[0].name.endswith("segments/0.onnx"))
    copy = tarfile.TarInfo(member.name.replace("segments/0.onnx", "segments/./0.onnx"))
    copy.size = member.size
    entries.append((copy, data))


def _drop(suffix: str) -> Callable[[list], None]:
    def change(entries: list) -> None:
        entries[:] = [e for e in entries if not e[0].name.endswith(suffix)]

    return change


def _flip(suffix: str) -> Callable[[list], None]:
    def change(entries: list) -> None:
        for position, (member, data) in enumerate(entries):
            if member.name.endswith(suffix):
                changed = bytearray(data)
                changed[len(changed) // 2] ^= 1
                entries[position] = (member, bytes(changed))

    return change


def _unlist(entries: list) -> None:
    """A manifest listing a file outside the package (its package_id still matches: only files changed)."""
    for position, (member, data) in enumerate(entries):
        if member.name.endswith(MANIFEST_FILE):
            raw = json.loads(data)
            raw["files"]["../escape.onnx"] = "0" * 64
            changed = json.dumps(raw).encode()
            member.size = len(changed)
            entries[position] = (member, changed)


REFUSED = {
    "absolute path": (_add(entry("/etc/evil", b"x")), "absolute or not a POSIX path"),
    "parent path": (_add(entry("digits/../../evil", b"x")), "leads outside the tar's root"),
    "symlink": (_add(entry("digits/link", None, tarfile.SYMTYPE, "/etc/passwd")), "a symbolic link to '/etc/passwd'"),
    "hard link": (_add(entry("digits/hard", None, tarfile.LNKTYPE, "digits/monolithic.onnx")), "a hard link to"),
    "device": (_add(entry("digits/dev", None, tarfile.CHRTYPE)), "a device file"),
    "fifo": (_add(entry("digits/fifo", None, tarfile.FIFOTYPE)), "a FIFO"),
    "duplicate": (_duplicate, "twice"),
    "unlisted file": (_add(entry("digits/extra.onnx", b"x")), "1 file(s) its manifest does not list"),
    "stray directory": (_add(entry("digits/empty", None, tarfile.DIRTYPE)), "holds no file the manifest lists"),
    "second top directory": (_add(entry("other/x", b"x")), f"has no {MANIFEST_FILE} at its root"),
    "missing file": (_drop("segments/2.onnx"), "lacks 1 file(s) its manifest lists ('segments/2.onnx')"),
    "no manifest": (_drop(MANIFEST_FILE), f"has no {MANIFEST_FILE}"),
    "listed path outside": (_unlist, "'../escape.onnx', which is not a plain path inside the package"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_an_unsafe_or_foreign_tar_is_refused_before_anything_is_written(
    case: str, packed: Path, tmp_path: Path
) -> None:
    change, message = REFUSED[case]
    bad = rewrite(packed, tmp_path / "bad.tar", change)
    cache = tmp_path / "cache"
    with pytest.raises(ArchiveError, match=re.escape(message)) as info:
        open_package(bad, cache_dir=cache)
    assert str(bad) in str(info.value)
    assert not cache.exists()


def test_a_file_whose_hash_differs_is_refused_and_nothing_is_kept(packed: Path, tmp_path: Path) -> None:
    bad = rewrite(packed, tmp_path / "bad.tar", _flip("segments/1.onnx"))
    cache = tmp_path / "cache"
    with pytest.raises(ArchiveError, match=r"segments/1\.onnx has sha256 .*\(nothing was unpacked\)"):
        open_package(bad, cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_a_file_that_is_not_a_tar_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ArchiveError, match="is not a tar"):
        open_package(tmp_path / "x.tar", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


# --- the device layer -----------------------------------------------------------------------------------------------

DEVICE_SCRIPT = r"""
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "onnx", "onnxscript", "onnxruntime", "numpy", "grpc"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Block())
from edgeexit.archive import pack
from edgeexit.package import open_package

packed = pack(sys.argv[1], sys.argv[2])
print(open_package(packed.path, cache_dir=sys.argv[3]).manifest.package_id)
"""


def test_pack_and_unpack_need_neither_torch_onnx_nor_numpy(digits_package: Path, tmp_path: Path) -> None:
    """The archive sits in the manifest layer: the device imports it before any runtime."""
    result = subprocess.run(
        [sys.executable, "-c", DEVICE_SCRIPT, str(digits_package), str(tmp_path / "p.tar"), str(tmp_path / "c")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == open_package(digits_package).manifest.package_id
