"""SIGTERM under load: what 32 closed-loop clients of one ``edgeexit serve`` get while it drains.

    python tools/drain_check.py [--clients 32] [--seconds 3] [--rounds 3]

Each client sends batch-1 requests to bench_server.py's ``conv`` tail until its first failure; after
``--seconds`` the server gets SIGTERM. Printed per round: the status codes the clients ended with
and their messages. docs/offload.md promises OK answers and UNAVAILABLE with a reason, never a bare
CANCELLED (which a client cannot tell from its own cancel, so it cannot know a retry is safe).
"""

from __future__ import annotations

import argparse
import collections
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
from bench_server import PACKAGE_ID, build_repository, sample_hidden, tail_name

from edgeexit.codecs import create_codec
from edgeexit.procs import SERVE_READY_PREFIX, ChildProcess
from edgeexit.transport.generated import grpc_service_pb2_grpc as pb_grpc
from edgeexit.transport.wire import build_request


def one_round(repo: Path, clients: int, seconds: float) -> tuple[collections.Counter, collections.Counter]:
    command = [sys.executable, "-m", "edgeexit", "serve", str(repo), "--listen", "127.0.0.1:0", "--grace-s", "5",
               "--max-batch-size", "8"]  # fmt: skip
    with ChildProcess(command, name="edgeexit serve") as child:
        address = child.wait_ready(SERVE_READY_PREFIX)
        request = build_request(tail_name("conv", "fp32"), create_codec("fp32").encode(sample_hidden()[None]),
                                package_id=PACKAGE_ID)  # fmt: skip
        codes: collections.Counter = collections.Counter()
        reasons: collections.Counter = collections.Counter()
        lock = threading.Lock()

        def client() -> None:
            with grpc.insecure_channel(address) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                while True:
                    try:
                        stub.ModelInfer(request, timeout=30)
                    except grpc.RpcError as err:
                        with lock:
                            codes[err.code().name] += 1
                            reasons[(err.code().name, (err.details() or "")[:70])] += 1
                        return
                    with lock:
                        codes["OK"] += 1

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        child.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=60)
        child.wait(timeout=60)
    return codes, reasons


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="drain-check-") as tmp:
        repo = build_repository(Path(tmp) / "repo", ("conv",), ("fp32",))
        for turn in range(args.rounds):
            codes, reasons = one_round(repo, args.clients, args.seconds)
            ended = {code: n for code, n in codes.items() if code != "OK"}
            print(f"round {turn + 1}: {codes['OK']} answered; the {args.clients} clients ended with {ended}")
            for (code, reason), n in sorted(reasons.items()):
                print(f"    {n:3d} x {code}: {reason}")


if __name__ == "__main__":
    main()
