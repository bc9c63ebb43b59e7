"""Signed packages: whoever can rewrite the files can rewrite the manifest's hashes, not the signature.

Real keys (`edgeexit keygen`), real signatures (`edgeexit sign`), a real tampered package (a
weight of segment 0 changed, its hash and the package_id recomputed so every hash check passes),
refused by `verify --trusted-key` in a subprocess and by the Engine, before anything loads.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeexit.errors import PackageError
from edgeexit.fileio import sha256_file
from edgeexit.manifest import MANIFEST_FILE, package_id_of
from edgeexit.package import open_package
from edgeexit.runtime import Engine
from edgeexit.signing import SIGNATURE_FILE, TrustedKeys, sign_package

pytest.importorskip("cryptography", reason="signatures need the cryptography package: pip install 'edgeexit[sign]'")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeexit", *args], capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    for name in ("build", "old", "stranger"):
        result = _cli("keygen", "--out", str(root / name))
        assert result.returncode == 0, result.stderr
    assert (root / "build").stat().st_mode & 0o077 == 0  # the private key is its owner's alone
    return {name: root / name for name in ("build", "old", "stranger")}


@pytest.fixture
def signed(digits_package: Path, keys: dict[str, Path], tmp_path: Path) -> Path:
    package = tmp_path / "digits"
    shutil.copytree(digits_package, package)
    result = _cli("sign", str(package), "--key", str(keys["build"]))
    assert result.returncode == 0, result.stderr
    return package


def test_a_signed_package_verifies_against_any_of_its_trusted_keys(signed: Path, keys: dict[str, Path]) -> None:
    rotated = _cli("verify", str(signed), "--trusted-key", str(keys["old"]) + ".pub",
                   "--trusted-key", str(keys["build"]) + ".pub")  # fmt: skip
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    assert "signed by a trusted key" in rotated.stdout
    trusted = TrustedKeys.load([f"{keys['build']}.pub"])
    engine = Engine(signed, trusted_keys=trusted, cache_dir=None)
    assert engine.run(np.zeros((1, 1, 8, 8), np.float32)).prediction is not None


def test_a_tampered_package_passes_every_hash_and_fails_its_signature(signed: Path, keys: dict[str, Path]) -> None:
    import onnx
    from onnx import numpy_helper

    manifest = open_package(signed).manifest
    segment = signed / manifest.segments[0].file
    graph = onnx.load(str(segment))
    weight = graph.graph.initializer[0]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 2.0, weight.name))
    onnx.save(graph, str(segment))
    files = {**manifest.files, manifest.segments[0].file: sha256_file(segment)}
    forged = dataclasses.replace(
        manifest, files=files, package_id=package_id_of(files, [s.file for s in manifest.segments])
    )
    (signed / MANIFEST_FILE).write_text(forged.to_json())
    open_package(signed)  # every file matches the (rewritten) manifest
    trusted = TrustedKeys.load([f"{keys['build']}.pub"])
    with pytest.raises(PackageError, match="does not match its manifest"):
        Engine(signed, trusted_keys=trusted, cache_dir=None)
    refused = _cli("verify", str(signed), "--trusted-key", f"{keys['build']}.pub")
    assert refused.returncode != 0
    assert "does not match its manifest" in refused.stdout + refused.stderr


def test_unsigned_and_foreign_packages_are_refused_before_loading(
    signed: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    stranger = TrustedKeys.load([f"{keys['stranger']}.pub"])
    with pytest.raises(PackageError, match=r"signed by key [0-9a-f]{16}, which this reader does not trust"):
        Engine(signed, trusted_keys=stranger, cache_dir=None)
    (signed / SIGNATURE_FILE).unlink()
    with pytest.raises(PackageError, match="is not signed"):
        Engine(signed, trusted_keys=stranger, cache_dir=None)
    (signed / SIGNATURE_FILE).write_text("{not json")
    with pytest.raises(PackageError, match="malformed"):
        open_package(signed, trusted_keys=stranger)
    sign_package(signed, keys["stranger"])  # the Python API signs as the CLI does
    assert open_package(signed, trusted_keys=stranger).manifest.package_id
    packed = tmp_path / "digits.tar"  # the signature travels in the tar, beside the manifest it signs
    assert _cli("pack", str(signed), str(packed)).returncode == 0
    cache = tmp_path / "cache"
    assert open_package(packed, trusted_keys=stranger, cache_dir=cache).manifest.package_id
    builder = TrustedKeys.load([f"{keys['build']}.pub"])
    with pytest.raises(PackageError, match=r"package tar .* which this reader does not trust"):
        open_package(packed, trusted_keys=builder, cache_dir=cache)  # checked from the tar, not the cache entry
    (signed / SIGNATURE_FILE).unlink()
    unsigned = tmp_path / "unsigned.tar"
    assert _cli("pack", str(signed), str(unsigned)).returncode == 0
    with pytest.raises(PackageError, match="is not signed"):
        open_package(unsigned, trusted_keys=stranger, cache_dir=cache)
