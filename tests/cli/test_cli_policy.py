"""``edgeexit run --policy``: policy-driven offloading from the command line (the CLI as a subprocess,
the tail server in-process). Answers are checked against the Python API, every decision reaches
the JSON and the decision log, and option mistakes are one clean error line."""

from __future__ import annotations

import json
import os
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
def labelled(tmp_path: Path, digits) -> Path:
    path = tmp_path / "labelled.npz"
    np.savez(path, x=digits.x[:12], y=digits.y[:12])
    return path


@pytest.fixture(scope="module")
def reference(digits_package: Path, digits) -> dict[str, list]:
    early = Engine(digits_package, cache_dir=None, threshold=0.3)
    full = Engine(digits_package, cache_dir=None, threshold=1.01)
    return {"early": [early.run(x) for x in digits.x[:12]], "full": [full.run(x) for x in digits.x[:12]]}


def _rows(done: subprocess.CompletedProcess[str]) -> list[dict]:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _check_answers(rows: list[dict], reference: dict[str, list]) -> None:
    for i, row in enumerate(rows):
        offloaded = "offload" in row and row["offload"]["offloaded"]
        want = reference["full" if offloaded else "early"][i]
        assert (row["prediction"], row["exit"]) == (want.prediction, want.exit), row["input"]
        np.testing.assert_allclose(row["probabilities"], want.probabilities, atol=2e-3 if offloaded else 1e-5)


def test_split_policy_sends_at_its_boundary_and_logs(cli, digits_package: Path, server: str, labelled: Path,
                                                     reference, tmp_path: Path) -> None:  # fmt: skip
    log = tmp_path / "decisions.jsonl"
    rows = _rows(cli("run", digits_package, labelled, "--server", server, "--policy", "split@1", "--threshold", "0.3",
                     "--decision-log", log, "--json"))  # fmt: skip
    _check_answers(rows, reference)
    reached = [row for row in rows if "offload" in row]
    assert reached
    for row in reached:
        assert row["offload"]["offloaded"] is True
        assert row["offload"]["boundary"] == 1
        decided = [(d["boundary"], d["action"]) for d in row["decisions"]]
        assert decided == [(-1, "continue"), (0, "continue"), (1, "offload")]  # -1: the input tail
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(logged) == sum(len(row.get("decisions", [])) for row in rows)
    assert {entry["sample"] for entry in logged} <= {row["input"] for row in rows}
    assert all(entry["policy"] == "split@1" and entry["reason"] for entry in logged)


def test_local_policy_needs_no_server(cli, digits_package: Path, labelled: Path, reference) -> None:
    rows = _rows(cli("run", digits_package, labelled, "--policy", "local", "--threshold", "0.3", "--json"))
    _check_answers(rows, reference)
    assert all("offload" not in row for row in rows)
    assert {d["action"] for row in rows for d in row.get("decisions", [])} == {"continue"}


def test_adaptive_policy_with_an_objective(cli, digits_package: Path, server: str, labelled: Path, reference,
                                           tmp_path: Path) -> None:  # fmt: skip
    log = tmp_path / "adaptive.jsonl"
    rows = _rows(cli("run", digits_package, labelled, "--server", server, "--policy", "adaptive", "--objective",
                     "energy", "--latency-slo-ms", "100000", "--constraint-scope", "mean", "--threshold", "0.3",
                     "--decision-log", log, "--json"))  # fmt: skip
    _check_answers(rows, reference)
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert logged
    for entry in logged:
        assert entry["policy"] == "adaptive"
        assert entry["objective"]["kind"] == "energy"
        assert entry["objective"]["latency_slo_ms"] == 100000
        assert entry["objective"]["scope"] == "mean"
        assert entry["link"]["bandwidth_bps"] > 0
        assert entry["options"][0]["name"] == "local"
        assert entry["reason"]


def test_the_table_run_works_with_a_policy(cli, digits_package: Path, server: str, labelled: Path) -> None:
    done = cli("run", digits_package, labelled, "--server", server, "--policy", "best-static", "--threshold", "0.3")
    assert done.returncode == 0, done.stderr
    assert sum("labelled.npz[" in line for line in done.stdout.splitlines()) == 12


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--server", "127.0.0.1:1", "--split", "1", "--policy", "local"), "is --policy split@1"),
        (("--profile", "p.json"), "--profile only applies with --policy"),
        (("--policy", "adaptive"), "no --server"),
        (("--server", "127.0.0.1:1", "--policy", "fastest"), "fastest"),
        (("--policy", "local", "--objective", "speed"), "unknown objective"),
        (("--policy", "local", "--latency-slo-ms", "5"), "latency SLO goes with"),
        (("--policy", "local", "--objective", "energy", "--constraint-scope", "median"), "unknown constraint scope"),
        (("--constraint-scope", "mean"), "--constraint-scope only applies with --policy"),
    ],
)
def test_policy_option_mistakes_are_one_clean_line(cli, digits_package: Path, labelled: Path, args: tuple[str, ...],
                                                   fragment: str) -> None:  # fmt: skip
    done = cli("run", digits_package, labelled, *args)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert fragment in lines[0], lines[0]
