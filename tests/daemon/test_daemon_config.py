"""device.toml: every mistake is one error naming its key; the CLI prints it and exits 1."""

from __future__ import annotations

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
