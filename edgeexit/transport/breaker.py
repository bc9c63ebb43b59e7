"""A circuit breaker per server address: stop paying a deadline for a server that is down.

Without one, every request to a dead or hung server waits out its deadline before falling back,
so a dead server turns every offloaded request into ``deadline + local time``. The breaker opens
after ``failures_to_open`` consecutive failures; while open the address is skipped (the device
falls back at once); after ``cooldown_s`` it lets exactly one request through as a probe
(half-open): success closes it, failure opens it for another cool-down.

Thread-safe; the clock is injectable so the state machine is tested without sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(
        self, *, failures_to_open: int = 3, cooldown_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failures_to_open < 1:
            raise ValueError(f"failures_to_open is {failures_to_open}; expected at least 1")
        if cooldown_s < 0:
            raise ValueError(f"cooldown_s is {cooldown_s}; expected 0 or more seconds")
        self.failures_to_open = failures_to_open
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0  # consecutive
        self._opened_at: float | None = None  # None: closed
        self._probing = False  # half-open and the probe is in flight

    @property
    def state(self) -> State:
        """``open`` until the cool-down has passed, then ``half_open`` (the next allow() probes)."""
        with self._lock:
            if self._opened_at is None:
                return "closed"
            if self._probing or self._clock() - self._opened_at >= self.cooldown_s:
                return "half_open"
            return "open"

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when it would now)."""
        with self._lock:
            if self._opened_at is None:
                return 0.0
            return max(0.0, self.cooldown_s - (self._clock() - self._opened_at))

    def allow(self) -> bool:
        """May a request go to this address now? Half-open admits one probe at a time; the caller
        must then report its outcome with ``record_success`` or ``record_failure``."""
        with self._lock:
            if self._opened_at is None:
                return True
            if self._probing or self._clock() - self._opened_at < self.cooldown_s:
                return False
            self._probing = True
            return True

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._probing = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._probing or self._opened_at is not None or self._failures >= self.failures_to_open:
                self._opened_at = self._clock()  # (re)open: a failed probe waits another cool-down
            self._probing = False
