"""A real link between two network namespaces: the bandwidth estimate and the policy follow ``tc``.

Two namespaces joined by a veth pair on a private /30; the device side's egress (the uplink) is
shaped with ``tbf`` (this kernel has no netem, and no delay is added: the veth's own RTT is a
fraction of a millisecond, which the estimator's probes measure and subtract). ``edgeexit serve``
runs in one namespace, a device script in the other sends batched fp32 boundary-0 tensors (64
digits samples = ~256 KB per request, so transfers are bandwidth-dominated) and reports its
``LinkEstimator``'s bandwidth. Checked: the estimate lands within 20% of 5 Mbit/s; after ``tc qdisc
change ... rate 50mbit`` it follows; and ``best-static`` picks a different plan at the two estimates.

The costs given to ``best-static`` are constructed, not measured: the digits CNN's segments take
microseconds, so on real profile numbers offloading never pays on any link. Segments 1 and 2 are
scaled so that finishing locally costs the same as offloading at boundary 0 over a 16 Mbit/s link
(the crossover sits between 5 and 50 Mbit/s by construction), and the test checks the policy's
choice flips across it with the *measured* estimates.

Needs root, ``ip`` and ``tc``, and skips with the reason otherwise. Everything it creates (the two
namespaces, which take the veth pair with them, and the server process) is removed in a fixture's
teardown, also when the test fails.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgeexit.procs import SERVE_READY_PREFIX, ChildProcess

RATE_SLOW_BPS = 5e6
RATE_FAST_BPS = 50e6
CROSSOVER_BPS = 16e6

pytestmark = pytest.mark.timeout(240)


def _skip_reason() -> str | None:
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "needs root to create network namespaces, veth pairs and tc qdiscs (CI runs it as root)"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"needs {' and '.join(missing)} (iproute2) on PATH"
    return None


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


@dataclass
class Netns:
    server_ns: str
    device_ns: str
    server_if: str
    device_if: str
    server_ip: str
    device_ip: str

    def exec(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def shape(self, rate_bps: float, *, change: bool = False) -> None:
        """tbf on the device side's egress: the uplink."""
        verb = "change" if change else "add"
        rate = f"{rate_bps / 1e6:g}mbit"
        _run(*self.exec(self.device_ns), "tc", "qdisc", verb, "dev", self.device_if, "root", "tbf",
             "rate", rate, "burst", "32kbit", "latency", "50ms")  # fmt: skip


