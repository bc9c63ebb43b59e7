"""A package on disk: a directory holding ``manifest.json`` and the files it hashes.

Opening a package checks every file against its sha256 before anything runs, so a corrupt or
tampered package is refused up front with the name of the file that differs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgeexit.errors import PackageError
from edgeexit.fileio import atomic_write_text, sha256_file
from edgeexit.manifest import MANIFEST_FILE, Manifest


@dataclass(frozen=True)
class Package:
    """An opened (and, unless asked otherwise, hash-verified) package directory."""

    root: Path
    manifest: Manifest

    def path(self, relative: str) -> Path:
        return self.root / relative

    def save_manifest(self, manifest: Manifest) -> Package:
        """Replace the manifest atomically (e.g. after calibration) and return the new view."""
        manifest.validate()
        atomic_write_text(self.root / MANIFEST_FILE, manifest.to_json())
        return Package(self.root, manifest)


def open_package(path: str | os.PathLike[str], *, verify_hashes: bool = True) -> Package:
    root = Path(path)
    if not root.exists():
        raise PackageError(f"package {root} does not exist; expected a directory written by `edgeexit export`")
    if not root.is_dir():
        raise PackageError(f"package {root} is not a directory; expected a directory written by `edgeexit export`")
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise PackageError(f"{manifest_path} is missing; expected the manifest written by `edgeexit export`")
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PackageError(f"cannot read {manifest_path} ({err}); expected a UTF-8 JSON manifest") from None
    manifest = Manifest.from_json(text, source=str(manifest_path))
    if verify_hashes:
        verify_files(root, manifest)
    return Package(root, manifest)


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
