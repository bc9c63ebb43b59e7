"""device.toml: every mistake is one error naming its key; the CLI prints it and exits 1."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from edgeexit.daemon.config import ConfigError, load_config


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "device.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_full_config_loads(tmp_path: Path) -> None:
    config = load_config(
        _write(
            tmp_path,
            """
package = "pkg"
listen = "unix:///run/edgeexit/device.sock"
threads = 2
metrics_port = 9101
log_format = "text"
[offload]
servers = ["10.0.0.5:8001", "10.0.0.6:8001"]
split = 1
codec = "fp16"
timeout_ms = 150
token_file = "token"
[offload.tls]
ca = "/etc/edgeexit/ca.pem"
""",
        )
    )
    assert config.package == tmp_path / "pkg"  # relative to the config file
    assert config.unix_path == Path("/run/edgeexit/device.sock")
    assert config.threads == 2
    assert config.metrics_port == 9101
    assert config.log_format == "text"
    assert config.offload is not None
    assert config.offload.servers == ("10.0.0.5:8001", "10.0.0.6:8001")
    assert config.offload.split == 1
    assert config.offload.timeout_ms == 150.0
    assert config.offload.token_file == tmp_path / "token"
    assert config.offload.tls is not None
    assert config.offload.tls.ca == Path("/etc/edgeexit/ca.pem")
    assert load_config(_write(tmp_path, 'package = "/p"\n')).listen == "127.0.0.1:8101"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("threads = 2\n", "package"),
        ('package = "p"\nthreads = 0\n', "threads"),
        ('package = "p"\nthreads = "two"\n', "threads"),
        ('package = "p"\nlisten = "localhost"\n', "listen"),
        ('package = "p"\nmetrics_port = 70000\n', "metrics_port"),
        ('package = "p"\nlog_format = "yaml"\n', "log_format"),
        ('package = "p"\nthreds = 2\n', "threds"),
        ('package = "p"\n[offload]\nsplit = 1\n', "offload.servers"),
        ('package = "p"\n[offload]\nservers = ["a:1"]\n', "offload.split"),
        ('package = "p"\n[offload]\nservers = ["a:1"]\nsplit = 1\ncodec = "bf16"\n', "offload.codec"),
        ('package = "p"\n[offload]\nservers = ["a:1"]\nsplit = 1\ntimeout_ms = 0\n', "offload.timeout_ms"),
        ('package = "p"\n[offload]\nservers = ["a:1"]\nsplit = 1\n[offload.tls]\ncert = "c"\n', "offload.tls.key"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(_write(tmp_path, text))


def test_the_cli_reports_a_config_error_in_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path, 'package = "p"\nthreads = -1\n')
    result = subprocess.run(
        [sys.executable, "-m", "edgeexit", "device", "--config", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "threads" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_policy_keys_say_what_the_cli_flags_say(tmp_path: Path) -> None:
    """objective, energy_budget_j / latency_slo_ms, decision_log, probe_interval_s and battery become
    the PolicySettings `edgeexit run --policy` builds; the engine keys become its EngineSettings."""
    from edgeexit.device.settings import OffloadFlags, PolicySettings
    from edgeexit.policy import Objective
    from edgeexit.runtime.settings import EngineSettings

    config = load_config(
        _write(
            tmp_path,
            """
package = "pkg"
threads = 2
criterion = "margin"
threshold = 0.25
precision = "int8"
[offload]
servers = ["10.0.0.5:8001"]
policy = "adaptive"
profile = "profile.json"
objective = "energy"
latency_slo_ms = 40
constraint_scope = "mean"
decision_log = "decisions.jsonl"
probe_interval_s = 2.5
battery = "auto"
timeout_ms = 300
""",
        )
    )
    assert config.engine == EngineSettings(threads=2, criterion="margin", threshold=0.25, precision="int8")
    assert config.threads == 2
    offload = config.offload
    assert offload is not None
    assert offload.policy == PolicySettings(
        "adaptive",
        Objective("energy", latency_slo_ms=40.0, scope="mean"),
        profile=tmp_path / "profile.json",
        decision_log=tmp_path / "decisions.jsonl",  # relative to the config file, like every path
        probe_interval_s=2.5,
        battery="auto",
    )
    flags = OffloadFlags(server=("10.0.0.5:8001",), policy="adaptive", profile=tmp_path / "profile.json",
                         objective="energy", latency_slo_ms=40.0, constraint_scope="mean",
                         decision_log=tmp_path / "decisions.jsonl",
                         timeout_ms=300.0)  # fmt: skip
    from_cli = flags.settings()
    assert from_cli is not None
    # the same record whichever way it was said (the CLI has no probe interval or battery flag)
    assert from_cli == dataclasses.replace(offload, policy=dataclasses.replace(offload.policy, probe_interval_s=None,
                                                                               battery=None))  # fmt: skip


def test_the_example_config_loads() -> None:
    example = Path(__file__).resolve().parents[2] / "device" / "device.toml"
    config = load_config(example)
    assert config.offload is not None
    assert config.offload.split == 1


@pytest.mark.parametrize(
    ("offload", "key"),
    [
        ('split = 1\nobjective = "energy"\n', "offload.objective"),
        (
            'split = 1\ndecision_log = "d.jsonl"\nprobe_interval_s = 5\n',
            "offload.decision_log, offload.probe_interval_s",
        ),
        ('policy = "fastest"\n', "offload.policy"),
        ('policy = "local"\nobjective = "speed"\n', "offload.objective"),
        ('policy = "local"\nenergy_budget_j = 1.0\nobjective = "energy"\n', "offload.objective"),
        ('policy = "local"\nprobe_interval_s = 0\n', "offload.probe_interval_s"),
        ('policy = "local"\nbattery = "sometimes"\n', "offload.battery"),
        ('policy = "local"\nbattery = 120\n', "offload.battery"),
        ('policy = "adaptive"\n', "offload.profile"),
    ],
)
def test_policy_key_errors_name_the_key(tmp_path: Path, offload: str, key: str) -> None:
    text = f'package = "p"\n[offload]\nservers = ["a:1"]\n{offload}'
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(_write(tmp_path, text))


@pytest.mark.parametrize(("text", "key"), [('backend = "cuda"\n', "backend"), ("threshold = -1\n", "threshold")])
def test_engine_key_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(_write(tmp_path, f'package = "p"\n{text}'))
