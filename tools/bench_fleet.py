"""A fleet against one tail server: split@k, best-static and adaptive, with and without load feedback,
below, at and above the server's capacity, and through a surge.

    python tools/bench_fleet.py [--devices 200] [--loads 0.5,1,2] [--surge 4] [--duration 8]
                                [--slo-ms 250] [--deadline-ms 150] [--json F] [--png F] [--markdown F]

What is real and what is emulated:

- the server is real: one ``python -m edgeexit serve`` on loopback per setting (``--shed`` and
  ``--no-shed``), one process, one ONNX Runtime thread, max batch 8, no batching delay, serving
  two int8 tails (boundary tensor [64, 20, 20] = 25.6 KB): after boundary 0, ``--tail-convs`` 3x3
  64->64 convolutions at 20x20 (~29.5 MFLOP each, and batching does not make a sample cheaper:
  the tail's compute is what limits the server), after boundary 1 half as many. Its capacity is
  measured first, in this run, by saturating it from this process with 64 closed-loop clients on
  the boundary-0 tail: the devices meet that server.
- the devices are emulated in this process with asyncio, each with its own link (drawn from the
  mix in ``LINKS``), its own speed (a factor drawn from [0.6, 1.6] on segment times of 20, 30, 50
  ms), its own Poisson arrivals, its own ``LinkEstimator`` and its own policy instance (the
  library's policies, on a ``DeviceCosts`` built from its numbers). A device computes by sleeping
  for its modelled segment times and exits where a draw from the exit probabilities says; an
  offload is a real gRPC ModelInfer over its own connection, delayed by its link (half the RTT and
  the upload before, half the RTT after) with a deadline of ``--deadline-ms`` (what leaves time to
  finish locally within the SLO); a failed or shed offload is finished locally (the device's
  remaining segments), as the runtime does.
- load feedback on: the server sheds (``--shed``), replies' and probes' ``expected_server_ms``
  feed each device's estimator, and a shed backs it off (``LinkEstimator(load_feedback=True)``);
  off: ``--no-shed`` and ``load_feedback=False``, what edgeexit did before (the policies still see
  the queue the replies measured). Every device probes the server once a second either way
  (ServerLive: the RTT, and the server's expected time when feedback is on).
- the offered load: each device's arrival rate is set so that the fleet under ``split@0`` would
  send ``load x capacity`` offloads a second (split@0 offloads the samples that do not exit at
  exit 0). A surge row runs the lowest load with ``--surge`` x the load in the middle third of its
  run. The same draws (seeded) are replayed for every policy.

Reported per (load, policy, feedback): completed inferences/s, mean and p99 latency over every
request, each device's p99 (median and worst device), offload share (answered by the server),
sheds and fallbacks, lost requests (issued minus answered: must be 0), and the mean latency in the
last third (after a surge: how fast the fleet recovers). Targets (issue): zero lost everywhere; at
2x adaptive with feedback keeps p99 within ``--slo-ms`` while split@0 does not; below capacity,
feedback costs nothing measurable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_server import CLASSES, DIMS, PACKAGE_ID, int8_decode, sample_hidden

from edgeexit.policy import DeviceCosts, LinkEstimator, Policy, create_policy
from edgeexit.procs import SERVE_READY_PREFIX, ChildProcess

METHOD = "/inference.GRPCInferenceService/ModelInfer"
LIVE = "/inference.GRPCInferenceService/ServerLive"
CODEC = "int8"
#: The tails' boundaries: after boundary 0 the server-limiting one, after boundary 1 one half as heavy.
TAILS = (0, 1)
SEGMENT_MS = (20.0, 30.0, 50.0)  # a device of speed 1: the three segments with their exit checks
EXIT_PROB = (0.4, 0.3, 0.3)
#: The link mix: (name, share of devices, bandwidth bit/s, RTT s).
LINKS = (("wifi", 0.5, 40e6, 0.005), ("lte", 0.35, 12e6, 0.035), ("weak", 0.15, 4e6, 0.070))
POLICIES = ("split@0", "best-static", "adaptive")


def tail_name(boundary: int) -> str:
    from edgeexit.repository import tail_model_name

    return tail_model_name("fleet", boundary, CODEC)


def heavy_tail(convs: int, seed: int):
    """An int8 tail whose compute limits the server: decode, ``convs`` 3x3 64->64 convolutions at
    20x20 (~29.5 MFLOP each; batching does not make a sample cheaper), global pool, a classifier."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    side, constant, nodes = int8_decode("x0")
    initializers = [constant]
    channels = DIMS[0]
    for i in range(convs):
        w = (rng.standard_normal((channels, channels, 3, 3)) * np.sqrt(2.0 / (channels * 9))).astype(np.float32)
        initializers.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [f"x{i}", f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"x{i + 1}"]))
    fc = (rng.standard_normal((channels, CLASSES)) * 0.1).astype(np.float32)
    initializers.append(numpy_helper.from_array(fc, "fc"))
    nodes += [
        helper.make_node("GlobalAveragePool", [f"x{convs}"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "fc"], ["logits"]),
    ]
    inputs = [helper.make_tensor_value_info("hidden", TensorProto.UINT8, ["N", *DIMS]), *side]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])]
    graph = helper.make_graph(nodes, f"heavy{convs}", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_repository(root: Path, convs: int) -> Path:
    """Boundary 0's tail runs ``convs`` convolutions, boundary 1's (later in the model) half as many."""
    import onnx

    from edgeexit.repository import tail_config, write_config

    for boundary in TAILS:
        name = tail_name(boundary)
        (root / name / "1").mkdir(parents=True)
        graph = heavy_tail(max(1, convs // (1 + boundary)), seed=boundary)
        onnx.save(graph, str(root / name / "1" / "model.onnx"))
        config = tail_config(name=name, codec=CODEC, boundary=boundary, hidden_dims=DIMS, num_classes=CLASSES,
                             package_id=PACKAGE_ID, max_batch_size=8, max_queue_delay_us=0)  # fmt: skip
        write_config(root / name, config)
    return root


def payloads() -> dict[int, tuple[bytes, int]]:
    """Per boundary: the serialized request of one int8 sample, and the bytes a device sends."""
    from edgeexit.codecs import create_codec
    from edgeexit.transport.wire import build_request

    encoded = create_codec(CODEC).encode(sample_hidden()[None])
    found = {}
    for boundary in TAILS:
        request = build_request(tail_name(boundary), encoded, package_id=PACKAGE_ID)
        found[boundary] = (request.SerializeToString(), request.ByteSize())
    return found


def tail_compute_ms(root: Path) -> dict[int, float]:
    """Each tail's unloaded batch-1 run here (one thread): the ``server_ms`` the devices' costs model."""
    import onnxruntime as ort

    from edgeexit.codecs import create_codec

    encoded = create_codec(CODEC).encode(sample_hidden()[None])
    feeds = {"hidden": encoded.data, "scale": np.full((1, 1), encoded.scale, np.float32),
             "zero_point": np.full((1, 1), encoded.zero_point, np.uint8)}  # fmt: skip
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    found = {}
    for boundary in TAILS:
        session = ort.InferenceSession(str(root / tail_name(boundary) / "1" / "model.onnx"), options,
                                       providers=["CPUExecutionProvider"])  # fmt: skip
        for _ in range(5):
            session.run(None, feeds)
        times = []
        for _ in range(30):
            tick = time.perf_counter()
            session.run(None, feeds)
            times.append((time.perf_counter() - tick) * 1e3)
        found[boundary] = float(np.median(times))
    return found


# ---------------------------------------------------------------- the devices


@dataclass
class Device:
    """One emulated device: its link, speed, arrivals, estimator, policy and what it measured."""

    index: int
    link: str
    bandwidth_bps: float
    rtt_s: float
    speed: float
    arrivals: list[float]
    policy: Policy
    estimator: LinkEstimator
    rng: random.Random
    latencies: list[float] = field(default_factory=list)
    offloaded: int = 0
    shed: int = 0
    fallbacks: int = 0
    issued: int = 0

    def segment_s(self, j: int) -> float:
        return SEGMENT_MS[j] * self.speed / 1e3


@dataclass(frozen=True)
class Setting:
    """One row: the offered load, the policy, feedback on or off; ``surge`` > 0: the load is
    multiplied by it in the middle third of the run (a burst, then back)."""

    load: float
    policy: str
    feedback: bool
    surge: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.policy} {'+feedback' if self.feedback else 'no feedback'}"

    @property
    def load_name(self) -> str:
        return f"{self.load:g}x, {self.surge:g}x surge" if self.surge else f"{self.load:g}x"


def surging(at_s: float, duration_s: float) -> bool:
    return duration_s / 3 <= at_s < 2 * duration_s / 3


def make_fleet(n: int, rate_per_s: float, duration_s: float, setting: Setting, server_ms: dict[int, float],
               sent_bytes: dict[int, int], seed: int) -> list[Device]:  # fmt: skip
    """``n`` devices, the same draws for every setting (seeded by index): links, speeds, arrivals."""
    devices = []
    for index in range(n):
        draw = random.Random(seed * 100_003 + index)
        pick, total = draw.random(), 0.0
        for name, share, bandwidth, rtt in LINKS:  # noqa: B007  # the loop picks one
            total += share
            if pick <= total:
                break
        speed = draw.uniform(0.6, 1.6)
        peak = rate_per_s * max(setting.surge, 1.0)
        arrivals, at = [], draw.expovariate(peak)
        while at < duration_s:  # Poisson at the rate of the moment (thinning: drawn at the peak, kept at rate/peak)
            rate = rate_per_s * (setting.surge if setting.surge and surging(at, duration_s) else 1.0)
            if draw.random() < rate / peak:
                arrivals.append(at)
            at += draw.expovariate(peak)
        costs = DeviceCosts(
            segment_ms=tuple(ms * speed for ms in SEGMENT_MS),
            segment_j=(0.0,) * len(SEGMENT_MS),
            exit_prob=EXIT_PROB,
            encoded_bytes=(sent_bytes[0], sent_bytes[1]),
            server_ms=(server_ms[0], server_ms[1]),
        )
        estimator = LinkEstimator(load_feedback=setting.feedback, seed=seed + index)
        estimator.observe_probe(rtt)  # the device knows its link: a probe and one transfer's worth
        estimator.observe_transfer(sent_bytes[0], rtt + sent_bytes[0] * 8 / bandwidth)
        devices.append(Device(index, name, bandwidth, rtt, speed, arrivals, create_policy(setting.policy, costs),
                              estimator, random.Random(seed + 7 * index)))  # fmt: skip
    return devices


async def run_device(device: Device, address: str, requests: dict[int, tuple[bytes, int]], started: float,
                     deadline_s: float, probe_s: float) -> None:  # fmt: skip
    import grpc

    from edgeexit.transport.generated import grpc_service_pb2 as pb
    from edgeexit.transport.wire import parse_reply, trailing_expected_server_ms

    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own, as a separate device has
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        infer = channel.unary_unary(
            METHOD, request_serializer=None, response_deserializer=pb.ModelInferResponse.FromString
        )
        live = channel.unary_unary(LIVE, request_serializer=pb.ServerLiveRequest.SerializeToString,
                                   response_deserializer=pb.ServerLiveResponse.FromString)  # fmt: skip
        loop = asyncio.get_running_loop()
        estimator = device.estimator
        next_probe = started + device.rng.uniform(0, probe_s)

        async def probe() -> None:
            tick = loop.time()
            await asyncio.sleep(device.rtt_s / 2)
            call = live(pb.ServerLiveRequest(), timeout=1.0)
            await call
            trailing = await call.trailing_metadata()
            await asyncio.sleep(device.rtt_s / 2)
            estimator.observe_probe(loop.time() - tick, trailing_expected_server_ms(trailing))

        for offset in device.arrivals:
            arrival = started + offset
            now = loop.time()
            if now < arrival:
                if next_probe < arrival:
                    await asyncio.sleep(max(0.0, next_probe - now))
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        await probe()
                    next_probe = loop.time() + probe_s
                await asyncio.sleep(max(0.0, arrival - loop.time()))
            device.issued += 1
            estimator.observe_request(1)
            exit_at = device.rng.choices(range(len(EXIT_PROB)), EXIT_PROB)[0]
            j = 0
            done = False
            while not done:
                await asyncio.sleep(device.segment_s(j))
                if j == exit_at:
                    break
                decision = device.policy.decide(j, estimator.estimate())
                if decision.action != "offload" or j not in requests:
                    j += 1
                    continue
                payload, size = requests[j]
                tick = loop.time()
                try:
                    await asyncio.sleep(device.rtt_s / 2 + size * 8 / device.bandwidth_bps)
                    remaining = deadline_s - (loop.time() - tick)
                    if remaining <= 0:
                        raise asyncio.TimeoutError
                    reply = await infer(payload, timeout=remaining)
                    await asyncio.sleep(device.rtt_s / 2)
                except (grpc.aio.AioRpcError, asyncio.TimeoutError) as err:
                    if isinstance(err, grpc.aio.AioRpcError) and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        device.shed += 1
                        estimator.observe_shed(trailing_expected_server_ms(err.trailing_metadata()))
                    device.fallbacks += 1
                    for rest in range(j + 1, len(SEGMENT_MS)):  # finished here, from the same boundary
                        await asyncio.sleep(device.segment_s(rest))
                    break
                answer = parse_reply(reply, samples=1, classes=CLASSES)  # as the device client reads it
                costs = device.policy.costs
                modelled = costs.server_ms[j] if costs is not None and costs.server_ms else 0.0
                estimator.observe_reply(
                    size, loop.time() - tick, queue_ms=answer.queue_ms, compute_ms=answer.compute_ms,
                    server_ms=answer.server_ms, modelled_compute_ms=modelled,
                    expected_server_ms=answer.expected_server_ms,
                )  # fmt: skip
                device.offloaded += 1
                done = True
            device.latencies.append(loop.time() - arrival)


async def run_fleet(devices: Sequence[Device], address: str, requests: dict[int, tuple[bytes, int]],
                    deadline_s: float, probe_s: float) -> float:  # fmt: skip
    loop = asyncio.get_running_loop()
    started = loop.time() + 0.2
    await asyncio.gather(*(run_device(d, address, requests, started, deadline_s, probe_s) for d in devices))
    return loop.time() - started


async def saturate(address: str, request: bytes, clients: int, seconds: float) -> float:
    """Closed-loop clients on one tail for ``seconds``: answered requests per second (the capacity)."""
    import grpc

    from edgeexit.transport.generated import grpc_service_pb2 as pb

    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(clients)]
    calls = [c.unary_unary(METHOD, request_serializer=None, response_deserializer=pb.ModelInferResponse.FromString)
             for c in channels]  # fmt: skip
    count = 0
    loop = asyncio.get_running_loop()
    warm, end = loop.time() + 1.0, loop.time() + 1.0 + seconds

    async def client(call) -> None:
        nonlocal count
        while loop.time() < end:
            await call(request, timeout=10)
            if loop.time() > warm:
                count += 1

    try:
        await asyncio.gather(*(client(c) for c in calls))
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    return count / seconds


# ---------------------------------------------------------------- the report


def summarize(
    devices: Sequence[Device], elapsed_s: float, warmup_s: float, duration_s: float
) -> dict[str, float | int]:
    """Requests answered after the warm-up count for latency; every request counts for lost/shed."""
    issued = sum(d.issued for d in devices)
    answered = sum(len(d.latencies) for d in devices)
    latencies = []
    last_third = []
    per_device = []
    for device in devices:
        pairs = list(zip(device.arrivals, device.latencies, strict=False))
        kept = [lat for at, lat in pairs if at >= warmup_s]
        latencies += kept
        last_third += [lat for at, lat in pairs if at >= 2 * duration_s / 3]
        if kept:
            per_device.append(float(np.percentile(kept, 99)))
    ms = np.asarray(latencies) * 1e3
    offloaded = sum(d.offloaded for d in devices)
    return {
        "issued": issued,
        "lost": issued - answered,
        "throughput": answered / elapsed_s,
        "mean_ms": float(ms.mean()),
        "p99_ms": float(np.percentile(ms, 99)),
        "last_third_mean_ms": float(np.mean(last_third)) * 1e3,  # after a surge: how fast the fleet recovers
        "median_device_p99_ms": float(np.median(per_device)) * 1e3,
        "worst_device_p99_ms": max(per_device) * 1e3,
        "offload_share": offloaded / max(answered, 1),
        "offloaded": offloaded,
        "shed": sum(d.shed for d in devices),
        "fallbacks": sum(d.fallbacks for d in devices),
    }


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"{meta['devices']} devices, server capacity {meta['capacity']:.0f} req/s on the boundary-0 tail "
        f"(tail compute {meta['tail_ms'][0]:.2f} / {meta['tail_ms'][1]:.2f} ms), SLO p99 <= {meta['slo_ms']:g} ms, "
        f"offload deadline {meta['deadline_ms']:g} ms, {meta['duration_s']:g} s per setting",
        "",
        "| load | policy | feedback | inferences/s | mean ms | p99 ms | device p99: median / worst | offloaded "
        "| shed | fallbacks | lost | last third mean ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        load = f"{r['load']:g}x" + (f", {r['surge']:g}x surge" if r["surge"] else "")
        lines.append(
            f"| {load} | {r['policy']} | {'on' if r['feedback'] else 'off'} | {r['throughput']:.0f} | "
            f"{r['mean_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['median_device_p99_ms']:.0f} / {r['worst_device_p99_ms']:.0f} | "
            f"{100 * r['offload_share']:.0f}% | {r['shed']} | {r['fallbacks']} | {r['lost']} | "
            f"{r['last_third_mean_ms']:.1f} |"
        )
    return "\n".join(lines)


def picture(rows: list[dict], slo_ms: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for policy in POLICIES:
        for feedback in (False, True):
            found = sorted((r["load"], r["p99_ms"]) for r in rows
                           if r["policy"] == policy and r["feedback"] == feedback and not r["surge"])  # fmt: skip
            if found:
                axis.plot(*zip(*found, strict=True), marker="o", linestyle="-" if feedback else "--",
                          label=f"{policy} {'with' if feedback else 'without'} feedback")  # fmt: skip
    axis.axhline(slo_ms, color="grey", linewidth=1, label=f"SLO {slo_ms:g} ms")
    axis.set_xlabel("offered load (x server capacity, as split@0 would send it)")
    axis.set_ylabel("p99 latency (ms)")
    axis.set_yscale("log")
    axis.legend(fontsize=8)
    axis.set_title("A fleet against one edgeexit serve")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200, help="emulated devices (50-200)")
    parser.add_argument("--loads", default="0.5,1,2", help="offered load, x the server's capacity")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of arrivals per setting")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds at the start left out of latencies")
    parser.add_argument("--slo-ms", type=float, default=250.0, help="the p99 latency the fleet is held to")
    parser.add_argument(
        "--deadline-ms",
        type=float,
        default=150.0,
        help="each offload's gRPC deadline: what leaves time to finish locally within the SLO",
    )
    parser.add_argument("--probe-s", type=float, default=1.0, help="seconds between a device's probes")
    parser.add_argument("--policies", default=",".join(POLICIES), help="policies to compare")
    parser.add_argument("--tail-convs", type=int, default=48, help="convolutions in the boundary-0 tail (its cost)")
    parser.add_argument(
        "--surge",
        type=float,
        default=4.0,
        help="also run the lowest load with the load x this in the middle third (0: no surge rows)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--png", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--replot", type=Path, metavar="JSON", help="only draw --png from an earlier run's --json")
    args = parser.parse_args()
    if args.replot:
        found = json.loads(args.replot.read_text())
        picture(found["rows"], found["meta"]["slo_ms"], args.png or args.replot.with_suffix(".png"))
        return
    if not 1 <= args.devices <= 1000:
        parser.error("--devices must be 1..1000")
    loads = [float(v) for v in args.loads.split(",")]
    policies = [p for p in args.policies.split(",") if p]
    survive0 = 1.0 - EXIT_PROB[0]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        repo = build_repository(Path(tmp) / "repo", args.tail_convs)
        tail_ms = tail_compute_ms(repo)
        requests = payloads()
        sent = {k: size for k, (_, size) in requests.items()}
        servers: dict[bool, ChildProcess] = {}
        addresses: dict[bool, str] = {}
        try:
            for feedback in (True, False):
                command = [sys.executable, "-m", "edgeexit", "serve", str(repo), "--listen", "127.0.0.1:0",
                           "--threads", "1", "--grace-s", "2", "--shed" if feedback else "--no-shed"]  # fmt: skip
                label = f"edgeexit serve ({'shed' if feedback else 'no shed'})"
                servers[feedback] = ChildProcess(command, env={**os.environ, "COLUMNS": "200"}, name=label)
                addresses[feedback] = servers[feedback].wait_ready(SERVE_READY_PREFIX)
            capacity = asyncio.run(saturate(addresses[False], requests[0][0], clients=64, seconds=4.0))
            print(f"{os.cpu_count()} cores; capacity {capacity:.0f} req/s on the boundary-0 tail (tail compute "
                  f"{tail_ms[0]:.2f} ms / {tail_ms[1]:.2f} ms at batch 1, one thread)", flush=True)  # fmt: skip
            settings = [Setting(load, policy, feedback) for load in loads for policy in policies
                        for feedback in (False, True)]  # fmt: skip
            if args.surge:
                settings += [Setting(min(loads), policy, feedback, args.surge) for policy in policies
                             for feedback in (False, True)]  # fmt: skip
            for turn, setting in enumerate(settings):
                rate = setting.load * capacity / (args.devices * survive0)
                fleet = make_fleet(args.devices, rate, args.duration, setting, tail_ms, sent, args.seed)
                time.sleep(1.0)  # the previous setting's queue drains
                elapsed = asyncio.run(run_fleet(fleet, addresses[setting.feedback], requests,
                                                args.deadline_ms / 1e3, args.probe_s))  # fmt: skip
                measured = summarize(fleet, elapsed, args.warmup, args.duration)
                row = {"load": setting.load, "surge": setting.surge, "policy": setting.policy,
                       "feedback": setting.feedback, "rate_per_device": rate, **measured}  # fmt: skip
                rows.append(row)
                print(f"[{turn + 1}/{len(settings)}] {setting.load_name} {setting.label:<26} "
                      f"{row['throughput']:6.0f}/s mean {row['mean_ms']:6.1f} p99 {row['p99_ms']:7.1f} ms "
                      f"worst {row['worst_device_p99_ms']:7.1f} offloaded {100 * row['offload_share']:3.0f}% "
                      f"shed {row['shed']:5d} fallbacks {row['fallbacks']:5d} lost {row['lost']} "
                      f"last third {row['last_third_mean_ms']:6.1f}", flush=True)  # fmt: skip
        finally:
            for child in servers.values():
                child.stop()
    meta = {"devices": args.devices, "capacity": capacity, "tail_ms": tail_ms, "slo_ms": args.slo_ms,
            "deadline_ms": args.deadline_ms, "duration_s": args.duration, "cores": os.cpu_count()}  # fmt: skip
    text = markdown(rows, meta)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    if args.png:
        picture(rows, args.slo_ms, args.png)
    verdicts(rows, args.slo_ms)


def verdicts(rows: list[dict], slo_ms: float) -> None:
    """The issue's targets, said plainly (measured, not asserted: this is a benchmark)."""
    lost = sum(r["lost"] for r in rows)
    print(f"lost requests over every setting: {lost} (target 0)")
    surges = [r for r in rows if r["surge"]]
    rows = [r for r in rows if not r["surge"]]
    top = max(r["load"] for r in rows)
    for policy in POLICIES:
        for feedback in (False, True):
            found = [r for r in rows if r["load"] == top and r["policy"] == policy and r["feedback"] == feedback]
            if found:
                r = found[0]
                verdict = "within" if r["p99_ms"] <= slo_ms else "MISSES"
                print(f"at {top:g}x: {policy} {'with' if feedback else 'without'} feedback p99 {r['p99_ms']:.1f} ms "
                      f"{verdict} the {slo_ms:g} ms SLO")  # fmt: skip
    low = min(r["load"] for r in rows)
    for policy in ("best-static", "adaptive"):
        pair = {r["feedback"]: r for r in rows if r["load"] == low and r["policy"] == policy}
        if len(pair) == 2:
            ratio = pair[True]["mean_ms"] / pair[False]["mean_ms"]
            print(f"at {low:g}x: {policy} mean latency with / without feedback = {ratio:.3f}")
    for r in surges:
        print(f"{r['load']:g}x with a {r['surge']:g}x surge: {r['policy']} {'with' if r['feedback'] else 'without'} "
              f"feedback p99 {r['p99_ms']:.1f} ms, mean after the surge {r['last_third_mean_ms']:.1f} ms")  # fmt: skip
    if lost:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
