"""The circuit breaker's state machine on an injected clock: no sleeping, no server."""

from __future__ import annotations

import pytest

from edgeexit.transport.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_closed_until_n_consecutive_failures(clock: Clock) -> None:
    breaker = CircuitBreaker(failures_to_open=3, cooldown_s=10, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_success()  # a success resets the count: failures must be consecutive
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state == "closed"
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    assert breaker.consecutive_failures == 3
    assert not breaker.allow()


def test_half_open_lets_one_probe_through_after_the_cool_down(clock: Clock) -> None:
    breaker = CircuitBreaker(failures_to_open=1, cooldown_s=10, clock=clock)
    breaker.record_failure()
    assert breaker.state == "open"
    clock.now += 9.5
    assert not breaker.allow()
    assert breaker.retry_in() == pytest.approx(0.5)
    clock.now += 0.5
    assert breaker.state == "half_open"
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    assert breaker.state == "half_open"
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.allow()
    assert breaker.allow()


def test_a_failed_probe_opens_it_for_another_cool_down(clock: Clock) -> None:
    breaker = CircuitBreaker(failures_to_open=2, cooldown_s=5, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.now += 5
    assert breaker.allow()
    breaker.record_failure()  # one failure is enough while probing
    assert breaker.state == "open"
    assert breaker.retry_in() == pytest.approx(5)
    assert not breaker.allow()
    clock.now += 5
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.consecutive_failures == 0


def test_zero_cool_down_probes_at_once(clock: Clock) -> None:
    breaker = CircuitBreaker(failures_to_open=1, cooldown_s=0, clock=clock)
    breaker.record_failure()
    assert breaker.allow()
    assert not breaker.allow()


@pytest.mark.parametrize(
    ("kwargs", "fragment"), [({"failures_to_open": 0}, "at least 1"), ({"cooldown_s": -1}, "0 or more")]
)
def test_bad_settings_are_refused(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        CircuitBreaker(**kwargs)
