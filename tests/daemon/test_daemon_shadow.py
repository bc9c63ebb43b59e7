"""``[shadow]`` in device.toml: the daemon re-runs a share of requests at full depth in the background and
says, in an event and in Prometheus series, when the early answers surely disagree with it more than the
calibration allowed (a real daemon subprocess, real gRPC calls, a real data shift)."""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from edgeexit.calibration import calibrate_manifest, digest_data
from edgeexit.daemon.config import ConfigError, parse_config
from edgeexit.data import LabelledData
from edgeexit.package import open_package
from edgeexit.runtime import Engine
from edgeexit.transport.generated import grpc_service_pb2 as pb


@pytest.fixture
def calibrated(digits_package: Path, digits: LabelledData, tmp_path: Path) -> Path:
    """The digits package with thresholds certified for at most 2% disagreement with its final exit
    (Learn-then-Test, delta 0.1: the certified eps is the shadow's when [shadow] sets none).
    Uncalibrated, its 0.9 thresholds send shifted inputs to full depth, where nothing can disagree."""
    target = tmp_path / "pkg"
    shutil.copytree(digits_package, target)
    package = open_package(target)
    full = Engine(package, cache_dir=None).run_full(digits.x)
    manifest, _ = calibrate_manifest(package.manifest, full, digits.y, criterion=None, max_drop=0.02, delta=0.1,
                                     against="final", data_sha256=digest_data(digits.x, digits.y))  # fmt: skip
    package.save_manifest(manifest)
    return target


def test_shifted_inputs_raise_the_drift_alarm(kit, start_daemon, calibrated: Path, digits: LabelledData,
                                              tmp_path: Path) -> None:  # fmt: skip
    shadow = "metrics_port = 0\n[shadow]\nshare = 1.0\nqueue_size = 2000\n"  # eps: the calibration's 2 points
    daemon = start_daemon(kit.write_config(tmp_path / "device.toml", calibrated, "127.0.0.1:0", extra=shadow))
    metrics_port = daemon.wait_event("listening")["metrics_port"]
    noisy = digits.x[:400] + np.random.default_rng(0).normal(0.0, 0.5, digits.x[:400].shape)
    with kit.client(daemon.address) as stub:
        for start in range(0, len(noisy), 16):
            reply = stub.ModelInfer(kit.infer_request(np.ascontiguousarray(noisy[start : start + 16], np.float32)))
            assert reply.parameters["batch_size"].int64_param == min(16, len(noisy) - start)  # answered at once
        drift = daemon.wait_event("calibration_drift")
        assert drift["low"] > 0.02
        assert drift["eps"] == 0.02
        assert drift["samples"] >= 30
        assert stub.ServerLive(pb.ServerLiveRequest()).live  # the alarm changes nothing about serving
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as page:
        text = page.read().decode()
    assert "edgeexit_device_shadow_breached 1.0" in text
    assert 'edgeexit_device_shadow_disagreement{bound="low"}' in text
    assert 'edgeexit_device_shadow_exit_rate{exit="0"}' in text
    assert len(daemon.events("calibration_drift")) == 1  # once per breach, not once per sample


def test_a_breach_recertifies_and_the_daemon_serves_with_the_tighter_thresholds(
    kit, start_daemon, calibrated: Path, digits: LabelledData, tmp_path: Path
) -> None:
    shadow = "[shadow]\nshare = 1.0\nqueue_size = 2000\nrecertify = true\ndelta = 0.1\nmin_samples = 300\n"
    daemon = start_daemon(kit.write_config(tmp_path / "device.toml", calibrated, "127.0.0.1:0", extra=shadow))
    noisy = np.ascontiguousarray(digits.x + np.random.default_rng(2).normal(0.0, 0.5, digits.x.shape), np.float32)
    with kit.client(daemon.address) as stub:
        first = []
        for start in range(0, 400, 16):
            first += kit.output(stub.ModelInfer(kit.infer_request(noisy[start : start + 16])), "exit").tolist()
        found = daemon.wait_event("thresholds_recertified")
        if found["certified"]:  # some early exits certified on the shifted data
            assert found["bound"] <= 0.02
        else:  # too few shadows to certify any: full depth ("never" is 1e9 in JSON)
            assert found["thresholds"] == [1e9] * len(found["thresholds"])
        assert all(new >= old for new, old in zip(found["thresholds"], found["previous"], strict=True))
        later = []
        for start in range(400, 800, 16):
            later += kit.output(stub.ModelInfer(kit.infer_request(noisy[start : start + 16])), "exit").tolist()
    # the shifted inputs left early under the old thresholds, and go deeper under the certified ones
    assert np.mean(later) > np.mean(first) + 0.5


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[shadow]\n", "shadow.share is None"),
        ("[shadow]\nshare = 2.0\n", "in (0, 1]"),
        ("[shadow]\nshare = 0.1\neps = 1.5\n", "shadow.eps is 1.5"),
        ("[shadow]\nshare = 0.1\nkeep = 3\n", "shadow.keep"),
        ("[shadow]\nshare = 0.1\nrecertify = 1\n", "shadow.recertify is 1"),
        ("[shadow]\nshare = 0.1\ndelta = 1.0\n", "shadow.delta is 1.0"),
    ],
)
def test_a_bad_shadow_table_names_the_key(table: str, message: str, tmp_path: Path) -> None:
    import tomllib

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_config(tomllib.loads('package = "p"\n' + table), base=tmp_path)


def test_a_shadow_table_is_read(tmp_path: Path) -> None:
    import tomllib

    config = parse_config(tomllib.loads('package = "p"\n[shadow]\nshare = 0.05\n'), base=tmp_path)
    assert config.shadow is not None
    assert (config.shadow.share, config.shadow.eps, config.shadow.queue_size) == (0.05, None, 64)
    assert (config.shadow.recertify, config.shadow.delta, config.shadow.min_samples) == (False, 0.1, 500)
