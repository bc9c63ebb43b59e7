"""``edgeexit run --server ADDR --split K``: offloading from the command line, against the real tail
server (in-process ``TailServer``; the CLI itself runs as a subprocess). Answers are checked against
the Python API; a dead server still answers everything; option mistakes are one clean error line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgeexit.runtime import Engine


@pytest.fixture
def cli(edgeexit_cli: list[str], tmp_path: Path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"), "COLUMNS": "220", "NO_COLOR": "1"}

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*edgeexit_cli, *map(str, args)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
        )

    return run


@pytest.fixture(scope="module")
def server(digits_package: Path) -> Iterator[str]:
    from edgeexit.server import ServerOptions, TailServer

    with TailServer([digits_package], ServerOptions(listen="127.0.0.1:0")) as running:
        yield f"127.0.0.1:{running.port}"


@pytest.fixture
def dead() -> str:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def labelled(tmp_path: Path, digits) -> Path:
    path = tmp_path / "labelled.npz"
    np.savez(path, x=digits.x[:12], y=digits.y[:12])
    return path


@pytest.fixture(scope="module")
def reference(digits_package: Path, digits) -> dict[str, list]:
    """The Python API's answers at threshold 0.3 (exit 1 answers many, some reach the final exit)."""
    early = Engine(digits_package, cache_dir=None, threshold=0.3)
    full = Engine(digits_package, cache_dir=None, threshold=1.01)
    return {"early": [early.run(x) for x in digits.x[:12]], "full": [full.run(x) for x in digits.x[:12]]}


def _rows(done: subprocess.CompletedProcess[str]) -> list[dict]:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _check_answers(rows: list[dict], reference: dict[str, list], atol: float = 2e-3) -> None:
    for i, row in enumerate(rows):
        offloaded = "offload" in row and row["offload"]["offloaded"]
        want = reference["full" if offloaded else "early"][i]
        assert (row["prediction"], row["exit"]) == (want.prediction, want.exit), row["input"]
        np.testing.assert_allclose(row["probabilities"], want.probabilities, atol=atol if offloaded else 1e-5)


# ---------------------------------------------------------------- offloading


def test_json_has_the_offload_fields(cli, digits_package: Path, server: str, labelled: Path, reference) -> None:
    rows = _rows(cli("run", digits_package, labelled, "--server", server, "--split", "1", "--threshold", "0.3",
                     "--json"))  # fmt: skip
    assert len(rows) == 12
    reached = [row for row in rows if "offload" in row]
    assert 0 < len(reached) < 12  # some exit on the device before the split
    for row in reached:
        info = row["offload"]
        assert info["offloaded"] is True
        assert info["fallback"] is False
        assert info["reason"] is None
        assert info["server"] == server
        assert (info["boundary"], info["codec"], info["model"]) == (1, "fp16", "digits_cnn__from_1__fp16")
        assert info["bytes_sent"] > 32 * 4 * 4 * 2
        assert info["transfer_ms"] >= 0
        assert info["queue_ms"] is not None
        assert info["compute_ms"] is not None
        assert row["exit"] == 2
        assert len(row["segment_ms"]) == 2
    _check_answers(rows, reference)


def test_the_table_shows_how_each_input_was_answered(cli, digits_package: Path, server: str, labelled: Path) -> None:
    done = cli("run", digits_package, labelled, "--server", server, "--split", "1", "--threshold", "0.3",
               "--codec", "fp32")  # fmt: skip
    assert done.returncode == 0, done.stderr
    header = next(line for line in done.stdout.splitlines() if "prediction" in line)
    for column in ("offload", "server", "bytes sent", "transfer ms"):
        assert column in header
    rows = [line for line in done.stdout.splitlines() if "labelled.npz[" in line]
    assert len(rows) == 12
    offloaded = [r for r in rows if "offloaded" in r]
    assert offloaded
    assert all(server in r for r in offloaded)
    summary = next(line for line in done.stdout.splitlines() if line.startswith("offloaded "))
    assert f"offloaded {len(offloaded)}, fallback 0, exited before the split {12 - len(offloaded)}" in summary
    assert "at boundary 1 (fp32)" in summary


def test_batch_offloads_the_survivors_together(cli, digits_package: Path, server: str, labelled: Path,
                                               reference) -> None:  # fmt: skip
    rows = _rows(cli("run", digits_package, labelled, "--server", server, "--split", "1", "--threshold", "0.3",
                     "--json", "--batch"))  # fmt: skip
    reached = [row for row in rows if "offload" in row]
    assert reached
    assert {row["offload"]["batch"] for row in reached} == {len(reached)}
    _check_answers(rows, reference)


def test_another_codec_and_boundary(cli, digits_package: Path, server: str, labelled: Path) -> None:
    full = Engine(digits_package, cache_dir=None, threshold=1.01)
    for split, codec in (("0", "int8"),):  # every codec and boundary: tests/device
        rows = _rows(cli("run", digits_package, labelled, "--server", server, "--split", split, "--codec", codec,
                         "--threshold", "1.01", "--json"))  # fmt: skip
        assert all(row["offload"]["offloaded"] and row["offload"]["codec"] == codec for row in rows)
        agree = np.mean([row["prediction"] == full.run(x).prediction for row, x in zip(rows, np.load(labelled)["x"],
                                                                                          strict=True)])  # fmt: skip
        assert agree >= (0.9 if codec == "int8" else 1.0)


