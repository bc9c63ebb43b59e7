"""The tail client's failures by kind, against the real tail server on loopback: a server that is
gone is ``ServerUnavailable``, one that refuses the request is ``OffloadRejected`` with its status,
no reply in time is ``OffloadTimeout``, and a reply that does not decode is a plain ``OffloadError``.
Every kind is still an ``OffloadError`` (the device catches that one class and finishes locally)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from edgeexit.codecs import Encoded, create_codec
from edgeexit.device.tails import select_tail
from edgeexit.errors import OffloadError, OffloadRejected, OffloadTimeout, ServerUnavailable
from edgeexit.runtime import Engine
from edgeexit.server import ServerOptions, TailServer
from edgeexit.transport.client import TailClient
from edgeexit.transport.link_emulation import EmulatedLink

from .conftest import Behaviour, logits_reply


@pytest.fixture(scope="module")
def boundary(digits_package: Path, digits) -> tuple[str, Encoded, str]:
    """(tail model, an fp32 boundary-0 payload of 4 digits, package_id): a request the server serves."""
    engine = Engine(digits_package, cache_dir=None)
    pending = engine.run_batch_until(np.asarray(digits.x[:4], np.float32), 0, early_exit=False).pending
    tail = select_tail(engine.manifest, 0, "fp32")
    return tail.model, create_codec("fp32").encode(pending.hidden), engine.manifest.package_id


@pytest.fixture(scope="module")
def server(digits_package: Path) -> Iterator[TailServer]:
    with TailServer([digits_package], ServerOptions(listen="127.0.0.1:0")) as running:
        yield running


def test_the_request_is_served(server: TailServer, boundary) -> None:
    """The baseline the failures below differ from by one thing each."""
    model, encoded, package_id = boundary
    with TailClient(server.address, timeout_s=30) as client:
        assert client.infer(model, encoded, package_id=package_id).logits.shape[0] == 4


def test_a_stopped_server_is_unavailable_and_then_its_circuit_opens(digits_package: Path, boundary) -> None:
    model, encoded, package_id = boundary
    with TailServer([digits_package], ServerOptions(listen="127.0.0.1:0")) as gone:
        address = gone.address
    with TailClient(address, timeout_s=5, failures_to_open=1, cooldown_s=60) as client:
        with pytest.raises(ServerUnavailable, match="UNAVAILABLE") as refused:
            client.infer(model, encoded, package_id=package_id)
        assert refused.value.attempts == 1
        assert refused.value.bytes_sent > 0
        with pytest.raises(ServerUnavailable, match="circuit open") as skipped:
            client.infer(model, encoded, package_id=package_id)
        assert skipped.value.attempts == 0  # the breaker answered: nothing was sent
        assert skipped.value.bytes_sent == 0


def test_another_packages_tensor_is_rejected_with_failed_precondition(server: TailServer, boundary) -> None:
    model, encoded, _ = boundary
    with TailClient(server.address, timeout_s=30) as client, pytest.raises(OffloadRejected) as rejected:
        client.infer(model, encoded, package_id="0" * 32)
    assert rejected.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "FAILED_PRECONDITION" in str(rejected.value)
    assert "serve this package" in str(rejected.value)  # the hint
    assert rejected.value.attempts == 1


def test_a_deadline_shorter_than_the_emulated_link_times_out(server: TailServer, boundary) -> None:
    model, encoded, package_id = boundary
    link = EmulatedLink("1mbit,500ms")  # the real sleep is the 50 ms budget, not the link's delay
    with TailClient(server.address, timeout_s=0.05, transport=link) as client, pytest.raises(OffloadTimeout) as late:
        client.infer(model, encoded, package_id=package_id)
    assert "DEADLINE_EXCEEDED" in str(late.value)
    assert "emulated link" in str(late.value)
    assert late.value.attempts == 1
    assert link.requests == 1


def test_a_server_that_answers_too_late_times_out(stand_in, boundary) -> None:
    model, encoded, package_id = boundary
    slow = stand_in(Behaviour(delay_s=1.0))
    with TailClient(slow.address, timeout_s=0.1) as client, pytest.raises(OffloadTimeout, match="DEADLINE_EXCEEDED"):
        client.infer(model, encoded, package_id=package_id)


def test_a_reply_that_does_not_decode_is_a_plain_offload_error(stand_in, boundary) -> None:
    model, encoded, package_id = boundary
    broken = stand_in(Behaviour(reply=lambda request: logits_reply(np.zeros((1, 3), np.float32))))
    with TailClient(broken.address, timeout_s=5) as client, pytest.raises(OffloadError, match="shape") as caught:
        client.infer(model, encoded, package_id=package_id)
    assert type(caught.value) is OffloadError


def test_a_rejection_says_more_than_a_dead_server(stand_in, boundary) -> None:
    """With one address down and the other refusing the request, the request is what is wrong."""
    model, encoded, package_id = boundary
    gone = stand_in()
    gone.stop()
    refusing = stand_in(Behaviour(status=grpc.StatusCode.INVALID_ARGUMENT))
    client = TailClient([gone.address, refusing.address], timeout_s=5)
    with client, pytest.raises(OffloadRejected) as caught:
        client.infer(model, encoded, package_id=package_id)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.attempts == 2
