"""``edgeexit serve`` of two source trees side by side: the same tail, the same load, alternating rounds.

    git worktree add /tmp/old <ref>
    python tools/ab_serve.py /tmp/old . [--rounds 6] [--clients 64] [--duration 3]

For a change to the server that must not slow it: one ``edgeexit serve`` per tree (each process
imports that tree's ``edgeexit``, checked), both up at once on loopback, serving bench_server.py's
``convfc`` tail batched (max batch 64, 1 ms delay, one ONNX Runtime thread); bench_server.py's load
generator measures them in alternating order each round. Printed per tree: median requests/s,
server CPU per request and p99, and B / A.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_server import MAX_BATCH, METRICS, LoadGenerator, build_repository, tail_name

from edgeexit.procs import SERVE_READY_PREFIX, ChildProcess


def launch(tree: Path, repo: Path) -> tuple[ChildProcess, str, str]:
    root = str(tree.resolve())
    code = (
        f"import sys; sys.path.insert(0, {root!r}); import edgeexit; "
        f"assert edgeexit.__file__.startswith({root!r}), edgeexit.__file__; "
        "from edgeexit.cli import main; sys.argv = ['edgeexit', *sys.argv[1:]]; main()"
    )
    command = [sys.executable, "-c", code, "serve", str(repo), "--listen", "127.0.0.1:0",
               "--max-batch-size", str(MAX_BATCH), "--max-queue-delay-us", "1000", "--threads", "1",
               "--metrics-port", "0", "--grace-s", "2"]  # fmt: skip
    child = ChildProcess(command, env={**os.environ, "COLUMNS": "200"}, name=f"edgeexit serve of {root}")
    address = child.wait_ready(SERVE_READY_PREFIX)
    url = next(f"http://{m['address']}/metrics" for line in child.lines if (m := METRICS.search(line)))
    return child, address, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tree_a", type=Path)
    parser.add_argument("tree_b", type=Path)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args()
    trees = {"A": args.tree_a, "B": args.tree_b}
    found: dict[str, list[dict]] = {label: [] for label in trees}
    with tempfile.TemporaryDirectory(prefix="ab-serve-") as tmp:
        repo = build_repository(Path(tmp) / "repo", ("convfc",), ("fp32",))
        servers = {}
        loadgen = None
        try:
            for label, tree in trees.items():
                servers[label] = launch(tree, repo)
            loadgen = LoadGenerator()
            for turn in range(args.rounds):
                for label in list(trees) if turn % 2 == 0 else list(trees)[::-1]:
                    child, address, url = servers[label]
                    spec = {"mode": "throughput", "address": address, "metrics_url": url, "server_pid": child.pid,
                            "model": tail_name("convfc", "fp32"), "clients": args.clients, "warmup_s": 0.5,
                            "duration_s": args.duration}  # fmt: skip
                    found[label].append(loadgen.measure(spec, timeout=200))
        finally:
            if loadgen is not None:
                loadgen.close()
            for child, _, _ in servers.values():
                child.stop()
    medians = {}
    for label, rows in found.items():
        rps = float(np.median([r["rps"] for r in rows]))
        cpu_ms = float(np.median([r["server_cpu"] / r["rps"] * 1e3 for r in rows]))
        p99 = float(np.median([r["p99_ms"] for r in rows]))
        medians[label] = rps
        rounds = ", ".join(f"{r['rps']:.0f}" for r in rows)
        print(f"{label} ({trees[label]}): {rps:.0f} req/s (rounds {rounds}); {cpu_ms:.3f} ms of server CPU per "
              f"request; p99 {p99:.1f} ms")  # fmt: skip
    print(f"B / A: {medians['B'] / medians['A']:.3f}")


if __name__ == "__main__":
    main()
