"""A package as one reproducible ``.tar`` (``edgeexit pack``), and the safe way back to a directory.

Layout: the tar holds one top-level directory, by default named after the package directory
(``pkg/`` packs to ``pkg/manifest.json``, ``pkg/segments/0.onnx`` ...), as ``tar -cf pkg.tar pkg/``
would, so ``tar -xf pkg.tar`` gives back ``pkg/`` and two versions unpack side by side under their
own names. It holds ``manifest.json`` and exactly the files the manifest hashes, nothing else.

Reproducible: the same package (same files, same directory name) gives a byte-identical tar
wherever and whenever it is packed. ``manifest.json`` comes first (a streaming reader validates it
before any weights), then every entry sorted by path; every mtime is 0, or ``SOURCE_DATE_EPOCH``
when set; owners are uid/gid 0 with no names; modes are 0644 for files and 0755 for directories;
the format is POSIX pax. Uncompressed: ONNX weights barely compress, and a gzip stream would put a
time and name in its header. Reading accepts what ``tarfile`` detects by itself (``.tar``,
``.tar.gz``, ``.tar.bz2``, ``.tar.xz``) since that costs nothing, and also a tar with the files at
its root (``tar -C pkg -cf pkg.tar .``).

Reading is refuse-first: the member list and the manifest inside are read and checked before
anything is written. Refused: absolute paths and ``..``, links, devices and FIFOs, duplicate
names, any file the manifest does not list (and any listed file that is absent). Then the files
are extracted into a staging directory with their sha256 checked as they stream, and the staging
directory is renamed into the cache in one step, so a reader never sees half a package and
concurrent unpackers cannot corrupt each other (the loser of the rename drops its copy).

The cache entry is keyed by the ``package_id`` *and* the manifest's own sha256: the package_id
names the weights only, so a recalibrated or quantized package keeps it while its manifest (and
files) change; keyed by the package_id alone, a new tar of the same weights would be served the
old thresholds.

numpy-free and torch-free on purpose: the device and the tail server import it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import shutil
import socket
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from edgeexit.errors import ArchiveError, PackageError
from edgeexit.fileio import atomic_output, current_umask, sha256_file
from edgeexit.manifest import MANIFEST_FILE, Manifest
from edgeexit.signing import SIGNATURE_FILE, TrustedKeys, check_signature

#: the largest manifest.sig a tar may hold (`edgeexit sign` writes about 200 bytes)
MAX_SIGNATURE_BYTES = 64 * 1024

#: Overrides where tars are unpacked (default ``$XDG_CACHE_HOME/edgeexit/packages``).
CACHE_ENV = "EDGEEXIT_PACKAGE_CACHE"
#: A manifest larger than this is not an edgeexit manifest (they are kilobytes); refused unread.
MAX_MANIFEST_BYTES = 64 << 20
FILE_MODE = 0o644
DIR_MODE = 0o755
_COMPRESSED = (".gz", ".tgz", ".bz2", ".xz", ".zst", ".lz4")
_BLOCK = 1 << 20
_STAGE_PREFIX = ".stage-"


@dataclass(frozen=True)
class PackedArchive:
    """What ``pack`` wrote: enough for a user to check a copy (size, sha256) and to name the weights."""

    path: Path
    size: int
    sha256: str
    package_id: str
    model_name: str
    root_name: str  # the tar's top-level directory
    files: int  # files in the tar, manifest.json included
    skipped: tuple[str, ...]  # files in the package directory the manifest does not list: left out


@dataclass(frozen=True)
class Unpacked:
    """A tar's package as a verified directory in the cache."""

    archive: Path
    root: Path
    manifest: Manifest
    reused: bool  # a complete entry was already in the cache


# --- pack ------------------------------------------------------------------------------------------------------


