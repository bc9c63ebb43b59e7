"""A package on disk: a directory holding ``manifest.json`` and the files it hashes, or a tar of one.

Opening a package checks every file against its sha256 before anything runs, so a corrupt or
tampered package is refused up front with the name of the file that differs. A ``.tar`` written
by ``edgeexit pack`` opens the same way: it is checked and unpacked once into a cache keyed by
its package_id and manifest (``edgeexit.archive``), so every command, the tail server and the
device daemon take either form.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgeexit.archive import unpack
from edgeexit.errors import PackageError
from edgeexit.fileio import atomic_write_text, sha256_file
from edgeexit.manifest import MANIFEST_FILE, Manifest
from edgeexit.signing import SIGNATURE_FILE, TrustedKeys, check_signature

_EXPECTED = "expected a directory written by `edgeexit export` or a tar written by `edgeexit pack`"


@dataclass(frozen=True)
class Package:
    """An opened (and, unless asked otherwise, hash-verified) package directory.

    ``archive`` is the tar it was unpacked from (``root`` is then its cache entry), else None.
    """

    root: Path
    manifest: Manifest
    archive: Path | None = None

    def path(self, relative: str) -> Path:
        return self.root / relative

    def save_manifest(self, manifest: Manifest) -> Package:
        """Replace the manifest atomically (e.g. after calibration) and return the new view."""
        if self.archive is not None:
            raise PackageError(_archive_is_read_only(self.archive, "change its manifest"))
        manifest.validate()
        atomic_write_text(self.root / MANIFEST_FILE, manifest.to_json())
        return Package(self.root, manifest)


def open_package(
    path: str | os.PathLike[str],
    *,
    verify_hashes: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    trusted_keys: TrustedKeys | None = None,
) -> Package:
    """Open a package directory, or a tar of one (unpacked into ``cache_dir``, default
    ``edgeexit.archive.default_cache_dir()``, and reused while its manifest is unchanged).

    ``trusted_keys``: refuse the package unless a trusted key signed its manifest
    (``edgeexit.signing``), checked before the manifest is read (a tar's own manifest.sig, before
    its cache entry is looked at)."""
    root = Path(path)
    if not root.exists():
        raise PackageError(f"package {root} does not exist; {_EXPECTED}")
    if root.is_file():
        # signature (given trusted keys) and hashes checked there
        unpacked = unpack(root, cache_dir=cache_dir, verify_hashes=verify_hashes, trusted_keys=trusted_keys)
        return Package(unpacked.root, unpacked.manifest, archive=root)
    if not root.is_dir():
        raise PackageError(f"package {root} is neither a directory nor a file; {_EXPECTED}")
    manifest_path = root / MANIFEST_FILE
    text = read_manifest_text(root, trusted_keys)
    manifest = Manifest.from_json(text, source=str(manifest_path))
    if verify_hashes:
        verify_files(root, manifest)
    return Package(root, manifest)


def read_manifest_text(root: Path, trusted_keys: TrustedKeys | None = None) -> str:
    """A package directory's manifest as text; with ``trusted_keys``, only once its signature checked
    out, before a byte of it is believed. Every package format (classifier, decoder) reads it here."""
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise PackageError(f"{manifest_path} is missing; expected the manifest written by `edgeexit export`")
    try:
        body = manifest_path.read_bytes()
        text = body.decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PackageError(f"cannot read {manifest_path} ({err}); expected a UTF-8 JSON manifest") from None
    if trusted_keys is not None:
        signature = root / SIGNATURE_FILE
        check_signature(body, signature.read_bytes() if signature.is_file() else None, trusted_keys, f"package {root}")
    return text


def require_directory(path: str | os.PathLike[str], action: str) -> None:
    """Commands that change a package (calibrate, quantize) refuse a tar up front: they would change
    the cache entry, not the tar, and the work would be lost."""
    if Path(path).is_file():
        raise PackageError(_archive_is_read_only(Path(path), action))


def _archive_is_read_only(archive: Path, action: str) -> str:
    return (
        f"{archive} is a packed package (a tar): cannot {action} in it; run this on the package directory "
        "(or tar -xf it), then `edgeexit pack` it again"
    )


def verify_files(root: Path, manifest: Manifest) -> None:
    for relative, expected in sorted(manifest.files.items()):
        file = root / relative
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise PackageError(f"manifest file entry {relative!r} points outside the package; refusing it")
        if not file.is_file():
            raise PackageError(f"{file} is missing; the manifest lists it (sha256 {expected[:12]}...)")
        found = sha256_file(file)
        if found != expected:
            raise PackageError(
                f"{file} was altered: sha256 {found[:12]}... but the manifest expects {expected[:12]}...; "
                "the package is corrupt or was edited: re-export or re-copy it"
            )