@pytest.fixture
def netns() -> Iterator[Netns]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    pid = os.getpid()
    net = Netns(
        server_ns=f"eesrv{pid}", device_ns=f"eedev{pid}", server_if=f"ees{pid}"[:15], device_if=f"eed{pid}"[:15],
        server_ip=f"10.{(pid >> 8) & 255}.{pid & 252}.1", device_ip=f"10.{(pid >> 8) & 255}.{pid & 252}.2",
    )  # fmt: skip
    created: list[str] = []
    try:
        for ns in (net.server_ns, net.device_ns):
            done = _run("ip", "netns", "add", ns, check=False)
            if done.returncode != 0:
                pytest.skip(f"cannot create a network namespace here (ip netns add: {done.stderr.strip()})")
            created.append(ns)
        _run("ip", "link", "add", net.server_if, "type", "veth", "peer", "name", net.device_if)
        _run("ip", "link", "set", net.server_if, "netns", net.server_ns)
        _run("ip", "link", "set", net.device_if, "netns", net.device_ns)
        for ns, dev, ip in (
            (net.server_ns, net.server_if, net.server_ip),
            (net.device_ns, net.device_if, net.device_ip),
        ):
            _run("ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        net.shape(RATE_SLOW_BPS)
        yield net
    finally:
        for ns in created:  # deleting a namespace destroys its end of the veth pair, and with it the pair
            _run("ip", "netns", "del", ns, check=False)
        _run("ip", "link", "del", net.server_if, check=False)  # in case it never moved into a namespace


@pytest.fixture
def served(netns: Netns, digits_package: Path) -> Iterator[str]:
    """``edgeexit serve`` inside the server namespace; yields its address."""
    command = [*netns.exec(netns.server_ns), sys.executable, "-m", "edgeexit", "serve", str(digits_package),
               "--listen", f"{netns.server_ip}:0"]  # fmt: skip
    with ChildProcess(command, name="the tail server in the namespace") as server:
        yield server.wait_ready(SERVE_READY_PREFIX)


DEVICE_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import grpc, numpy as np
    from edgeexit.codecs import create_codec
    from edgeexit.device.tails import select_tail
    from edgeexit.policy import LinkEstimator
    from edgeexit.runtime import Engine
    from edgeexit.transport.client import TailClient
    from edgeexit.transport.generated import grpc_service_pb2 as pb
    from edgeexit.transport.generated import grpc_service_pb2_grpc as pb_grpc

    address, package, data = sys.argv[1:4]
    engine = Engine(package, cache_dir=None)
    xs = np.load(data)["x"].astype(np.float32)
    pending = engine.run_batch_until(xs, 0, early_exit=False).pending
    tail = select_tail(engine.manifest, 0, "fp32")
    encoded = create_codec("fp32").encode(pending.hidden)
    estimator = LinkEstimator(half_life_samples=2.0)
    channel = grpc.insecure_channel(address)
    live = pb_grpc.GRPCInferenceServiceStub(channel)
    with TailClient(address, timeout_s=30.0) as client:
        for phase in ("slow", "fast"):
            for _ in range(5):  # probes: the veth's RTT, subtracted from every transfer
                tick = time.monotonic()
                live.ServerLive(pb.ServerLiveRequest(), timeout=10)
                estimator.observe_probe(time.monotonic() - tick)
            client.infer(tail.model, encoded, package_id=engine.manifest.package_id)  # warm-up, not counted
            sizes = []
            for _ in range(6):
                reply = client.infer(tail.model, encoded, package_id=engine.manifest.package_id)
                server_ms = reply.server_ms if reply.server_ms is not None else 0.0
                estimator.observe_transfer(reply.bytes_sent, reply.transfer_ms / 1e3, server_ms=server_ms)
                sizes.append(reply.bytes_sent)
            estimate = estimator.estimate()
            print(json.dumps({"phase": phase, "bandwidth_bps": estimate.bandwidth_bps, "rtt_s": estimate.rtt_s,
                              "request_bytes": sizes[0]}), flush=True)
            if phase == "slow":
                sys.stdin.readline()  # the test changes the rate, then says go on
    channel.close()
    """
)


def test_bandwidth_estimate_and_policy_follow_the_shaped_link(
    netns: Netns, served: str, digits_package: Path, digits, tmp_path: Path
) -> None:
    data = tmp_path / "batch.npz"
    np.savez(data, x=digits.x[:64], y=digits.y[:64])
    script = tmp_path / "device.py"
    script.write_text(DEVICE_SCRIPT)
    device = subprocess.Popen(
        [*netns.exec(netns.device_ns), sys.executable, str(script), served, str(digits_package), str(data)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert device.stdout is not None
        assert device.stdin is not None
        slow_line = device.stdout.readline()
        if not slow_line:
            pytest.fail(f"the device script stopped: {device.stderr.read() if device.stderr else ''}")
        slow = json.loads(slow_line)
        netns.shape(RATE_FAST_BPS, change=True)
        device.stdin.write("go\n")
        device.stdin.flush()
        fast_line = device.stdout.readline()
        if not fast_line:
            pytest.fail(f"the device script stopped: {device.stderr.read() if device.stderr else ''}")
        fast = json.loads(fast_line)
        assert device.wait(timeout=60) == 0
    finally:
        if device.poll() is None:
            device.kill()
            device.wait(timeout=15)
    print(f"\nnetns estimates: tbf 5mbit -> {slow['bandwidth_bps'] / 1e6:.2f} Mbit/s, "
          f"tbf 50mbit -> {fast['bandwidth_bps'] / 1e6:.2f} Mbit/s; "
          f"RTT {slow['rtt_s'] * 1e3:.2f} ms; {slow['request_bytes']:,} B per request")  # fmt: skip

    assert slow["request_bytes"] > 200_000  # bandwidth-dominated transfers, as intended
    assert slow["bandwidth_bps"] == pytest.approx(RATE_SLOW_BPS, rel=0.2)
    # the estimate follows the change; at 50 Mbit/s a 256 KB request takes ~40 ms, where Python and
    # HTTP/2 overheads weigh more, so the check is that it moved well past the slow rate
    assert fast["bandwidth_bps"] > 3 * slow["bandwidth_bps"]

    choice_slow, choice_fast = _best_static_choices(digits_package, slow, fast)
    assert choice_slow != choice_fast
    assert choice_fast == "offload@0"


def _best_static_choices(package: Path, slow: dict, fast: dict) -> tuple[str, str]:
    from edgeexit.policy import DeviceCosts, LinkEstimate, create_policy, offload_now, static_split
    from edgeexit.runtime import Engine

    manifest = Engine(package, cache_dir=None).manifest

    def costs(scale: float) -> DeviceCosts:
        # without the input tail: the constructed crossover is between local and offloading at boundary 0
        found = DeviceCosts.from_manifest(manifest, [0.05, scale, scale], codec="fp32", active_w=5.0, idle_w=2.0)
        return dataclasses.replace(found, input_bytes=None, input_server_ms=None)

    crossover = LinkEstimate.fixed(CROSSOVER_BPS, slow["rtt_s"])
    base = costs(1.0)
    # local(scale) = local(0) + scale * per_unit; offloading at 0 does not depend on the scale
    per_unit = static_split(base, None).latency_ms - static_split(costs(0.0), None).latency_ms
    target = static_split(base, 0, crossover).latency_ms - static_split(costs(0.0), None).latency_ms
    scale = max(target / per_unit, 1e-3)
    assert offload_now(base, 0, crossover).latency_ms > 0
    policy = create_policy("best-static", costs(scale))
    chosen = []
    for measured in (slow, fast):
        best, _, _ = policy.plan(LinkEstimate.fixed(measured["bandwidth_bps"], measured["rtt_s"]))
        chosen.append(best.name)
    print(f"best-static (segments 1-2 at {scale:.3f} ms each): slow link -> {chosen[0]}, fast link -> {chosen[1]}")
    return chosen[0], chosen[1]
