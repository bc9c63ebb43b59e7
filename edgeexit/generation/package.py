"""A decoder package on disk: ``manifest.json`` (format ``edgeexit-decoder``) and the files it hashes.

Opened like a classifier package: every file is checked against its sha256 before a session
loads, so a corrupt or edited package is refused up front with the name of the file that differs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgeexit.errors import PackageError
from edgeexit.fileio import atomic_write_text
from edgeexit.generation.manifest import DecoderManifest
from edgeexit.manifest import MANIFEST_FILE
from edgeexit.package import read_manifest_text, verify_files
from edgeexit.signing import TrustedKeys

_EXPECTED = "expected a directory written by `edgeexit export` for a decoder (e.g. `edgeexit export smollm2_135m`)"


@dataclass(frozen=True)
class DecoderPackage:
    root: Path
    manifest: DecoderManifest

    def path(self, relative: str) -> Path:
        return self.root / relative

    def save_manifest(self, manifest: DecoderManifest) -> DecoderPackage:
        """Replace the manifest atomically (e.g. after exits are trained) and return the new view."""
        manifest.validate()
        atomic_write_text(self.root / MANIFEST_FILE, manifest.to_json())
        return DecoderPackage(self.root, manifest)


def open_decoder_package(
    path: str | os.PathLike[str], *, verify_hashes: bool = True, trusted_keys: TrustedKeys | None = None
) -> DecoderPackage:
    """A decoder package directory, hashes verified; ``trusted_keys``: refuse it unless a trusted key
    signed its manifest (``edgeexit sign``), checked before the manifest is read."""
    root = Path(path)
    if not root.is_dir():
        raise PackageError(f"decoder package {root} is not a directory; {_EXPECTED}")
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise PackageError(f"{manifest_path} is missing; {_EXPECTED}")
    text = read_manifest_text(root, trusted_keys)
    manifest = DecoderManifest.from_json(text, source=str(manifest_path))
    if verify_hashes:
        verify_files(root, manifest)  # type: ignore[arg-type]  # it reads .files only
    return DecoderPackage(root, manifest)


def is_decoder_package(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory whose manifest declares the decoder format."""
    from edgeexit.generation.manifest import is_decoder_manifest

    manifest = Path(path) / MANIFEST_FILE
    try:
        return manifest.is_file() and is_decoder_manifest(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return False