def source_date_epoch() -> int:
    """The mtime every entry gets: ``SOURCE_DATE_EPOCH`` (reproducible-builds.org) or 0."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return 0
    if not value.isdigit():
        raise PackageError(f"SOURCE_DATE_EPOCH is {value!r}; expected a whole number of seconds since 1970, or unset")
    return int(value)


def pack(
    package_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, root_name: str | None = None
) -> PackedArchive:
    """Write ``package_dir`` as one reproducible tar at ``out`` (atomically) and describe it.

    Every file is checked against the manifest's sha256 as it is read, so a corrupt package is
    refused and no tar is left behind. Files the manifest does not list are left out (a package
    directory may gather plots or editor files; what the tar holds is exactly what a reader
    verifies) and named in ``skipped``. ``root_name`` is the top-level directory in the tar
    (default: ``package_dir``'s name).
    """
    source = Path(package_dir)
    target = Path(out)
    manifest_path = source / MANIFEST_FILE
    if not source.is_dir():
        raise PackageError(f"package {source} is not a directory; expected a directory written by `edgeexit export`")
    if not manifest_path.is_file():
        raise PackageError(f"{manifest_path} is missing; expected the manifest written by `edgeexit export`")
    if target.name.lower().endswith(_COMPRESSED):
        raise PackageError(
            f"{target}: edgeexit pack writes an uncompressed tar (ONNX weights barely compress, and a compressed "
            "stream is not byte-reproducible); name the output .tar, or compress the tar yourself"
        )
    name = root_name if root_name is not None else source.resolve().name
    _check_root_name(name)
    manifest_bytes = manifest_path.read_bytes()
    manifest = _parse_manifest(manifest_bytes, str(manifest_path))
    listed = dict(manifest.files)
    for relative in listed:
        _check_listed_name(relative, str(manifest_path))
    signature = source / SIGNATURE_FILE
    skipped = tuple(
        relative
        for relative in _walk_files(source)
        if relative not in (MANIFEST_FILE, SIGNATURE_FILE) and relative not in listed
    )
    mtime = source_date_epoch()
    directories = sorted({str(parent) for relative in listed for parent in _parents(relative)})
    entries = [(d, None) for d in directories] + [(f, listed[f]) for f in listed]
    entries.sort(key=lambda entry: entry[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(target) as stream, tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_info(name, None, mtime))
        tar.addfile(_info(f"{name}/{MANIFEST_FILE}", len(manifest_bytes), mtime), io.BytesIO(manifest_bytes))
        if signature.is_file():  # `edgeexit sign`'s signature travels with the manifest it signs
            signed = signature.read_bytes()
            tar.addfile(_info(f"{name}/{SIGNATURE_FILE}", len(signed), mtime), io.BytesIO(signed))
        for relative, expected in entries:
            if expected is None:
                tar.addfile(_info(f"{name}/{relative}", None, mtime))
            else:
                _add_verified(tar, source, relative, expected, f"{name}/{relative}", mtime)
    return PackedArchive(
        path=target,
        size=target.stat().st_size,
        sha256=sha256_file(target),
        package_id=manifest.package_id,
        model_name=manifest.model_name,
        root_name=name,
        files=len(listed) + 1,
        skipped=skipped,
    )


def _add_verified(tar: tarfile.TarFile, source: Path, relative: str, expected: str, arcname: str, mtime: int) -> None:
    file = source / relative
    if not file.is_file():
        raise PackageError(
            f"{file} is missing; the manifest lists it (sha256 {expected[:12]}...): the package is incomplete, "
            "re-export or re-copy it"
        )
    with open(file, "rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        reader = _HashingReader(stream)
        tar.addfile(_info(arcname, size, mtime), reader)
    found = reader.digest.hexdigest()
    if found != expected:
        raise PackageError(
            f"{file} was altered: sha256 {found[:12]}... but the manifest expects {expected[:12]}...; "
            "the package is corrupt or was edited: re-export or re-copy it (no tar was written)"
        )


def _info(name: str, size: int | None, mtime: int) -> tarfile.TarInfo:
    """A normalized entry: only the name, size and kind depend on the package."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if size is None else tarfile.REGTYPE
    info.mode = DIR_MODE if size is None else FILE_MODE
    info.size = size or 0
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _HashingReader:
    """Hashes exactly the bytes tarfile copies into the tar (a file changing underneath is caught)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        chunk = self._stream.read(size)
        self.digest.update(chunk)
        return chunk


def _walk_files(root: Path) -> list[str]:
    found = []
    for directory, _dirs, files in os.walk(root):
        for file in files:
            found.append((Path(directory) / file).relative_to(root).as_posix())
    return sorted(found)


# --- read and check, before anything is written -----------------------------------------------------------------


@dataclass(frozen=True)
class _Listing:
    """A tar's checked member list: its manifest and, by package-relative path, its file members."""

    manifest: Manifest
    manifest_bytes: bytes
    files: dict[str, tarfile.TarInfo]
    directories: frozenset[str]
    signature: bytes | None = None  # manifest.sig, read from the tar (never from the cache)


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, mode="r:*")
    except (tarfile.ReadError, EOFError) as err:
        raise ArchiveError(
            f"{archive} is not a tar ({err}); expected a package directory written by `edgeexit export` or a tar "
            "written by `edgeexit pack`"
        ) from None
    except tarfile.CompressionError as err:
        raise ArchiveError(f"{archive}: {err}; expected an uncompressed tar as `edgeexit pack` writes") from None


