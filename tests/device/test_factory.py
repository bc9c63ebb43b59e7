"""``build_runner(engine, settings)``: the one factory ``edgeexit run``, the daemon and ``edgeexit bench``
share. Against a real ``edgeexit serve`` subprocess: the runner built from the CLI's settings answers
exactly what ``edgeexit run`` itself answered, the settings reach the runner they configure, and the
client the factory opened is closed with it (a caller's client is left alone)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeexit.daemon.config import parse_config
from edgeexit.device import DeviceRunner, OffloadRunner, PolicyRunner, TailClient, build_runner
from edgeexit.device.settings import OffloadFlags, OffloadSettings, PolicySettings
from edgeexit.errors import UsageError
from edgeexit.policy import DeviceCosts, Objective
from edgeexit.runtime import Engine
from edgeexit.runtime.settings import EngineSettings

N = 12


@pytest.fixture(scope="module")
def engine(digits_package: Path) -> Engine:
    return Engine.from_settings(digits_package, EngineSettings(threshold=0.3, cache_dir=None))


@pytest.fixture
def labelled(tmp_path: Path, digits) -> Path:
    path = tmp_path / "labelled.npz"
    np.savez(path, x=digits.x[:N], y=digits.y[:N])
    return path


def _cli_rows(edgeexit_cli: list[str], tmp_path: Path, *args: str | Path) -> list[dict]:
    done = subprocess.run([*edgeexit_cli, "run", *map(str, args), "--json"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _same_answers(rows: list[dict], device: DeviceRunner, xs: np.ndarray) -> None:
    policy = device.runner if isinstance(device.runner, PolicyRunner) else None
    for row, x in zip(rows, xs, strict=True):
        result = policy.run(x, sample_id=row["input"]) if policy is not None else device.run(x)
        mine = result.to_json()
        assert (mine["prediction"], mine["exit"]) == (row["prediction"], row["exit"]), row["input"]
        assert mine.get("offload", {}).get("offloaded") == row.get("offload", {}).get("offloaded")
        assert mine.get("offload", {}).get("model") == row.get("offload", {}).get("model")
        assert [(d["boundary"], d["action"]) for d in mine.get("decisions", [])] == [
            (d["boundary"], d["action"]) for d in row.get("decisions", [])
        ]
        np.testing.assert_allclose(mine["probabilities"], row["probabilities"], atol=1e-5)


@pytest.mark.parametrize("how", [("--split", "1"), ("--policy", "split@1")])
def test_the_cli_and_the_factory_build_the_same_runner(edgeexit_cli, healthy, engine: Engine, digits,
                                                       digits_package: Path, labelled: Path, tmp_path: Path,
                                                       how: tuple[str, str]) -> None:  # fmt: skip
    rows = _cli_rows(edgeexit_cli, tmp_path, digits_package, labelled, "--server", healthy.address,
                     "--threshold", "0.3", *how)  # fmt: skip
    assert any(row.get("offload", {}).get("offloaded") for row in rows)
    flag, value = how
    flags = OffloadFlags(server=(healthy.address,), **{flag.removeprefix("--"): value})  # type: ignore[arg-type]
    settings = flags.settings()
    assert settings is not None
    with build_runner(engine, settings) as device:
        assert device.mode == ("split@1 (fp16)" if flag == "--split" else "policy split@1 (fp16)")
        assert isinstance(device.runner, OffloadRunner if flag == "--split" else PolicyRunner)
        _same_answers(rows, device, digits.x[:N])


def test_without_settings_the_engine_runs_alone(engine: Engine, digits) -> None:
    with build_runner(engine, None) as device:
        assert device.runner is engine
        assert (device.client, device.mode) == (None, "local")
        assert [r.prediction for r in device.run_batch(digits.x[:N])] == [
            engine.run(x).prediction for x in digits.x[:N]
        ]


def test_the_runner_closes_the_client_it_opened_and_not_a_callers(healthy, engine: Engine, digits) -> None:
    settings = OffloadSettings(servers=(healthy.address,), split=0, codec="fp32", timeout_ms=5000, early_exit=False)
    with build_runner(engine, settings) as device:
        assert device.run(digits.x[0]).offload.offloaded  # type: ignore[union-attr]
    closed = device.runner.run(digits.x[0]).offload  # the same runner, its client closed with it
    assert closed is not None
    assert closed.fallback
    assert "closed" in (closed.reason or "")
    with TailClient(healthy.address, timeout_s=5.0) as mine:
        with build_runner(engine, settings, client=mine) as device:
            assert device.client is mine
        assert device.runner.run(digits.x[0]).offload.offloaded  # type: ignore[union-attr]


def test_device_toml_policy_settings_reach_the_policy_runner(healthy, engine: Engine, tmp_path: Path,
                                                              digits) -> None:  # fmt: skip
    """What device.toml says about a policy is what the PolicyRunner does: its objective, decision
    log, probe interval, battery, and the package's preferred codec when none is given."""
    config = parse_config(
        {
            "package": "pkg",
            "offload": {
                "servers": [healthy.address],
                "policy": "adaptive",
                "profile": "unused.json",  # the caller's costs below take its place
                "objective": "energy",
                "latency_slo_ms": 1e6,
                "decision_log": "decisions.jsonl",
                "probe_interval_s": 60,
                "battery": 15,
            },
        },
        base=tmp_path,
    )
    assert config.offload is not None
    costs = DeviceCosts.from_manifest(engine.manifest, (1000.0,) * len(engine.segments), codec="fp16", active_w=5.0,
                                      idle_w=1.0)  # fmt: skip
    with build_runner(engine, config.offload, costs=costs) as device:
        runner = device.runner
        assert isinstance(runner, PolicyRunner)
        assert device.mode == "policy adaptive (fp16)"
        assert runner.policy.objective == Objective("energy", latency_slo_ms=1e6)
        assert runner.policy.costs is costs
        assert (runner.probe_interval_s, runner.battery, runner.codec_name) == (60.0, 15.0, "fp16")
        result = runner.run(digits.x[0], sample_id="first")
    logged = [json.loads(line) for line in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    assert len(logged) == len(result.decisions) > 0
    assert {(e["sample"], e["policy"], e["objective"]["kind"]) for e in logged} == {("first", "adaptive", "energy")}
    assert logged[0]["battery"] == {"percent": 15.0, "plugged": False}
    assert logged[0]["link"]["samples"] >= 1  # probed before the first decision


def test_a_policy_that_weighs_costs_needs_them(engine: Engine) -> None:
    settings = OffloadSettings(policy=PolicySettings("best-static"))
    with pytest.raises(UsageError, match="weighs this device's costs"):
        build_runner(engine, settings)


def test_an_unreadable_token_file_is_a_usage_error(engine: Engine, tmp_path: Path) -> None:
    settings = OffloadSettings(servers=("127.0.0.1:1",), split=0, token_file=tmp_path / "nope")
    with pytest.raises(UsageError, match=r"cannot read the token file .*nope"):
        build_runner(engine, settings)


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        ({"split": "1"}, "--split 1 offloads to a tail server"),
        ({"server": ("a:1",)}, "--server needs --split K"),
        ({"server": ("a:1",), "split": "x"}, "--split 'x'"),
        ({"decision_log": Path("d.jsonl")}, "--decision-log only applies with --policy"),
        ({"server": ("a:1",), "split": "1", "policy": "local"}, "is --policy split@1"),
        ({"policy": "local", "objective": "speed"}, "unknown objective"),
    ],
)
def test_flags_that_do_not_go_together(flags: dict, fragment: str) -> None:
    with pytest.raises(UsageError, match=re.escape(fragment)):
        OffloadFlags(**flags).settings()


def test_no_offload_flags_is_no_offload() -> None:
    assert OffloadFlags().settings() is None
    local = OffloadFlags(policy="local").settings()
    assert local == OffloadSettings(timeout_ms=1000.0, policy=PolicySettings("local"))
