"""``edgeexit serve --workers N`` against one process, side by side: what more processes buy on this box.

    python tools/bench_workers.py [--workers 1,2] [--clients 16,64] [--rounds 4] [--duration 3]

The same tail (bench_server.py's ``convfc``, 100 KiB fp32 boundary tensor, batched: max batch 64,
1 ms delay), the same load generator (bench_server.py's, one process, one connection per client),
one ``edgeexit serve`` per worker count, all up at once and measured in alternating order per round
so that noise hits them alike: requests/s, p50/p99 latency, and the CPU the server's processes used
(supervisor and workers). Every process it starts is stopped before it returns.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_server import MAX_BATCH, LoadGenerator, Server, build_repository, tail_name

KIND = "convfc"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="worker counts to compare, comma-separated")
    parser.add_argument("--clients", default="16,64", help="concurrent clients, comma-separated")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (figures: their median)")
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per point and round")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per point")
    parser.add_argument("--delay-us", type=int, default=1000, help="max queue delay of every server")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    clients = [int(n) for n in args.clients.split(",")]
    servers = [Server(f"{n} worker{'s' if n > 1 else ''}", MAX_BATCH, args.delay_us, workers=n) for n in counts]
    print(f"{os.cpu_count()} cores shared by the servers and the load generator; load average {os.getloadavg()[0]:.2f}")
    measured: dict[tuple[str, int], list[dict]] = {}
    loadgen: LoadGenerator | None = None
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        repo = build_repository(Path(tmp) / "repo", (KIND,), ("fp32",))
        try:
            for server in servers:
                server.launch(repo, threads=1)
            loadgen = LoadGenerator()
            for server in servers:
                server.wait_ready()
            for turn in range(args.rounds):
                for n in clients:
                    for server in servers if turn % 2 == 0 else servers[::-1]:
                        spec = {"mode": "throughput", "address": server.address, "metrics_url": server.metrics_url,
                                "server_pid": server.pid, "model": tail_name(KIND, "fp32"), "clients": n,
                                "warmup_s": args.warmup, "duration_s": args.duration}  # fmt: skip
                        found = loadgen.measure(spec, timeout=120 + args.warmup + args.duration)
                        measured.setdefault((server.label, n), []).append(found)
        finally:
            if loadgen is not None:
                loadgen.close()
            for server in servers:
                server.stop()
    report = {}
    print(f"{'server':<12} {'clients':>7} {'req/s':>8} {'x first':>8} {'p50 ms':>8} {'p99 ms':>8} {'server cores':>12}")
    for n in clients:
        base = None
        for server in servers:
            rows = measured[(server.label, n)]
            rps = float(np.median([r["rps"] for r in rows]))
            base = base or rps
            p50 = float(np.median([r["p50_ms"] for r in rows]))
            p99 = float(np.median([r["p99_ms"] for r in rows]))
            cores = float(np.median([r["server_cpu"] for r in rows]))
            errors = sum(sum(r["errors"].values()) for r in rows)
            report[f"{server.label}@{n}"] = {"rps": rps, "p50_ms": p50, "p99_ms": p99, "server_cores": cores,
                                             "errors": errors, "rounds": [r["rps"] for r in rows]}  # fmt: skip
            print(f"{server.label:<12} {n:>7} {rps:>8.0f} {rps / base:>8.2f} {p50:>8.2f} {p99:>8.2f} {cores:>12.2f}"
                  + (f"  ({errors} errors)" if errors else ""))  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(f"done at {time.strftime('%H:%M:%S')}; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
