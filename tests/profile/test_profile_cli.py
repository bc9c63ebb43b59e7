"""``edgeexit profile`` as a real subprocess on the digits package: the table, profile.json and the
plots. Never asserts a wall-clock value: only that the figures are ordered, positive and labelled."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from edgeexit.package import open_package
from edgeexit.profile import best_meter, device_costs, load_profile


def run_cli(edgeexit_cli: list[str], cwd: Path, *args: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cwd / "cache")}
    return subprocess.run(
        [*edgeexit_cli, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def test_profile_writes_json_and_plots(edgeexit_cli: list[str], digits_package: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = run_cli(
        edgeexit_cli, tmp_path, "profile", digits_package, "--runs", 20, "--warmup", 3,
        "--json", tmp_path / "profile.json", "--plot", tmp_path / "plots", "--radio", "lte", "--rtt-ms", 30,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    expected_source = best_meter("/", preset="rpi4").source  # "model:rpi4" on a machine without RAPL/INA
    out = result.stdout
    assert "p50 ms" in out
    assert "fp16 bytes" in out
    assert f"[{expected_source}]" in out
    assert "peak RSS" in out
    assert f"energy source: {expected_source}" in out
    assert "threads 1" in out
    if expected_source.startswith("model:"):
        assert "skipped rapl:" in out  # why a better source was not used
    assert "latency" in result.stderr  # the progress bar

    for name in ("latency.png", "splits.png"):
        png = tmp_path / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    profile = load_profile(tmp_path / "profile.json")
    manifest = open_package(digits_package).manifest
    assert profile.package_id == manifest.package_id
    assert profile.model_name == manifest.model_name
    assert profile.threads == 1
    assert profile.runs == 20
    assert profile.warmup == 3
    assert profile.device_preset == "rpi4"
    assert profile.machine.cores >= 1
    assert profile.machine.platform
    assert profile.peak_rss_bytes > 10 * 2**20  # a Python process with ONNX Runtime loaded
    assert profile.energy_source == expected_source
    assert len(profile.segments) == len(manifest.segments)
    for segment in profile.segments:
        assert 0 < segment.latency_p50_ms <= segment.latency_p90_ms <= segment.latency_p99_ms
        assert 0 <= segment.exit_check_p50_ms <= segment.exit_check_p90_ms <= segment.exit_check_p99_ms
        assert segment.energy_j > 0
        assert segment.energy_source == expected_source
    for k in range(len(manifest.segments) - 1):
        fp32, fp16, int8 = (profile.encoded_bytes(k, c) for c in ("fp32", "fp16", "int8"))
        assert fp32 is not None
        assert fp16 is not None
        assert int8 is not None
        assert fp32 == pytest.approx(2 * fp16, rel=0.05)
        assert fp32 == pytest.approx(4 * int8, rel=0.05)
    assert device_costs(profile, manifest, codec="fp16").offload_boundaries == (-1, 0, 1)


def test_profile_bad_preset_is_one_line(edgeexit_cli: list[str], digits_package: Path, tmp_path: Path) -> None:
    result = run_cli(edgeexit_cli, tmp_path, "profile", digits_package, "--device-preset", "toaster", "--runs", 1)
    assert result.returncode == 1
    assert "error:" in result.stderr
    assert "toaster" in result.stderr
    assert "Traceback" not in result.stderr


def test_plot_without_matplotlib_names_the_extra(digits_package: Path, tmp_path: Path, cli_without) -> None:
    result = subprocess.run(
        [*cli_without("matplotlib"), "profile", str(digits_package), "--runs", "1", "--plot", str(tmp_path / "plots")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "edgeexit[plots]" in result.stderr
    assert not (tmp_path / "plots").exists()