def _read_listing(tar: tarfile.TarFile, archive: Path) -> _Listing:
    try:
        members = tar.getmembers()
    except (tarfile.TarError, EOFError) as err:
        raise ArchiveError(f"{archive} is truncated or not a tar ({err}); re-copy it or re-pack it") from None
    names: dict[str, tarfile.TarInfo] = {}
    for member in members:
        name = _member_name(member, archive)
        if not (member.isdir() or (member.isreg() and not member.issparse())):
            raise ArchiveError(
                f"{archive} holds {member.name!r}, {_kind(member)}; a package tar holds only regular files and "
                "directories: re-pack it with `edgeexit pack`"
            )
        if name in names:
            raise ArchiveError(
                f"{archive} holds {member.name!r} twice (or as two spellings of one path); a package tar names "
                "every path once: re-pack it with `edgeexit pack`"
            )
        names[name] = member
    prefix = _root_prefix(names, archive)
    relative: dict[str, tarfile.TarInfo] = {}
    for name, member in names.items():
        if prefix and name == prefix.rstrip("/"):
            if not member.isdir():
                raise ArchiveError(f"{archive}: the top-level entry {member.name!r} is not a directory")
            continue
        relative[name.removeprefix(prefix)] = member
    manifest_member = relative.pop(MANIFEST_FILE)
    signature = _signature(tar, relative.pop(SIGNATURE_FILE, None), archive)
    if not manifest_member.isreg():
        raise ArchiveError(f"{archive}: {prefix}{MANIFEST_FILE} is not a regular file")
    if manifest_member.size > MAX_MANIFEST_BYTES:
        raise ArchiveError(
            f"{archive}: {prefix}{MANIFEST_FILE} is {manifest_member.size} bytes; an edgeexit manifest is at most "
            f"{MAX_MANIFEST_BYTES >> 20} MiB"
        )
    stream = tar.extractfile(manifest_member)
    assert stream is not None  # a regular file
    manifest_bytes = stream.read()
    manifest = _parse_manifest(manifest_bytes, f"{archive}:{prefix}{MANIFEST_FILE}")
    for name in manifest.files:
        _check_listed_name(name, f"{archive}:{prefix}{MANIFEST_FILE}")
    needed_directories = {str(parent) for name in manifest.files for parent in _parents(name)}
    files = {name: m for name, m in relative.items() if not m.isdir()}
    directories = {name for name, m in relative.items() if m.isdir()}
    unlisted = sorted(set(files) - set(manifest.files))
    if unlisted:
        shown = ", ".join(repr(prefix + n) for n in unlisted[:5]) + (" ..." if len(unlisted) > 5 else "")
        raise ArchiveError(
            f"{archive} holds {len(unlisted)} file(s) its manifest does not list ({shown}), so their contents "
            "cannot be checked; a package tar holds manifest.json and the files it hashes only: re-pack it "
            "with `edgeexit pack`"
        )
    stray = sorted(directories - needed_directories)
    if stray:
        raise ArchiveError(
            f"{archive} holds the directory {prefix + stray[0]!r}, which holds no file the manifest lists; a "
            "package tar holds manifest.json and the files it hashes only: re-pack it with `edgeexit pack`"
        )
    missing = sorted(set(manifest.files) - set(files))
    if missing:
        shown = ", ".join(repr(n) for n in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ArchiveError(
            f"{archive} lacks {len(missing)} file(s) its manifest lists ({shown}); the tar is incomplete: re-copy "
            "it or re-pack it with `edgeexit pack`"
        )
    clash = sorted(set(manifest.files) & needed_directories)
    if clash:
        raise ArchiveError(f"{archive}: the manifest lists {clash[0]!r} both as a file and as a directory")
    return _Listing(manifest, manifest_bytes, files, frozenset(needed_directories), signature)


def _signature(tar: tarfile.TarFile, member: tarfile.TarInfo | None, archive: Path) -> bytes | None:
    """The tar's manifest.sig (``edgeexit sign``): outside the manifest's hashes, as in a directory."""
    if member is None:
        return None
    if not member.isreg() or member.size > MAX_SIGNATURE_BYTES:
        raise ArchiveError(f"{archive}: {member.name!r} is not a signature file of at most {MAX_SIGNATURE_BYTES} bytes")
    stream = tar.extractfile(member)
    assert stream is not None  # a regular file
    return stream.read()


def _member_name(member: tarfile.TarInfo, archive: Path) -> str:
    """The member's path normalized (``./`` and empty parts dropped); absolute paths and ``..`` refused."""
    raw = member.name
    if not raw or raw.startswith("/") or "\\" in raw or "\x00" in raw:
        raise ArchiveError(
            f"{archive} holds the path {raw!r}, which is absolute or not a POSIX path; a package tar holds "
            "relative paths inside its root only: re-pack it with `edgeexit pack`"
        )
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(
            f"{archive} holds the path {raw!r}, which leads outside the tar's root; refusing the whole tar: "
            "re-pack it with `edgeexit pack`"
        )
    if not parts:
        if member.isdir():
            return "."  # the tar's root itself, as `tar -C pkg -cf x.tar .` writes it
        raise ArchiveError(f"{archive} holds an entry with the empty path {raw!r}")
    return "/".join(parts)


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"a hard link to {member.linkname!r}"
    if member.ischr() or member.isblk():
        return "a device file"
    if member.isfifo():
        return "a FIFO"
    if member.issparse():
        return "a sparse file"
    return f"an entry of type {member.type!r}"


def _root_prefix(names: dict[str, tarfile.TarInfo], archive: Path) -> str:
    """``"pkg/"`` for one top-level directory holding manifest.json; ``""`` for files at the root."""
    names.pop(".", None)
    if MANIFEST_FILE in names:
        return ""
    tops = {name.split("/", 1)[0] for name in names}
    if len(tops) == 1:
        (top,) = tops
        if f"{top}/{MANIFEST_FILE}" in names:
            return f"{top}/"
    found = ", ".join(sorted(tops)[:5]) or "nothing"
    raise ArchiveError(
        f"{archive} has no {MANIFEST_FILE} at its root or in its one top-level directory (it holds: {found}); "
        "expected a tar written by `edgeexit pack`"
    )


def _check_listed_name(name: str, source: str) -> None:
    path = PurePosixPath(name)
    if (
        not name
        or name == MANIFEST_FILE
        or path.is_absolute()
        or "\\" in name
        or any(part in ("", ".", "..") for part in name.split("/"))
    ):
        raise ArchiveError(
            f"{source} lists the file {name!r}, which is not a plain path inside the package (absolute, '..', "
            "empty parts or the manifest itself); the manifest was edited by hand: re-export the package"
        )


def _check_root_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise PackageError(f"{name!r} cannot name the tar's top-level directory; expected one plain directory name")


def _parents(relative: str) -> list[PurePosixPath]:
    parents = list(PurePosixPath(relative).parents)
    return [p for p in parents if str(p) != "."]


def _parse_manifest(data: bytes, source: str) -> Manifest:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PackageError(f"cannot read {source} ({err}); expected a UTF-8 JSON manifest") from None
    return Manifest.from_json(text, source=source)


# --- unpack into the cache -----------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$EDGEEXIT_PACKAGE_CACHE``, else ``$XDG_CACHE_HOME/edgeexit/packages`` (``~/.cache`` when unset)."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeexit" / "packages"


def cache_key(manifest: Manifest, manifest_bytes: bytes) -> str:
    """``<package_id>-<first 16 hex of the manifest's sha256>``: the weights, and this exact manifest."""
    return f"{manifest.package_id}-{hashlib.sha256(manifest_bytes).hexdigest()[:16]}"


def unpack(
    path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    verify_hashes: bool = True,
    trusted_keys: TrustedKeys | None = None,
) -> Unpacked:
    """The tar's package as a complete, verified directory in the cache (extracted once, then reused).

    Everything that can be checked from the member list and the manifest is checked before anything
    is written (see the module docstring). A new entry is extracted into a staging directory with
    every file's sha256 checked as it streams, then renamed into place. A cached entry is reused when
    its manifest is byte-identical to the tar's and (``verify_hashes``, the default) its files still
    match their hashes; a damaged entry is replaced. ``trusted_keys``: the tar's own manifest.sig must
    verify against one of them, before the cache is looked at.
    """
    archive = Path(path)
    with _open_tar(archive) as tar:
        listing = _read_listing(tar, archive)
        if trusted_keys is not None:
            check_signature(listing.manifest_bytes, listing.signature, trusted_keys, f"package tar {archive}")
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        entry = cache / cache_key(listing.manifest, listing.manifest_bytes)
        if _usable(entry, listing, verify_hashes):
            return Unpacked(archive, entry, listing.manifest, reused=True)
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise PackageError(
                f"cannot create the package cache {cache} ({err.strerror or err}) to unpack {archive}; set "
                f"{CACHE_ENV} (or XDG_CACHE_HOME) to a writable directory, or unpack the tar (tar -xf) and give "
                "the directory"
            ) from None
        _remove_dead_stages(cache)
        stage = Path(tempfile.mkdtemp(prefix=f"{_STAGE_PREFIX}{socket.gethostname()}-{os.getpid()}-", dir=cache))
        try:
            stage.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 would hide the package from a daemon's other users
            _extract(tar, listing, stage, archive)
            if entry.exists():
                if _usable(entry, listing, verify_hashes):  # another unpacker finished while we extracted
                    return Unpacked(archive, entry, listing.manifest, reused=True)
                _retire(entry, cache)  # damaged: out of the way, then replaced
            try:
                os.rename(stage, entry)
            except OSError as err:
                if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                # another process unpacked the same tar first: its entry is as good as ours
                if not _usable(entry, listing, verify_hashes):
                    raise PackageError(
                        f"the cache entry {entry} for {archive} is being replaced by another process or is damaged; "
                        "try again"
                    ) from None
                return Unpacked(archive, entry, listing.manifest, reused=True)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return Unpacked(archive, entry, listing.manifest, reused=False)


def _usable(entry: Path, listing: _Listing, verify_hashes: bool) -> bool:
    """A cached entry holds this exact manifest and, when verifying, files that match it."""
    try:
        if (entry / MANIFEST_FILE).read_bytes() != listing.manifest_bytes:
            return False
    except OSError:
        return False
    if not verify_hashes:
        return True
    for name, expected in listing.manifest.files.items():
        file = entry / name
        if not file.is_file() or sha256_file(file) != expected:
            return False
    return True


def _extract(tar: tarfile.TarFile, listing: _Listing, stage: Path, archive: Path) -> None:
    for directory in sorted(listing.directories):
        (stage / directory).mkdir(parents=True, exist_ok=True)
    # in the tar's own order: a compressed tar then reads forward only, never rewinds its stream
    for name in sorted(listing.files, key=lambda n: listing.files[n].offset_data):
        expected = listing.manifest.files[name]
        found = _copy_hashed(tar, listing.files[name], stage / name)
        if found != expected:
            raise ArchiveError(
                f"{archive}: {name} has sha256 {found[:12]}... but its manifest expects {expected[:12]}...; the tar "
                "is corrupt or was edited (nothing was unpacked): re-copy it or re-pack it with `edgeexit pack`"
            )
    # the manifest last: an entry without one is never taken for a package
    with open(stage / MANIFEST_FILE, "xb") as target:
        target.write(listing.manifest_bytes)


def _copy_hashed(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> str:
    source = tar.extractfile(member)
    assert source is not None  # checked: a regular file
    digest = hashlib.sha256()
    with source, open(target, "xb") as out:
        while block := source.read(_BLOCK):
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def _retire(entry: Path, cache: Path) -> None:
    retired = Path(tempfile.mkdtemp(prefix=f"{_STAGE_PREFIX}{socket.gethostname()}-{os.getpid()}-old-", dir=cache))
    with contextlib.suppress(FileNotFoundError):  # another process retired it first
        os.rename(entry, retired / "entry")
    shutil.rmtree(retired, ignore_errors=True)


def _remove_dead_stages(cache: Path) -> None:
    """Staging directories left by unpackers on this host that died mid-way (their pid is gone)."""
    host = socket.gethostname()
    for stage in cache.glob(f"{_STAGE_PREFIX}{host}-*"):
        pid = stage.name.removeprefix(f"{_STAGE_PREFIX}{host}-").split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(stage, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's
