"""Trusted keys on the device and the tail server: signed packages only, checked before anything loads.

The daemon (a real process) and ``TailServer`` (real gRPC on 127.0.0.1) are given a trusted key.
A SIGHUP to an unsigned package, or to one signed by another key, fails its reload and the old
runtime keeps answering; the tail server refuses to start on an unsigned package or a plain
repository.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeexit.errors import PackageError
from edgeexit.runtime.engine import Engine
from edgeexit.server import ServerOptions, TailServer
from edgeexit.signing import generate_keypair, sign_package

pytest.importorskip("cryptography", reason="signatures need the cryptography package: pip install 'edgeexit[sign]'")


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    for name in ("build", "stranger"):
        generate_keypair(tmp_path / name, tmp_path / f"{name}.pub")
    return {name: tmp_path / name for name in ("build", "stranger")}


def _copy(source: Path, target: Path, key: Path | None) -> Path:
    shutil.copytree(source, target)
    if key is not None:
        sign_package(target, key)
    return target


def test_the_daemon_reloads_only_packages_a_trusted_key_signed(
    kit, start_daemon, digits_package: Path, digits, keys: dict[str, Path], tmp_path: Path
) -> None:
    xs = np.ascontiguousarray(digits.x[:3], dtype=np.float32)
    want = [int(Engine(digits_package, cache_dir=None).run(x[None]).prediction) for x in xs]
    signed = _copy(digits_package, tmp_path / "signed", keys["build"])
    trust = f'trusted_keys = ["{keys["build"]}.pub"]\n'
    config = kit.write_config(tmp_path / "device.toml", signed, "127.0.0.1:0", extra=trust)
    daemon = start_daemon(config)
    with kit.client(daemon.address) as stub:
        for package, reason in (
            (_copy(digits_package, tmp_path / "unsigned", None), "is not signed"),
            (_copy(digits_package, tmp_path / "foreign", keys["stranger"]), "does not trust"),
        ):
            kit.write_config(config, package, "127.0.0.1:0", extra=trust)
            daemon.signal(signal.SIGHUP)
            assert reason in daemon.wait_event("reload_failed")["reason"]
            for i, x in enumerate(xs):  # the signed package still answers
                response = stub.ModelInfer(kit.infer_request(x[None]))
                assert response.parameters["prediction"].int64_param == want[i]
    assert not daemon.events("reloaded")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0


def test_the_tail_server_serves_signed_packages_only(
    digits_package: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    options = ServerOptions(listen="127.0.0.1:0", trusted_keys=(Path(f"{keys['build']}.pub"),))
    signed = _copy(digits_package, tmp_path / "signed", keys["build"])
    with TailServer([signed], options) as server:
        assert server.port
    with pytest.raises(PackageError, match="is not signed"):
        TailServer([_copy(digits_package, tmp_path / "unsigned", None)], options)
    with pytest.raises(PackageError, match="plain model repository"):
        TailServer([signed / "tails"], options)


def test_decoder_packages_are_held_to_the_trusted_keys_too(
    kit, tiny_decoder: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    """The daemon's decoder runtime (and ``DecoderEngine``, ``edgeexit generate --trusted-key``) check a
    decoder package's signature before its manifest is read; a signed one generates."""
    from edgeexit.daemon.config import load_config
    from edgeexit.daemon.runner import load_runtime

    trust = f'trusted_keys = ["{keys["build"]}.pub"]\n'
    signed = _copy(tiny_decoder, tmp_path / "signed", keys["build"])
    runtime = load_runtime(load_config(kit.write_config(tmp_path / "signed.toml", signed, "127.0.0.1:0", extra=trust)))
    try:
        assert runtime.kind == "decoder"
        assert len(runtime.engine.generate("the quick brown fox", 3).tokens) == 3
    finally:
        runtime.close()
    for name, key, reason in (("unsigned", None, "is not signed"), ("foreign", keys["stranger"], "does not trust")):
        package = _copy(tiny_decoder, tmp_path / name, key)
        config = load_config(kit.write_config(tmp_path / f"{name}.toml", package, "127.0.0.1:0", extra=trust))
        with pytest.raises(PackageError, match=reason):
            load_runtime(config)
    altered = _copy(tiny_decoder, tmp_path / "altered", keys["build"])
    manifest = altered / "manifest.json"
    manifest.write_text(manifest.read_text(encoding="utf-8") + "\n", encoding="utf-8")  # one byte after signing
    config = load_config(kit.write_config(tmp_path / "altered.toml", altered, "127.0.0.1:0", extra=trust))
    with pytest.raises(PackageError, match="does not match its manifest"):
        load_runtime(config)
    result = subprocess.run(
        [sys.executable, "-m", "edgeexit", "generate", str(tmp_path / "unsigned"), "--prompt", "the fox",
         "--max-new-tokens", "2", "--trusted-key", f"{keys['build']}.pub"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode != 0
    assert "is not signed" in result.stdout + result.stderr
