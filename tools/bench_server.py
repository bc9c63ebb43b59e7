"""Tail-server benchmark: dynamic batching vs none, and the loopback cost of one offload.

    python tools/bench_server.py [--quick] [--rounds 2] [--json out.json] [--perf-analyzer PATH]

Everything runs on this machine over loopback, in three kinds of process: ``python -m edgeexit
serve`` (one per server configuration, its ephemeral port read from the ready line), the load
generator (this file with ``--loadgen``, one process for the whole run, fed one point at a time)
and this orchestrator, which only waits while they run. All of them share the machine's cores.
The default run takes about 2.5 minutes; every process it starts is stopped before it returns.

The tails are built here with onnx.helper and seeded numpy weights, as a Triton-layout repository
in a temporary directory (``edgeexit.repository.tail_config``): nothing to train, no torch. Both
take a boundary tensor ``hidden`` [N, 64, 20, 20], 25,600 floats = 100 KiB per sample in fp32,
decoded in-graph per codec as exported tails do (docs/offload.md):

  convfc   Conv 3x3/2 64->64 + ReLU, Flatten 6400, Gemm 6400->256 + ReLU, Gemm 256->10
           (a conv stage and an FC head, 1.7 M weights = 6.7 MB: batching saves compute)
  conv     Conv 3x3 64->64 + ReLU, Conv 3x3/2 64->128 + ReLU, global average pool, Gemm 128->10
           (convolutions only: a sample costs as much at batch 64 as at batch 1, or more)

Measured side by side in one run (all servers up at once, configurations alternating per client
count so that noise hits them alike):

  (1) throughput: N closed-loop clients (N = 1, 16, 64), each its own gRPC channel with one
      ModelInfer in flight (a pre-serialized fp32 request), a warm-up, then a fixed window:
      requests/s, p50/p99 latency, mean samples per server batch (the server's Prometheus
      histogram, deltas over the window), the mean queue wait and batch run the server reports,
      and the CPU the server (cores, ms per request) and the load generator (cores) used.
      Unbatched = --max-batch-size 1; batched = --max-batch-size 64 with --max-queue-delay-us
      1000 (what export writes; --delay-us) and, on convfc, the other delays of --sweep-us.
      Ratio batched / unbatched                                                  target >= 3x at 64
  (2) one offload of the 100 KiB tensor at 1 client, per codec: the tail's own compute (an
      onnxruntime session run here, same graph, loader and thread count as the server) vs the
      device's whole call (codec encode + edgeexit's TailClient: request build, gRPC over
      loopback, server queue and compute, reply checks); overhead = e2e - compute.
  (3) optionally Triton's perf_analyzer against the unbatched and the batched server
      (--perf-analyzer PATH; it needs libb64 and libcudart, see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeexit.procs import SERVE_READY_PREFIX, ChildProcess

if TYPE_CHECKING:
    from rich.console import Console

DIMS = (64, 20, 20)
CLASSES = 10
PACKAGE_ID = "be9c0000000000000000000000000001"
CODECS = ("fp32", "fp16", "int8")
KINDS = ("convfc", "conv")
MAX_BATCH = 64
METHOD = "/inference.GRPCInferenceService/ModelInfer"
METRICS = re.compile(r"edgeexit serve: metrics on http://(?P<address>\S+)/metrics")
MESSAGE_BYTES = 64 << 20


# ---------------------------------------------------------------- the tails


def int8_decode(output: str) -> tuple[list, object, list]:
    """An int8 tail's side inputs, its one constant and its decode nodes, ``hidden`` -> ``output``:
    (hidden - zero_point) * scale, one pair per sample ([N, 1] reshaped to [N, 1, 1, 1])."""
    from onnx import TensorProto, helper, numpy_helper

    inputs = [
        helper.make_tensor_value_info("scale", TensorProto.FLOAT, ["N", 1]),
        helper.make_tensor_value_info("zero_point", TensorProto.UINT8, ["N", 1]),
    ]
    constant = numpy_helper.from_array(np.array([-1, 1, 1, 1], np.int64), "per_sample")
    nodes = [
        helper.make_node("Cast", ["hidden"], ["q"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["zero_point"], ["zp"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["zp", "per_sample"], ["zp4"]),
        helper.make_node("Reshape", ["scale", "per_sample"], ["scale4"]),
        helper.make_node("Sub", ["q", "zp4"], ["centred"]),
        helper.make_node("Mul", ["centred", "scale4"], [output]),
    ]
    return inputs, constant, nodes


def tail_graph(kind: str, codec: str, seed: int = 0):
    """A tail as docs/offload.md describes one: decode ``hidden`` per codec, then ``kind``'s layers."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    initializers: list = []

    def weight(name: str, shape: tuple[int, ...], fan_in: int) -> str:
        array = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        initializers.append(numpy_helper.from_array(array, name))
        return name

    element = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16, "int8": TensorProto.UINT8}[codec]
    inputs = [helper.make_tensor_value_info("hidden", element, ["N", *DIMS])]
    nodes = []
    if codec == "fp32":
        x = "hidden"
    elif codec == "fp16":
        nodes.append(helper.make_node("Cast", ["hidden"], ["decoded"], to=TensorProto.FLOAT))
        x = "decoded"
    else:
        side, constant, decode = int8_decode("decoded")
        inputs += side
        initializers.append(constant)
        nodes += decode
        x = "decoded"
    channels = DIMS[0]

    def conv(x: str, name: str, out: int, stride: int) -> str:
        w = weight(f"{name}_w", (out, channels, 3, 3), channels * 9)
        b = weight(f"{name}_b", (out,), 1e6)  # a huge fan-in: biases near 0
        nodes.append(helper.make_node("Conv", [x, w, b], [f"{name}_y"], pads=[1, 1, 1, 1], strides=[stride] * 2))
        nodes.append(helper.make_node("Relu", [f"{name}_y"], [f"{name}_r"]))
        return f"{name}_r"

    def dense(x: str, name: str, fan_in: int, out: int, relu: bool) -> str:
        w, b = weight(f"{name}_w", (fan_in, out), fan_in), weight(f"{name}_b", (out,), 1e6)
        y = "logits" if not relu else f"{name}_y"
        nodes.append(helper.make_node("Gemm", [x, w, b], [y]))
        if relu:
            nodes.append(helper.make_node("Relu", [y], [f"{name}_r"]))
            return f"{name}_r"
        return y

    if kind == "convfc":
        x = conv(x, "conv1", 64, 2)
        nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
        x = dense("flat", "fc1", 64 * (DIMS[1] // 2) * (DIMS[2] // 2), 256, relu=True)
        dense(x, "fc2", 256, CLASSES, relu=False)
    elif kind == "conv":
        x = conv(x, "conv1", 64, 1)
        channels = 64
        x = conv(x, "conv2", 128, 2)
        nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
        nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], axis=1))
        dense("flat", "fc", 128, CLASSES, relu=False)
    else:
        raise ValueError(f"unknown tail kind {kind!r}; expected one of {', '.join(KINDS)}")
    graph = helper.make_graph(
        nodes,
        f"{kind}_{codec}",
        inputs,
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def tail_name(kind: str, codec: str) -> str:
    from edgeexit.repository import tail_model_name

    return tail_model_name(kind, 0, codec)


def build_repository(root: Path, kinds: tuple[str, ...], codecs: tuple[str, ...]) -> Path:
    """A Triton-layout repository: one model per (kind, codec), batching from the server's flags."""
    import onnx

    from edgeexit.repository import tail_config, write_config

    for kind in kinds:
        for codec in codecs:
            name = tail_name(kind, codec)
            (root / name / "1").mkdir(parents=True)
            onnx.save(tail_graph(kind, codec), str(root / name / "1" / "model.onnx"))
            config = tail_config(
                name=name,
                codec=codec,
                boundary=0,
                hidden_dims=DIMS,
                num_classes=CLASSES,
                package_id=PACKAGE_ID,
                max_batch_size=MAX_BATCH,
            )
            write_config(root / name, config)
    return root


def sample_hidden(seed: int = 1) -> np.ndarray:
    """One boundary tensor as a ReLU stage leaves it: about half zeros, the rest positive."""
    rng = np.random.default_rng(seed)
    return np.maximum(rng.standard_normal(DIMS), 0).astype(np.float32)


# ---------------------------------------------------------------- the servers


@dataclass
class Server:
    """One ``python -m edgeexit serve`` process; ``stop`` drains it (SIGTERM), then kills it."""

    label: str
    max_batch_size: int
    delay_us: int
    workers: int = 1
    child: ChildProcess | None = None
    address: str = ""
    metrics_url: str = ""

    def launch(self, repo: Path, threads: int) -> Server:
        command = [
            sys.executable, "-m", "edgeexit", "serve", str(repo),
            "--listen", "127.0.0.1:0",
            "--max-batch-size", str(self.max_batch_size),
            "--max-queue-delay-us", str(self.delay_us),
            "--threads", str(threads),
            "--metrics-port", "0",
            "--grace-s", "2",
            "--workers", str(self.workers),
        ]  # fmt: skip
        self.child = ChildProcess(command, env={**os.environ, "COLUMNS": "200"}, name=f"{self.label}: edgeexit serve")
        return self

    def wait_ready(self, timeout: float = 120.0) -> Server:
        """Until the ready line (``edgeexit serve: listening on HOST:PORT``) gives the address; the
        metrics line comes before it."""
        assert self.child is not None
        self.address = self.child.wait_ready(SERVE_READY_PREFIX, timeout_s=timeout)
        for line in self.child.lines:
            if found := METRICS.search(line):
                self.metrics_url = f"http://{found['address']}/metrics"
        return self

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()


# ---------------------------------------------------------------- load generator (its own process)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its live children (``serve --workers N``'s), in seconds."""
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for process in (root, *root.children(recursive=True)):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy so far (/proc/stat: all but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _batch_totals(metrics_url: str, model: str) -> tuple[float, float]:
    """(samples, batches) the server has run for ``model`` so far: its edgeexit_batch_size histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    found = {"sum": 0.0, "count": 0.0}
    for family in text_string_to_metric_families(text):
        if family.name != "edgeexit_batch_size":
            continue
        for sample in family.samples:
            if sample.labels.get("model") == model:
                for suffix in found:
                    if sample.name.endswith(f"_{suffix}"):
                        found[suffix] += sample.value
    return found["sum"], found["count"]


async def _throughput(spec: dict) -> dict:
    import grpc

    from edgeexit.codecs import create_codec
    from edgeexit.transport.generated import grpc_service_pb2 as pb
    from edgeexit.transport.wire import build_request

    clients, model = spec["clients"], spec["model"]
    encoded = create_codec("fp32").encode(sample_hidden()[None])
    payload = build_request(model, encoded, package_id=PACKAGE_ID).SerializeToString()
    options = [
        ("grpc.use_local_subchannel_pool", 1),  # one TCP connection per client, as separate devices have
        ("grpc.max_send_message_length", MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MESSAGE_BYTES),
    ]
    channels = [grpc.aio.insecure_channel(spec["address"], options=options) for _ in range(clients)]
    try:
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), 30)
        calls = [
            c.unary_unary(METHOD, request_serializer=None, response_deserializer=pb.ModelInferResponse.FromString)
            for c in channels
        ]
        latencies: list[float] = []
        queue_ms: list[float] = []
        compute_ms: list[float] = []
        batch_sizes: list[int] = []
        errors: dict[str, int] = {}
        start = time.perf_counter()
        window = (start + spec["warmup_s"], start + spec["warmup_s"] + spec["duration_s"])

        async def client(call) -> None:
            while (sent := time.perf_counter()) < window[1]:
                try:
                    reply = await call(payload, timeout=60)
                except grpc.aio.AioRpcError as err:
                    errors[err.code().name] = errors.get(err.code().name, 0) + 1
                    await asyncio.sleep(0.01)
                    continue
                done = time.perf_counter()
                if window[0] <= done < window[1]:
                    latencies.append(done - sent)
                    queue_ms.append(reply.parameters["queue_ms"].double_param)
                    compute_ms.append(reply.parameters["compute_ms"].double_param)
                    batch_sizes.append(reply.parameters["batch_size"].int64_param)

        async def snapshots() -> list[tuple[float, ...]]:
            taken = []
            for at in window:
                await asyncio.sleep(max(0.0, at - time.perf_counter()))
                samples, batches = await asyncio.to_thread(_batch_totals, spec["metrics_url"], model)
                cpu = (_cpu_seconds(spec["server_pid"]), _own_cpu_seconds(), _machine_busy_seconds())
                taken.append((time.perf_counter(), samples, batches, *cpu))
            return taken

        results = await asyncio.gather(snapshots(), *(client(call) for call in calls))
        (t0, s0, b0, server0, own0, busy0), (t1, s1, b1, server1, own1, busy1) = results[0]
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    wall = t1 - t0
    ms = np.asarray(latencies) * 1e3
    return {
        "clients": clients,
        "requests": len(latencies),
        "rps": len(latencies) / spec["duration_s"],
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
        "mean_batch": (s1 - s0) / (b1 - b0) if b1 > b0 else None,
        "request_weighted_batch": float(np.mean(batch_sizes)) if batch_sizes else None,
        "queue_ms": float(np.mean(queue_ms)) if queue_ms else None,
        "compute_ms": float(np.mean(compute_ms)) if compute_ms else None,
        "server_cpu": (server1 - server0) / wall,
        "client_cpu": (own1 - own0) / wall,
        # everything else the machine ran meanwhile (other processes on this shared machine, mostly);
        # /proc/stat and per-process accounting tick apart, so an idle machine reads about +-0.05
        "other_cpu": max(0.0, ((busy1 - busy0) - (server1 - server0) - (own1 - own0)) / wall),
        "errors": errors,
    }


def _offload(spec: dict) -> dict:
    """Per codec: encode + TailClient.infer, one call at a time; e2e, the server's own timings, and
    the client's own share (encode + request build + serialization, no network) measured apart."""
    from edgeexit.codecs import create_codec
    from edgeexit.transport.client import TailClient
    from edgeexit.transport.wire import build_request

    hidden = sample_hidden()[None]
    keys = ("e2e", "queue", "compute", "bytes", "client")
    found: dict[str, dict[str, list[float]]] = {codec: {k: [] for k in keys} for codec in spec["codecs"]}
    cpu: list[tuple[float, ...]] = []
    with TailClient(spec["address"], timeout_s=30) as client:
        for rounds, record in ((1, False), (spec["rounds"], True)):  # warm-up pass, then the measured rounds
            cpu.append(
                (time.perf_counter(), _cpu_seconds(spec["server_pid"]), _own_cpu_seconds(), _machine_busy_seconds())
            )
            for _ in range(rounds):
                for codec_name in spec["codecs"]:
                    codec, model = create_codec(codec_name), tail_name(spec["kind"], codec_name)
                    into = found[codec_name]
                    for _ in range(spec["calls"] if record else 20):
                        tick = time.perf_counter()
                        reply = client.infer(model, codec.encode(hidden), package_id=PACKAGE_ID, classes=CLASSES)
                        elapsed = time.perf_counter() - tick
                        tick = time.perf_counter()
                        build_request(model, codec.encode(hidden), package_id=PACKAGE_ID).SerializeToString()
                        local = time.perf_counter() - tick
                        if record:
                            into["e2e"].append(elapsed * 1e3)
                            into["client"].append(local * 1e3)
                            into["queue"].append(reply.queue_ms or 0.0)
                            into["compute"].append(reply.compute_ms or 0.0)
                            into["bytes"].append(reply.bytes_sent)
    cpu.append((time.perf_counter(), _cpu_seconds(spec["server_pid"]), _own_cpu_seconds(), _machine_busy_seconds()))
    (t0, server0, own0, busy0), (t1, server1, own1, busy1) = cpu[1:]
    codecs = {
        codec: {
            "e2e_p50_ms": float(np.median(v["e2e"])),
            "e2e_p99_ms": float(np.percentile(v["e2e"], 99)),
            "client_ms": float(np.median(v["client"])),
            "server_queue_ms": float(np.median(v["queue"])),
            "server_compute_ms": float(np.median(v["compute"])),
            "request_bytes": int(np.median(v["bytes"])),
            "calls": len(v["e2e"]),
        }
        for codec, v in found.items()
    }
    other = ((busy1 - busy0) - (server1 - server0) - (own1 - own0)) / (t1 - t0)
    return {"codecs": codecs, "other_cpu": max(0.0, other)}


def loadgen_main() -> None:
    """The load generator's process: one JSON spec per stdin line, one ``RESULT {json}`` line each."""
    for line in sys.stdin:
        spec = json.loads(line)
        result = asyncio.run(_throughput(spec)) if spec["mode"] == "throughput" else _offload(spec)
        print("RESULT " + json.dumps(result), flush=True)


class LoadGenerator:
    """This file with ``--loadgen`` in a process of its own, kept for the whole run (no start-up
    cost per point); ``close`` ends it, killing it if it does not exit."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--loadgen"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        streams = ((self.process.stdout, self._lines.put), (self.process.stderr, self._stderr.append))
        for stream, sink in streams:
            threading.Thread(target=self._drain, args=(stream, sink), daemon=True).start()

    @staticmethod
    def _drain(stream, sink) -> None:
        for line in stream:
            sink(line)
        sink(None)

    def measure(self, spec: dict, timeout: float) -> dict:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(spec) + "\n")
        self.process.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"the load generator gave no result within {timeout:.0f} s") from None
            if line is None:
                stderr = "".join(s for s in self._stderr if s)
                raise RuntimeError(f"the load generator exited ({self.process.wait()}):\n{stderr}")
            if line.startswith("RESULT "):
                return json.loads(line.removeprefix("RESULT "))

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.close()
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(timeout=10)


# ---------------------------------------------------------------- direct compute


def direct_compute_ms(repo: Path, kind: str, codecs: tuple[str, ...], threads: int, calls: int) -> dict[str, float]:
    """Median ms of one batch-1 session run per codec: same graph, loader and thread count as the server."""
    from edgeexit.codecs import create_codec
    from edgeexit.runtime.sessions import load_session

    hidden = sample_hidden()[None]
    sessions = {c: load_session(repo / tail_name(kind, c) / "1" / "model.onnx", threads) for c in codecs}
    feeds = {c: create_codec(c).encode(hidden).tensors() for c in codecs}
    times: dict[str, list[float]] = {c: [] for c in codecs}
    for c in codecs:
        for _ in range(20):
            sessions[c].run(["logits"], feeds[c])
    for _ in range(3):  # rounds alternate between codecs
        for c in codecs:
            for _ in range(calls):
                tick = time.perf_counter()
                sessions[c].run(["logits"], feeds[c])
                times[c].append((time.perf_counter() - tick) * 1e3)
    return {c: float(np.median(t)) for c, t in times.items()}


def batch_scaling_ms(repo: Path, kind: str, threads: int) -> dict[int, float]:
    """Per-sample ms (median run) of the fp32 tail at batch 1, 8 and 64: what batching can save in compute."""
    from edgeexit.runtime.sessions import load_session

    session = load_session(repo / tail_name(kind, "fp32") / "1" / "model.onnx", threads)
    found = {}
    for batch in (1, 8, 64):
        x = np.repeat(sample_hidden()[None], batch, axis=0)
        for _ in range(3):
            session.run(["logits"], {"hidden": x})
        times = []
        for _ in range(max(15, 300 // batch)):
            tick = time.perf_counter()
            session.run(["logits"], {"hidden": x})
            times.append(time.perf_counter() - tick)
        found[batch] = float(np.median(times)) / batch * 1e3
    return found


# ---------------------------------------------------------------- perf_analyzer


PA_THROUGHPUT = re.compile(r"Concurrency: (\d+), throughput: ([\d.]+) infer/sec")


def run_perf_analyzer(path: str, server: Server, model: str, clients: list[int], interval_ms: int) -> dict:
    """Triton's perf_analyzer over gRPC against one server, one run per client count; its rows or
    why it failed. Windows are stable within 30% (its default, 10%, rarely settles on this machine)."""
    rows = []
    for n in clients:
        command = [
            path, "-m", model, "-u", server.address, "-i", "grpc", "-b", "1",
            "--concurrency-range", f"{n}:{n}", "--measurement-interval", str(interval_ms),
            "--max-trials", "6", "--stability-percentage", "30",
        ]  # fmt: skip
        before = _batch_totals(server.metrics_url, model)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as err:
            return {"error": f"{type(err).__name__}: {err}", "rows": rows}
        after = _batch_totals(server.metrics_url, model)
        found = PA_THROUGHPUT.search(done.stdout)
        if done.returncode != 0 or not found:
            return {"error": f"exit {done.returncode}: {(done.stdout + done.stderr).strip()[-1500:]}", "rows": rows}
        latency = {q: re.search(rf"p{q} latency: (\d+) usec", done.stdout) for q in (50, 99)}
        rows.append(
            {
                "clients": int(found[1]),
                "rps": float(found[2]),
                **{f"p{q}_ms": int(m[1]) / 1e3 if m else None for q, m in latency.items()},
                # over the whole run, its unmeasured first window included
                "mean_batch": (after[0] - before[0]) / (after[1] - before[1]) if after[1] > before[1] else None,
                "command": " ".join(command),
            }
        )
    return {"rows": rows}


# ---------------------------------------------------------------- orchestration


def _fmt(value: float | None, digits: int = 2) -> str | None:
    return None if value is None else f"{value:,.{digits}f}"


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


@dataclass
class Run:
    """What every part of a run shares: options, the servers, the load generator, the output."""

    args: argparse.Namespace
    clients: list[int]
    kinds: tuple[str, ...]
    rounds: int
    duration: float
    warmup: float
    calls: int
    repo: Path
    servers: list[Server]
    loadgen: LoadGenerator
    console: Console

    @property
    def chosen(self) -> str:
        return self.servers[1].label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 and 16 clients, 1 round of 1 s, one tail")
    parser.add_argument("--clients", default="1,16,64", help="concurrent clients, comma-separated")
    parser.add_argument(
        "--delay-us", type=int, default=1000, help="the batched configuration's max queue delay (export's default)"
    )
    parser.add_argument("--sweep-us", default="0,500,2000", help="other delays measured beside it (tail convfc only)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"tails for throughput: {', '.join(KINDS)}")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over every point (figures: their mean)")
    parser.add_argument("--duration", type=float, default=2.5, help="measured seconds per point and round")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per point (not measured)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (servers and direct runs)")
    parser.add_argument("--offload-calls", type=int, default=100, help="offloads per codec per round (3 rounds)")
    parser.add_argument("--perf-analyzer", metavar="PATH", help="also run Triton's perf_analyzer binary at PATH")
    parser.add_argument("--json", type=Path, help="also write every measured figure to this file")
    parser.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        loadgen_main()
        return
    # SIGTERM as SystemExit, so that the finally below stops every process this run started
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 200)  # the tables are wide: no wrapping in files
    clients = [int(n) for n in args.clients.split(",")]
    kinds = tuple(k for k in args.kinds.split(",") if k)
    sweep = [int(d) for d in args.sweep_us.split(",") if d.strip() and int(d) != args.delay_us]
    rounds, duration, warmup, calls = args.rounds, args.duration, args.warmup, args.offload_calls
    if args.quick:
        clients, kinds, sweep, rounds, duration, warmup, calls = [1, 16], kinds[:1], [], 1, 1.0, 0.5, 20
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    console.print(
        f"{os.cpu_count()} cores shared by the servers, the load generator and this process (load average "
        f"{load_before:.2f} before); ONNX Runtime threads={args.threads}; {rounds} round(s) of {duration:g} s "
        f"measured after {warmup:g} s warm-up per point; hidden {list(DIMS)} = {int(np.prod(DIMS)) * 4:,} "
        "bytes fp32 per sample"
    )
    servers = [Server("unbatched", 1, 0), Server(f"batched {args.delay_us} us", MAX_BATCH, args.delay_us)]
    servers += [Server(f"batched {d} us", MAX_BATCH, d) for d in sweep]
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "cores": os.cpu_count()}
    loadgen: LoadGenerator | None = None
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        repo = build_repository(Path(tmp) / "repo", tuple(dict.fromkeys((*kinds, "convfc"))), CODECS)
        try:
            for server in servers:
                server.launch(repo, args.threads)
            loadgen = LoadGenerator()
            for server in servers:
                server.wait_ready()
            console.print("servers: " + ", ".join(f"{s.label} (pid {s.pid}, {s.address})" for s in servers))
            run = Run(args, clients, kinds, rounds, duration, warmup, calls, repo, servers, loadgen, console)
            report["throughput"] = throughput(run)
            report["offload"] = offload(run)
            if args.perf_analyzer:
                report["perf_analyzer"] = perf_analyzer(run)
        finally:
            if loadgen is not None:
                loadgen.close()
            for server in servers:
                server.stop()
    report["load_average"] = [load_before, os.getloadavg()[0]]
    report["seconds"] = time.perf_counter() - started
    console.print(
        f"load average before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f}; total {report['seconds']:.0f} s"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


def throughput(run: Run) -> dict:
    """(1): every configuration at every client count, alternating per client count, in rounds."""
    from edgeexit.console import table

    console = run.console

    measured: dict[tuple[str, str, int], list[dict]] = {}
    for turn in range(run.rounds):
        for kind in run.kinds:
            for n in run.clients:
                order = run.servers if turn % 2 == 0 else run.servers[::-1]  # no configuration always goes first
                for server in order:
                    if server.label not in ("unbatched", run.chosen) and kind != "convfc":
                        continue  # the delay sweep runs on convfc only
                    spec = {
                        "mode": "throughput",
                        "address": server.address,
                        "metrics_url": server.metrics_url,
                        "server_pid": server.pid,
                        "model": tail_name(kind, "fp32"),
                        "clients": n,
                        "warmup_s": run.warmup,
                        "duration_s": run.duration,
                    }
                    result = run.loadgen.measure(spec, timeout=120 + run.warmup + run.duration)
                    measured.setdefault((kind, server.label, n), []).append(result)
    keys = ("rps", "p50_ms", "p99_ms", "mean_batch", "queue_ms", "compute_ms", "server_cpu", "client_cpu", "other_cpu")
    points = {key: {k: _mean([r[k] for r in rs]) for k in keys} for key, rs in measured.items()}
    found: dict = {}
    for kind in run.kinds:
        scaling = batch_scaling_ms(run.repo, kind, run.args.threads)
        rows = []
        for n in run.clients:
            for server in run.servers:
                p = points.get((kind, server.label, n))
                if p is None:
                    continue
                errors: dict[str, int] = {}
                for r in measured[kind, server.label, n]:
                    for code, count in r["errors"].items():
                        errors[code] = errors.get(code, 0) + count
                versus = p["rps"] / points[kind, "unbatched", n]["rps"]
                cpu_per_request = p["server_cpu"] / p["rps"] * 1e3
                rows.append(
                    (
                        server.label, n, _fmt(p["rps"], 0), f"{versus:.2f}x", _fmt(p["p50_ms"]), _fmt(p["p99_ms"]),
                        _fmt(p["mean_batch"], 1), _fmt(p["queue_ms"]), _fmt(p["compute_ms"]), _fmt(p["server_cpu"]),
                        _fmt(cpu_per_request), _fmt(p["client_cpu"]), _fmt(p["other_cpu"]),
                        ", ".join(f"{k} {v}" for k, v in errors.items()) or "0",
                    )
                )  # fmt: skip
        title = (
            f"(1) throughput, tail {tail_name(kind, 'fp32')} (fp32, 100 KiB per request), means of {run.rounds} "
            f"round(s); the tail's own compute per sample at batch 1 / 8 / 64: "
            f"{scaling[1]:.3f} / {scaling[8]:.3f} / {scaling[64]:.3f} ms"
        )
        columns = (
            "server", "clients", "req/s", "vs unbatched", "p50 ms", "p99 ms", "mean batch",
            "queue ms", "batch ms", "server cores", "server CPU ms/req", "loadgen cores", "other cores", "errors",
        )  # fmt: skip
        console.print(table(title, columns, rows))
        ratios, parts = {}, []
        for n in run.clients:
            ratios[n] = points[kind, run.chosen, n]["rps"] / points[kind, "unbatched", n]["rps"]
            each = [
                b["rps"] / u["rps"]
                for b, u in zip(measured[kind, run.chosen, n], measured[kind, "unbatched", n], strict=True)
            ]
            spread = f" (rounds {', '.join(f'{r:.2f}x' for r in each)})" if len(each) > 1 else ""
            parts.append(f"{n} clients {ratios[n]:.2f}x{spread}")
        verdict = f"; target >= 3x at 64: {'met' if ratios[64] >= 3 else 'missed'}" if 64 in ratios else ""
        console.print(f"{kind}: {run.chosen} / unbatched throughput: {', '.join(parts)}{verdict}")
        found[kind] = {
            "compute_ms_per_sample": scaling,
            "ratios": ratios,
            "points": {
                f"{label} / {n}": {"mean": points[k, label, n], "rounds": measured[k, label, n]}
                for (k, label, n) in measured
                if k == kind
            },
        }
    return found


def offload(run: Run) -> dict:
    """(2): one 100 KiB offload at 1 client per codec vs the tail's own compute time."""
    from edgeexit.console import table

    console = run.console

    server = run.servers[0]
    compute = direct_compute_ms(run.repo, "convfc", CODECS, run.args.threads, run.calls)
    spec = {"mode": "offload", "address": server.address, "server_pid": server.pid, "kind": "convfc"}
    measured = run.loadgen.measure({**spec, "codecs": list(CODECS), "rounds": 3, "calls": run.calls}, timeout=300)
    rows = []
    for codec in CODECS:
        o = measured["codecs"][codec]
        o["compute_ms"] = compute[codec]
        rows.append(
            (
                codec, f"{o['request_bytes']:,}", _fmt(compute[codec], 3), _fmt(o["server_compute_ms"], 3),
                _fmt(o["server_queue_ms"], 3), _fmt(o["client_ms"], 3), _fmt(o["e2e_p50_ms"], 3),
                _fmt(o["e2e_p99_ms"], 3), _fmt(o["e2e_p50_ms"] - compute[codec], 3),
                f"{o['e2e_p50_ms'] / compute[codec]:.2f}x",
            )
        )  # fmt: skip
    columns = (
        "codec", "request bytes", "compute ms", "server compute ms", "server queue ms", "client build ms",
        "e2e p50 ms", "e2e p99 ms", "overhead ms", "e2e / compute",
    )  # fmt: skip
    title = (
        f"(2) one offload at 1 client, tail {tail_name('convfc', 'fp32')}[__codec], {server.label} server; medians "
        f"of {3 * run.calls} calls per codec. compute = session run here; e2e = encode + TailClient.infer; "
        f"overhead = e2e - compute; other processes used {measured['other_cpu']:.2f} cores meanwhile"
    )
    console.print(table(title, columns, rows))
    return measured


def perf_analyzer(run: Run) -> dict:
    """(3): Triton's perf_analyzer against the unbatched and the chosen batched server."""
    from edgeexit.console import table

    console = run.console

    found = {}
    model = tail_name("convfc", "fp32")
    for server in run.servers[:2]:
        result = run_perf_analyzer(run.args.perf_analyzer, server, model, run.clients, int(run.duration * 1e3))
        found[server.label] = result
        if result.get("error"):
            console.print(f"perf_analyzer against {server.label}: FAILED: {result['error']}")
        rows = [
            (r["clients"], _fmt(r["rps"], 0), _fmt(r["p50_ms"]), _fmt(r["p99_ms"]), _fmt(r["mean_batch"], 1))
            for r in result["rows"]
        ]
        if rows:
            title = f"(3) perf_analyzer -i grpc, {server.label}, {model} (random fp32 input)"
            console.print(table(title, ("clients", "infer/s", "p50 ms", "p99 ms", "mean batch"), rows))
    base, batched = (found[s.label]["rows"] for s in run.servers[:2])
    by_clients = {r["clients"]: r["rps"] for r in base}
    ratios = [f"{r['clients']} clients {r['rps'] / by_clients[r['clients']]:.2f}x"
              for r in batched if by_clients.get(r["clients"])]  # fmt: skip
    if ratios:
        console.print(f"perf_analyzer: {run.chosen} / unbatched: " + ", ".join(ratios))
    return found


if __name__ == "__main__":
    main()
