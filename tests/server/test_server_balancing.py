"""One name, several servers: the device client's channel balances round-robin over the addresses a
target resolves to and fails over when one goes, as a list of addresses does (gRPC's round_robin and
one retry of UNAVAILABLE, ``edgeexit.transport.client.SERVICE_CONFIG``). A DNS name with several
records resolves into the same list as the ``ipv4:`` target used here, which needs no DNS server
(and no change to this machine's /etc/hosts)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgeexit.codecs import create_codec
from edgeexit.server import TailServer
from edgeexit.transport.client import TailClient


def answered(server: TailServer, name: str) -> float:
    found = server.metrics.registry.get_sample_value(
        "edgeexit_requests_total", {"model": name, "version": "1", "code": "OK"}
    )
    return found or 0.0


def test_a_name_with_several_addresses_balances_and_fails_over(
    start_server: Callable[..., TailServer], wire, hidden: np.ndarray
) -> None:
    first, second = start_server(), start_server()
    name = wire.tail("fp32")
    payload = create_codec("fp32").encode(hidden[:1])
    target = f"ipv4:127.0.0.1:{first.port},127.0.0.1:{second.port}"
    with TailClient(target, timeout_s=30) as client:
        for _ in range(100):  # round_robin picks among the backends connected: give the second time to be
            client.infer(name, payload, package_id=wire.package_id, classes=wire.classes)
        assert answered(first, name) > 0
        assert answered(second, name) > 0  # both backends of the one name took calls
        assert answered(first, name) + answered(second, name) == 100
        first.stop(grace=0)
        before = answered(second, name)
        for _ in range(10):  # none falls back: every call reaches the backend still up
            reply = client.infer(name, payload, package_id=wire.package_id, classes=wire.classes)
            assert reply.server == target
        assert answered(second, name) == before + 10
        assert client.states() == {target: "closed"}
