"""``edgeexit pack`` and every command that takes the tar it writes, as real subprocesses.

``verify``, ``inspect`` and ``run`` on ``pkg.tar`` answer as on the directory and share one cache
entry; ``edgeexit serve pkg.tar`` serves the tails (a device offloads to it); the device daemon
runs a tar named in its TOML and swaps in a new tar on SIGHUP; ``calibrate`` and ``quantize`` refuse a tar before
running anything. Every process a test starts is stopped in teardown, pass or fail.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from edgeexit.archive import CACHE_ENV, pack
from edgeexit.daemon.app import READY_PREFIX as DAEMON_READY_PREFIX
from edgeexit.fileio import sha256_file
from edgeexit.package import open_package
from edgeexit.procs import SERVE_READY_PREFIX, ChildProcess
from edgeexit.runtime import Engine
from edgeexit.transport.generated import grpc_service_pb2 as pb
from edgeexit.transport.generated import grpc_service_pb2_grpc as pb_grpc


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A private cache (ORT graphs and unpacked tars) for every subprocess of a test."""
    return {
        **os.environ,
        "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"),
        "COLUMNS": "220",
        "NO_COLOR": "1",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def cli(edgeexit_cli: list[str], tmp_path: Path, env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess]:
    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*edgeexit_cli, *map(str, args)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
        )

    return run


@pytest.fixture
def tar(digits_package: Path, tmp_path: Path) -> Path:
    return pack(digits_package, tmp_path / "pkg.tar", root_name="pkg").path


@pytest.fixture
def samples(tmp_path: Path, digits) -> Path:
    path = tmp_path / "labelled.npz"
    np.savez(path, x=digits.x[:12], y=digits.y[:12])
    return path


# --- pack ---------------------------------------------------------------------------------------------------------


def test_pack_prints_the_path_size_sha256_and_package_id(cli, digits_package: Path, tmp_path: Path) -> None:
    done = cli("pack", digits_package, tmp_path / "out" / "pkg.tar")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out" / "pkg.tar"
    manifest = open_package(digits_package).manifest
    assert f"-> {out}" in done.stdout
    assert f"{out.stat().st_size} bytes" in done.stdout
    assert f"sha256      {sha256_file(out)}" in done.stdout
    assert f"package_id  {manifest.package_id} (digits_cnn)" in done.stdout
    assert f"{len(manifest.files) + 1} files under {digits_package.name}/" in done.stdout  # tar -xf gives it back


def test_pack_refuses_a_corrupt_package(cli, one_error, package_copy: Path, tmp_path: Path) -> None:
    (package_copy / "segments" / "0.onnx").write_bytes(b"not the exported graph")
    one_error(cli("pack", package_copy, tmp_path / "p.tar"), "0.onnx was altered", "no tar was written")
    assert not (tmp_path / "p.tar").exists()


# --- the commands that read a package, given the tar ---------------------------------------------------------------


def test_verify_inspect_and_run_take_the_tar(cli, digits_package: Path, tar: Path, samples: Path, tmp_path: Path):
    verified = cli("verify", tar)
    assert verified.returncode == 0, verified.stderr
    package_id = open_package(digits_package).manifest.package_id
    assert f"ok: {tar} (package_id {package_id})" in verified.stdout
    assert "9 tail(s)" in verified.stdout

    inspected = cli("inspect", tar)
    assert inspected.returncode == 0, inspected.stderr
    assert "digits_cnn__from_1__fp16" in inspected.stdout

    from_tar = cli("run", tar, samples, "--json")
    from_dir = cli("run", digits_package, samples, "--json")
    assert from_tar.returncode == 0, from_tar.stderr
    rows, want = json.loads(from_tar.stdout), json.loads(from_dir.stdout)
    assert [(r["prediction"], r["exit"]) for r in rows] == [(r["prediction"], r["exit"]) for r in want]

    entries = list((tmp_path / "xdg-cache" / "edgeexit" / "packages").iterdir())
    assert [e.name.split("-")[0] for e in entries] == [package_id]  # unpacked once, reused by every command


@pytest.mark.parametrize("command", ["calibrate", "quantize"])
def test_commands_that_change_a_package_refuse_a_tar_before_running(
    cli, one_error, tar: Path, samples: Path, tmp_path: Path, command: str
) -> None:
    one_error(cli(command, tar, "--data", samples), "is a packed package", "run this on the package directory")
    assert not (tmp_path / "xdg-cache" / "edgeexit" / "packages").exists()
    assert not list(tmp_path.glob("*pareto*"))


