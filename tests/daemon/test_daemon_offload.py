"""The daemon offloading to a real tail server (edgeexit serve, in this process), by split and by
policy, and falling back when the server is gone; the response says which way each sample went."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import numpy as np
import pytest

from edgeexit.data import LabelledData
from edgeexit.runtime.engine import Engine
from edgeexit.server import ServerOptions, TailServer


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("how", ["split = 0", 'policy = "split@0"'])
def test_offload_and_fallback(
    kit, start_daemon, digits_package: Path, digits: LabelledData, tmp_path: Path, how: str
) -> None:
    xs = np.ascontiguousarray(digits.x[:16], dtype=np.float32)
    want = [r.prediction for r in Engine(digits_package, cache_dir=None).run_batch(xs)]
    with TailServer([digits_package], ServerOptions(listen="127.0.0.1:0")) as server:
        offload = f'[offload]\nservers = ["{server.address}"]\n{how}\ncodec = "fp32"\ntimeout_ms = 30000\n'
        daemon = start_daemon(kit.write_config(tmp_path / "device.toml", digits_package, "127.0.0.1:0", extra=offload))
        with kit.client(daemon.address) as stub:
            reply = stub.ModelInfer(kit.infer_request(xs))
            offloaded = kit.output(reply, "offloaded")
            assert offloaded.any()  # some samples did not exit at boundary 0 and went to the server
            assert not kit.output(reply, "fallback").any()
            assert kit.output(reply, "prediction").tolist() == want
            one = int(np.flatnonzero(offloaded)[0])
            assert stub.ModelInfer(kit.infer_request(xs[one : one + 1])).parameters["offloaded"].bool_param
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0

    gone = f'[offload]\nservers = ["127.0.0.1:{_closed_port()}"]\n{how}\ncodec = "fp32"\ntimeout_ms = 2000\n'
    daemon = start_daemon(kit.write_config(tmp_path / "gone.toml", digits_package, "127.0.0.1:0", extra=gone))
    with kit.client(daemon.address) as stub:
        reply = stub.ModelInfer(kit.infer_request(xs))
        assert np.array_equal(kit.output(reply, "fallback"), offloaded)  # the same samples, finished here
        assert not kit.output(reply, "offloaded").any()
        assert kit.output(reply, "prediction").tolist() == want


def test_the_policy_keys_reach_the_daemons_runner(
    kit, start_daemon, digits_package: Path, digits: LabelledData, tmp_path: Path
) -> None:
    """objective, latency_slo_ms, decision_log and probe_interval_s in device.toml: every decision the
    daemon takes is logged with that objective, and the first one already saw a probe of the server."""
    import json

    xs = np.ascontiguousarray(digits.x[:16], dtype=np.float32)
    want = [r.prediction for r in Engine(digits_package, cache_dir=None).run_batch(xs)]
    log = tmp_path / "decisions.jsonl"
    with TailServer([digits_package], ServerOptions(listen="127.0.0.1:0")) as server:
        offload = (
            f'[offload]\nservers = ["{server.address}"]\npolicy = "split@0"\ncodec = "fp32"\ntimeout_ms = 30000\n'
            'objective = "energy"\nlatency_slo_ms = 250\ndecision_log = "decisions.jsonl"\nprobe_interval_s = 3600\n'
        )
        daemon = start_daemon(kit.write_config(tmp_path / "device.toml", digits_package, "127.0.0.1:0", extra=offload))
        assert daemon.events("loaded")[0]["mode"] == "policy split@0 (fp32)"
        with kit.client(daemon.address) as stub:
            reply = stub.ModelInfer(kit.infer_request(xs))
            assert kit.output(reply, "prediction").tolist() == want
            offloaded = int(kit.output(reply, "offloaded").sum())
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    logged = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert logged
    assert all(entry["policy"] == "split@0" for entry in logged)
    assert all(
        entry["objective"]["kind"] == "energy" and entry["objective"]["latency_slo_ms"] == 250 for entry in logged
    )
    # a batch is decided once per boundary: one line covers every sample it names
    covered = [len(e["sample"]) if isinstance(e["sample"], list) else 1 for e in logged if e["action"] == "offload"]
    assert sum(covered) == offloaded > 0
    assert logged[0]["link"]["samples"] >= 1  # probe_interval_s: a probe came before the first decision