def test_split_input_sends_every_input_as_it_is(cli, digits_package: Path, server: str, labelled: Path,
                                                reference) -> None:  # fmt: skip
    rows = _rows(cli("run", digits_package, labelled, "--server", server, "--split", "input", "--json"))
    assert len(rows) == 12
    for row in rows:
        assert row["offload"]["offloaded"] is True
        assert (row["offload"]["boundary"], row["offload"]["model"]) == (-1, "digits_cnn__from_input__fp16")
        assert row["segment_ms"] == []
    _check_answers(rows, reference)


def test_a_dead_server_still_answers_everything(cli, digits_package: Path, dead: str, labelled: Path,
                                                reference) -> None:  # fmt: skip
    done = cli("run", digits_package, labelled, "--server", dead, "--split", "1", "--threshold", "0.3", "--json")
    rows = _rows(done)
    reached = [row for row in rows if "offload" in row]
    assert reached
    assert all(row["offload"]["fallback"] and row["offload"]["server"] is None for row in reached)
    assert "UNAVAILABLE" in reached[0]["offload"]["reason"]
    _check_answers(rows, reference)
    assert "fallback:" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_dead_server_beside_a_live_one_fails_over(cli, digits_package: Path, server: str, dead: str,
                                                    labelled: Path, reference) -> None:  # fmt: skip
    rows = _rows(cli("run", digits_package, labelled, "--server", dead, "--server", server, "--split", "1",
                     "--threshold", "0.3", "--json"))  # fmt: skip
    reached = [row for row in rows if "offload" in row]
    assert reached
    assert all(row["offload"]["offloaded"] and row["offload"]["server"] == server for row in reached)
    _check_answers(rows, reference)


def test_tls_and_bearer_token(cli, digits_package: Path, labelled: Path, tmp_path: Path, reference) -> None:
    trustme = pytest.importorskip("trustme")
    from edgeexit.server import ServerOptions, TailServer

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    (tmp_path / "token").write_text("s3cret\n")
    options = ServerOptions(listen="127.0.0.1:0", tls_cert=tmp_path / "server.pem", tls_key=tmp_path / "server.key",
                            tokens=("s3cret",))  # fmt: skip
    with TailServer([digits_package], options) as secured:
        address = f"127.0.0.1:{secured.port}"
        common = ("run", digits_package, labelled, "--server", address, "--split", "1", "--threshold", "0.3", "--json")
        allowed = _rows(cli(*common, "--tls-ca", tmp_path / "ca.pem", "--token-file", tmp_path / "token"))
        no_token = _rows(cli(*common, "--tls-ca", tmp_path / "ca.pem"))
        no_tls = _rows(cli(*common, "--token-file", tmp_path / "token"))
    assert all(row["offload"]["offloaded"] for row in allowed if "offload" in row)
    refused = [row["offload"] for row in no_token if "offload" in row]
    assert "UNAUTHENTICATED" in refused[0]["reason"]
    assert all(info["fallback"] for info in refused)
    assert all(row["offload"]["fallback"] for row in no_tls if "offload" in row)
    for rows in (allowed, no_token, no_tls):
        _check_answers(rows, reference)


def test_without_server_nothing_changes(cli, digits_package: Path, labelled: Path) -> None:
    rows = _rows(cli("run", digits_package, labelled, "--json"))  # the table: tests/cli/test_cli_run.py
    assert all("offload" not in row for row in rows)


# ---------------------------------------------------------------- mistakes: one line, status 1


def test_a_mistake_is_one_clean_line(cli, one_error, digits_package: Path, labelled: Path, dead: str) -> None:
    """As a real process: status 1, one ``error:`` line, no traceback (the rest run in-process)."""
    refused = cli("run", digits_package, labelled, "--server", dead, "--split", "2")
    one_error(refused, "boundary 2", "(0..1, or -1: the model input)", "3 segments")


def _refused(*args: str | Path) -> str:
    """The EdgeExitError ``edgeexit run`` raises (main() prints it as the one error line)."""
    from edgeexit.cli import app
    from edgeexit.errors import EdgeExitError

    with pytest.raises(EdgeExitError) as caught:
        app(["run", *map(str, args)], standalone_mode=False)
    return str(caught.value)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--split", "1"), ("--split 1", "--server HOST:PORT")),
        (("--server", "{dead}"), ("--server needs --split K",)),
        (("--server", "{dead}", "--split", "-1"), ("--split '-1'", "or 'input'")),
        (("--server", "{dead}", "--split", "0", "--codec", "zstd"), ("unknown codec 'zstd'", "fp16, fp32, int8")),
        (("--codec", "fp16"), ("--codec only applies when offloading",)),
        (("--codec", "fp16", "--tls-ca", "ca.pem"), ("--codec, --tls-ca only apply when offloading",)),
        (("--server", "{dead}", "--split", "1", "--token-file", "nope"), ("token file nope",)),
        (("--server", "{dead}", "--split", "1", "--tls-cert", "c.pem"), ("certificate and key go together",)),
        (("--server", "nonsense", "--split", "1"), ("'nonsense'", "HOST:PORT")),
    ],
)
def test_option_mistakes(
    digits_package: Path,
    labelled: Path,
    dead: str,
    args: tuple[str, ...],
    fragments: tuple[str, ...],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))  # in-process runs load an Engine too
    monkeypatch.chdir(tmp_path)
    message = _refused(digits_package, labelled, *(a.format(dead=dead) for a in args))
    for fragment in fragments:
        assert fragment in message, message
