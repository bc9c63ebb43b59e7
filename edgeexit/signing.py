"""Who made a package: an Ed25519 signature over its manifest, checked before anything is trusted.

The manifest already hashes every file, so signing the manifest's bytes signs the package: whoever
rewrites a graph must rewrite the manifest's hash too, and then the signature no longer verifies.
The signature travels beside the manifest as ``manifest.sig`` (JSON: the key's id and the
signature, base64), outside the hashed files because it cannot hash itself. A reader given trusted
public keys (several, so keys can rotate) refuses an unsigned package, one signed by another key,
and one whose manifest changed after signing, before it reads any graph.

Keys are PEM files: PKCS#8 for the private key (written 0600), SubjectPublicKeyInfo for the
public one, so ``openssl`` reads and writes them too. Needs the ``cryptography`` package
(``pip install 'edgeexit[sign]'``), imported only when a key is used.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeexit.errors import PackageError, UsageError
from edgeexit.fileio import atomic_write_bytes, atomic_write_text

SIGNATURE_FILE = "manifest.sig"
SIGNATURE_FORMAT = "edgeexit-signature"
ALGORITHM = "ed25519"


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise UsageError("package signatures need the cryptography package: pip install 'edgeexit[sign]'") from None
    return serialization, ed25519


def key_id(public_key: Any) -> str:
    """A short name for a public key: the first 16 hex digits of the sha256 of its raw 32 bytes."""
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(private_path: Path, public_path: Path) -> str:
    """A new Ed25519 key pair as PEM files (the private one readable by its owner only); its key id."""
    serialization, ed25519 = _crypto()
    private = ed25519.Ed25519PrivateKey.generate()
    if private_path.exists() or public_path.exists():
        raise UsageError(f"{private_path} or {public_path} exists; refusing to overwrite a key, pick another name")
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    atomic_write_bytes(private_path, pem)
    os.chmod(private_path, 0o600)
    public = private.public_key()
    atomic_write_bytes(
        public_path, public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return key_id(public)


def _load_private(path: Path) -> Any:
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise UsageError(
            f"cannot read the private key {path} ({err}); expected an unencrypted PEM Ed25519 key"
        ) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise UsageError(f"{path} holds a {type(key).__name__}; expected an Ed25519 private key (`edgeexit keygen`)")
    return key


@dataclass(frozen=True)
class TrustedKeys:
    """The public keys a reader accepts signatures from, by key id (several: keys rotate)."""

    keys: dict[str, Any]

    @classmethod
    def load(cls, paths: Iterable[str | os.PathLike[str]]) -> TrustedKeys:
        serialization, ed25519 = _crypto()
        keys: dict[str, Any] = {}
        for path in paths:
            try:
                key = serialization.load_pem_public_key(Path(path).read_bytes())
            except (OSError, ValueError) as err:
                raise UsageError(
                    f"cannot read the trusted key {path} ({err}); expected a PEM Ed25519 public key"
                ) from None
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise UsageError(f"{path} holds a {type(key).__name__}; expected an Ed25519 public key")
            keys[key_id(key)] = key
        if not keys:
            raise UsageError("no trusted keys given; expected one or more PEM Ed25519 public keys")
        return cls(keys)


def sign_package(root: str | os.PathLike[str], private_key: str | os.PathLike[str]) -> str:
    """Sign ``root``'s manifest with ``private_key``, writing ``manifest.sig`` atomically; the key id.

    Sign after the last change to the manifest (calibration rewrites it: sign again after)."""
    from edgeexit.manifest import MANIFEST_FILE

    key = _load_private(Path(private_key))
    manifest = Path(root) / MANIFEST_FILE
    try:
        body = manifest.read_bytes()
    except OSError as err:
        raise PackageError(f"cannot read {manifest} ({err}); expected a package directory") from None
    found = key_id(key.public_key())
    record = {
        "format": SIGNATURE_FORMAT,
        "version": 1,
        "algorithm": ALGORITHM,
        "key_id": found,
        "signature": base64.b64encode(key.sign(body)).decode("ascii"),
    }
    atomic_write_text(Path(root) / SIGNATURE_FILE, json.dumps(record, indent=2) + "\n")
    return found


def check_signature(manifest: bytes, signature: bytes | None, trusted: TrustedKeys, where: str) -> str:
    """The id of the trusted key that signed ``manifest``; a PackageError saying why otherwise."""
    from cryptography.exceptions import InvalidSignature

    if signature is None:
        raise PackageError(
            f"{where} is not signed (no {SIGNATURE_FILE}) and this reader trusts only packages signed by "
            f"{sorted(trusted.keys)}: sign it with `edgeexit sign PKG --key KEY`"
        )
    try:
        record = json.loads(signature.decode("utf-8"))
        if record.get("format") != SIGNATURE_FORMAT or record.get("algorithm") != ALGORITHM:
            raise ValueError(f"format {record.get('format')!r}, algorithm {record.get('algorithm')!r}")
        signer = str(record["key_id"])
        raw = base64.b64decode(record["signature"], validate=True)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise PackageError(
            f"{where}'s {SIGNATURE_FILE} is malformed ({err}); expected the JSON `edgeexit sign` writes"
        ) from None
    key = trusted.keys.get(signer)
    if key is None:
        raise PackageError(
            f"{where} is signed by key {signer}, which this reader does not trust (trusted: {sorted(trusted.keys)})"
        )
    try:
        key.verify(raw, manifest)
    except InvalidSignature:
        raise PackageError(
            f"{where}'s signature by key {signer} does not match its manifest: the manifest changed after signing "
            "(a tampered package, or one calibrated and not signed again)"
        ) from None
    return signer
