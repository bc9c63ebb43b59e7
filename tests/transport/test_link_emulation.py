"""The emulated link: spec parsing, timing math, queueing, seeded jitter and loss, and the client hook
(a fake clock and sleep, so nothing here waits)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeexit.codecs import create_codec
from edgeexit.errors import EdgeExitError, OffloadError
from edgeexit.transport.client import TailClient
from edgeexit.transport.link_emulation import EmulatedLink, LinkSpec


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_parse_full_spec() -> None:
    spec = LinkSpec.parse("20mbit,10ms,jitter=2ms,loss=0.01,down=50mbit")
    assert spec == LinkSpec(20e6, 0.01, jitter_s=0.002, loss=0.01, downlink_bps=50e6)
    assert LinkSpec.parse(str(spec)) == spec
    assert LinkSpec.parse("500kbit, 0.1s, loss=2%") == LinkSpec(500e3, 0.1, loss=0.02)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("20mbit", "expected BANDWIDTH,RTT"),
        ("20,10ms", "not a rate"),
        ("20mbit,10", "not a duration"),
        ("0mbit,10ms", "not above 0"),
        ("20mbit,10ms,loss=1.5", "[0, 1)"),
        ("20mbit,10ms,loss=abc", "not a fraction"),
        ("20mbit,10ms,color=red", "unknown link option 'color'"),
        ("20mbit,10ms,jitter", "KEY=VALUE"),
    ],
)
def test_bad_specs_say_what_was_expected(text: str, needle: str) -> None:
    with pytest.raises(EdgeExitError) as err:
        LinkSpec.parse(text)
    assert needle in str(err.value)
    assert "expected BANDWIDTH,RTT" in str(err.value)


def test_timing_math_on_an_idle_link() -> None:
    t = FakeTime()
    link = EmulatedLink("1mbit,50ms,down=8mbit", clock=t.clock, sleep=t.sleep)
    transfer = link.transmit(12_500)  # 100 kbit at 1 Mbit/s = 100 ms
    assert transfer.queue_s == 0
    assert transfer.upload_s == pytest.approx(0.1)
    assert transfer.rtt_s == pytest.approx(0.05)
    assert transfer.delay_s == pytest.approx(0.15)
    assert link.download_s(1000) == pytest.approx(0.001)
    assert link.spec.transfer_s(12_500, 1000) == pytest.approx(0.151)


def test_back_to_back_requests_queue_behind_each_other() -> None:
    t = FakeTime()
    link = EmulatedLink("1mbit,10ms", clock=t.clock, sleep=t.sleep)
    first = link.transmit(12_500)  # holds the uplink for 100 ms
    second = link.transmit(12_500)  # same instant: waits for it
    assert first.queue_s == 0
    assert second.queue_s == pytest.approx(0.1)
    t.now += 0.15  # 50 ms after the second started: it still holds the link until +0.2
    third = link.transmit(0)
    assert third.queue_s == pytest.approx(0.05)
    t.now += 1.0  # idle again
    assert link.transmit(100).queue_s == 0


def test_jitter_and_loss_are_deterministic_under_a_seed() -> None:
    def run(seed: int) -> list[tuple[float, bool]]:
        t = FakeTime()
        link = EmulatedLink("10mbit,20ms,jitter=5ms,loss=0.2", seed, clock=t.clock, sleep=t.sleep)
        out = []
        for _ in range(50):
            transfer = link.transmit(1000)
            out.append((transfer.rtt_s, transfer.lost))
            t.now += 1.0
        return out

    assert run(7) == run(7)
    assert run(7) != run(8)
    rtts = [r for r, _ in run(7)]
    assert all(0.015 <= r <= 0.025 for r in rtts)
    assert len(set(rtts)) > 40


def test_loss_rate_matches_the_spec() -> None:
    t = FakeTime()
    link = EmulatedLink("10mbit,1ms,loss=0.1", 3, clock=t.clock, sleep=t.sleep)
    lost = sum(link.transmit(10).lost for _ in range(20_000))
    assert lost / 20_000 == pytest.approx(0.1, abs=0.01)
    link.reset()
    assert link.requests == 0


def test_jitter_never_makes_rtt_negative() -> None:
    link = EmulatedLink("10mbit,1ms,jitter=50ms", 1, clock=FakeTime().clock)
    assert min(link.transmit(0).rtt_s for _ in range(500)) >= 0.0


# ---------------------------------------------------------------- as the client's transport


@pytest.fixture
def encoded():
    return create_codec("fp32").encode(np.ones((2, 4, 4, 4), np.float32))


def test_client_sleeps_the_emulated_delay_and_answers(stand_in, encoded) -> None:
    server = stand_in()
    t = FakeTime()
    link = EmulatedLink("1mbit,40ms", clock=t.clock, sleep=t.sleep)
    with TailClient(server.address, timeout_s=5.0, transport=link) as client:
        reply = client.infer("m__from_0", encoded, package_id="p")
    assert reply.logits.shape[0] == 2
    assert len(t.slept) == 1
    assert t.slept[0] == pytest.approx(reply.bytes_sent * 8 / 1e6 + 0.04)


def test_a_lost_request_fails_like_a_timeout(stand_in, encoded) -> None:
    server = stand_in()
    t = FakeTime()
    link = EmulatedLink("1mbit,40ms,loss=0.999999", clock=t.clock, sleep=t.sleep)
    with (
        TailClient(server.address, timeout_s=0.5, transport=link, clock=t.clock) as client,
        pytest.raises(OffloadError) as err,
    ):
        client.infer("m__from_0", encoded, package_id="p")
    assert "DEADLINE_EXCEEDED" in str(err.value)
    assert "lost" in str(err.value)
    assert sum(t.slept) == pytest.approx(0.5)  # the attempt's whole budget
    assert not server.behaviour.seen  # it never reached the server


def test_a_delay_past_the_deadline_fails_without_calling(stand_in, encoded) -> None:
    server = stand_in()
    t = FakeTime()
    link = EmulatedLink("10kbit,40ms", clock=t.clock, sleep=t.sleep)
    client = TailClient(server.address, timeout_s=0.2, transport=link, clock=t.clock)
    with client, pytest.raises(OffloadError, match="emulated link"):
        client.infer("m__from_0", encoded, package_id="p")
    assert not server.behaviour.seen
