"""``edgeexit bench``: the digits package over two emulated links, as a real subprocess that starts its
own loopback tail server. Timing checks use only the emulated link's deterministic delay (upload +
RTT of the bytes each row sent), never wall-clock comparisons between rows."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

SLOW = "1mbit,50ms"
FAST = "50mbit,1ms"


@pytest.fixture
def cli(edgeexit_cli: list[str], tmp_path: Path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"), "COLUMNS": "220", "NO_COLOR": "1"}

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*edgeexit_cli, *map(str, args)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=240
        )

    return run


@pytest.fixture
def labelled(tmp_path: Path, digits) -> Path:
    path = tmp_path / "test.npz"
    np.savez(path, x=digits.x[:10], y=digits.y[:10])
    return path


def test_bench_two_links(cli, digits_package: Path, labelled: Path, tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    png = tmp_path / "latency.png"
    done = cli("bench", digits_package, "--data", labelled, "--link", SLOW, "--link", FAST,
               "--codec", "fp32", "--json", out, "--plot", png)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"link {SLOW}" in done.stdout
    assert f"link {FAST}" in done.stdout
    for name in ("local", "split@0", "split@1", "early+split@0", "early+split@1"):
        assert f"│ {name} " in done.stdout
    assert "modelled" in done.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = json.loads(out.read_text())
    by = {(r["link"], r["policy"]): r for r in rows}
    assert {r["link"] for r in rows} == {SLOW, FAST}
    assert by[SLOW, "local"]["bytes_sent"] == 0
    assert by[SLOW, "local"]["offload_rate"] == 0
    for link, rate, rtt in ((SLOW, 1e6, 0.05), (FAST, 50e6, 0.001)):
        for k in (0, 1):
            row = by[link, f"split@{k}"]
            assert row["offload_rate"] == 1.0  # every sample travels in the baseline, no loss configured
            assert row["fallbacks"] == 0
            assert row["accuracy"] > 0.5
            # the emulated delay per sample is exactly upload + RTT of what it sent
            expected_ms = (row["bytes_sent"] * 8 / rate + row["samples"] * rtt) / row["samples"] * 1e3
            assert row["emulated_ms"] == pytest.approx(expected_ms)
            assert row["mean_ms"] >= row["emulated_ms"]  # the link's delay is a lower bound of what was seen
            assert sum(row["exit_rates"].values()) == pytest.approx(1.0)
    for k in (0, 1):  # the slow link makes offloading slower than the fast one, by its delay alone
        assert by[SLOW, f"split@{k}"]["emulated_ms"] > 50.0 > 10 * by[FAST, f"split@{k}"]["emulated_ms"]
        assert by[SLOW, f"split@{k}"]["bytes_sent"] == by[FAST, f"split@{k}"]["bytes_sent"]
    if "best-static" in {r["policy"] for r in rows}:
        assert "adaptive" in {r["policy"] for r in rows}


def test_bench_rejects_a_bad_link(cli, digits_package: Path, labelled: Path) -> None:
    done = cli("bench", digits_package, "--data", labelled, "--link", "fast,10ms")
    assert done.returncode == 1
    assert "expected BANDWIDTH,RTT" in done.stderr
    assert "Traceback" not in done.stderr


def test_bench_rejects_an_unknown_policy(cli, digits_package: Path, labelled: Path) -> None:
    done = cli("bench", digits_package, "--data", labelled, "--policy", "sometimes", "--server", "127.0.0.1:1")
    assert done.returncode == 1
    assert "unknown bench policy 'sometimes'" in done.stderr


def test_bench_at_a_device_speed_shows_it_and_the_decision_cost(cli, digits_package: Path, labelled: Path,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / "rows.json"
    done = cli("bench", digits_package, "--data", labelled, "--link", FAST, "--policy", "local", "--policy",
               "adaptive", "--device-speed", "2", "--json", out)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"link {FAST}, device x2 (x2)" in done.stdout  # every table names the speed it ran at
    assert "decide ms" in done.stdout
    rows = {r["policy"]: r for r in json.loads(out.read_text())}
    assert {r["device_speed"] for r in rows.values()} == {"x2 (x2)"}
    assert rows["local"]["decide_ms"] == 0.0  # the engine alone decides nothing
    assert rows["adaptive"]["decide_ms"] > 0.0  # the policy's decisions are counted


def test_bench_refuses_a_speed_reference_of_another_network(cli, digits_package: Path, labelled: Path) -> None:
    done = cli("bench", digits_package, "--data", labelled, "--device-speed", "rpi4", "--speed-reference",
               digits_package)  # fmt: skip
    assert done.returncode == 1
    assert "re-based on efficientnet_lite0 with input [3, 224, 224]" in done.stderr
    assert "Traceback" not in done.stderr


def test_bench_rejects_an_unknown_device_speed(cli, digits_package: Path, labelled: Path) -> None:
    done = cli("bench", digits_package, "--data", labelled, "--device-speed", "rpi9")
    assert done.returncode == 1
    assert "unknown device speed 'rpi9'" in done.stderr
    assert "rpi4" in done.stderr
    assert "Traceback" not in done.stderr