def test_a_tar_with_a_link_is_one_error_line(cli, one_error, tar: Path, tmp_path: Path) -> None:
    import tarfile

    bad = tmp_path / "bad.tar"
    with tarfile.open(tar) as source, tarfile.open(bad, "w") as target:
        for member in source.getmembers():
            target.addfile(member, source.extractfile(member) if member.isreg() else None)
        link = tarfile.TarInfo("pkg/segments/evil")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        target.addfile(link)
    one_error(cli("verify", bad), "a symbolic link to '/etc/passwd'", "edgeexit pack")
    assert not (tmp_path / "xdg-cache" / "edgeexit" / "packages").exists()


# --- long-running processes: serve and the device daemon ------------------------------------------------------------


@pytest.fixture
def start(edgeexit_cli: list[str], env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., ChildProcess]]:
    """``start(*args)``: an edgeexit command as a child process; stopped in teardown, pass or fail."""
    started: list[ChildProcess] = []

    def launch(*args: str | Path) -> ChildProcess:
        process = ChildProcess([*edgeexit_cli, *map(str, args)], env=env, cwd=tmp_path)
        started.append(process)
        return process

    yield launch
    for process in started:
        process.stop(grace_s=30)


def test_serve_takes_the_tar_and_a_device_offloads_to_it(cli, start, tar: Path, samples: Path) -> None:
    served = start("serve", tar, "--listen", "127.0.0.1:0")
    address = served.wait_ready(SERVE_READY_PREFIX)
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ModelReady(pb.ModelReadyRequest(name="digits_cnn__from_1__fp16"), timeout=30).ready

    done = cli("run", tar, samples, "--server", address, "--split", "1", "--threshold", "0.3", "--json")
    assert done.returncode == 0, done.stderr
    reached = [row["offload"] for row in json.loads(done.stdout) if "offload" in row]
    assert reached
    assert all(info["offloaded"] and not info["fallback"] for info in reached), reached


def _infer(address: str, xs: np.ndarray) -> tuple[list[int], list[int]]:
    request = pb.ModelInferRequest(model_name="")
    request.inputs.add(name="input", datatype="FP32", shape=list(xs.shape))
    request.raw_input_contents.append(np.ascontiguousarray(xs, dtype="<f4").tobytes())
    with grpc.insecure_channel(address) as channel:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    found = {}
    for position, tensor in enumerate(reply.outputs):
        if tensor.name in ("prediction", "exit"):
            found[tensor.name] = np.frombuffer(reply.raw_output_contents[position], dtype="<i8").tolist()
    return found["prediction"], found["exit"]


def test_the_daemon_runs_a_tar_and_reloads_a_new_one(
    start, package_copy: Path, digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "test-cache"))  # the Engines below unpack the tars too
    xs = np.ascontiguousarray(digits.x[:8], dtype=np.float32)
    first = pack(package_copy, tmp_path / "v1.tar").path
    opened = open_package(package_copy)
    exits = tuple(
        dataclasses.replace(e, threshold=0.0) if not e.final else e for e in opened.manifest.exits
    )  # every sample now answers at the first exit: a change the daemon must pick up
    opened.save_manifest(opened.manifest.with_exits(exits, None))
    second = pack(package_copy, tmp_path / "v2.tar").path

    config = tmp_path / "device.toml"
    config.write_text('package = "v1.tar"\nlisten = "127.0.0.1:0"\nthreads = 1\ngrace_s = 10\n', encoding="utf-8")
    daemon = start("device", "--config", config)
    address = daemon.wait_ready(DAEMON_READY_PREFIX)
    want = Engine(first, cache_dir=None).run_batch(xs)
    assert _infer(address, xs) == ([r.prediction for r in want], [r.exit for r in want])

    config.write_text(config.read_text(encoding="utf-8").replace("v1.tar", "v2.tar"), encoding="utf-8")
    daemon.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda line: '"reloaded"' in line, "reloaded event")
    after = Engine(second, cache_dir=None).run_batch(xs)
    assert {r.exit for r in after} == {0}
    assert [r.exit for r in after] != [r.exit for r in want]  # so the answers below show the new package
    assert _infer(address, xs) == ([r.prediction for r in after], [r.exit for r in after])


# --- help texts the README points at ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("profile", "(needs the [plots] extra)"),  # rich took "[plots]" for markup and printed "the  extra"
        ("export", "(the [tflite-export] extra)"),
        ("bench", "split@input"),
        ("pack", "--name"),
    ],
)
def test_help_shows_what_the_readme_names(cli, command: str, shown: str) -> None:
    done = cli(command, "--help")
    assert done.returncode == 0, done.stderr
    assert shown in " ".join(done.stdout.replace("│", " ").split())
