"""``Drain``: how a server refuses new calls with a reason before grpc's own shutdown can cancel them.

Why not just ``grpc.aio.Server.stop(grace)``: once gRPC core's shutdown is called, a call whose
HTTP/2 stream arrives before the client has read the GOAWAY, or one received but not yet handed
to a handler, is dropped as a "zombie" (``Server::CallData::KillZombie`` in grpc's server.cc):
its client sees a bare CANCELLED, which it cannot tell from its own cancel, so it cannot know
whether retrying is safe. Measured on ``edgeexit serve`` with 32 closed-loop clients and SIGTERM:
10 of 32 in-flight calls ended CANCELLED that way.

So a server drains in the application first: from ``begin()`` on, every new call is answered
UNAVAILABLE with the reason (``enter`` raises it) while the calls already running finish; ``settle``
then waits until none runs and none has arrived for ``quiet_s``, so that grpc's shutdown
meets an idle server whose clients were told to go elsewhere. A client that keeps sending
anyway (no backoff, no failover) can still meet the instant of shutdown after ``grace``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from edgeexit.kserve.status import unavailable

#: How long no new call must arrive before grpc's shutdown is called: long enough for a client
#: that was just refused to read the answer and stop, short against any grace period.
QUIET_S = 0.2


class Drain:
    """In-flight calls, the last arrival, and whether the server is draining (see the module docstring)."""

    def __init__(self, who: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.who = who
        self.draining = False
        self.in_flight = 0
        self.reason = ""
        self._clock = clock
        self._last_arrival = -math.inf
        self._idle = asyncio.Event()
        self._idle.set()

    def begin(self, reason: str) -> None:
        """From now on, ``enter`` refuses new calls with UNAVAILABLE saying ``reason``."""
        self.draining = True
        self.reason = reason

    def arrived(self) -> None:
        """A call reached a handler (any call: probes count, they would meet the shutdown too)."""
        self._last_arrival = self._clock()

    def enter(self) -> None:
        """A call starts; raises the refusal while draining. Pair with ``leave`` (try/finally)."""
        self._last_arrival = self._clock()
        if self.draining:
            raise unavailable(f"{self.who} is draining ({self.reason}); retry on another server or later")
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def settle(self, timeout_s: float, quiet_s: float = QUIET_S) -> bool:
        """Until no call runs and none arrived for ``quiet_s``, at most ``timeout_s``: True when it settled."""
        deadline = self._clock() + max(timeout_s, 0.0)
        while True:
            now = self._clock()
            if self.in_flight:  # the running calls finish first
                try:
                    await asyncio.wait_for(self._idle.wait(), timeout=max(deadline - now, 0.0))
                except asyncio.TimeoutError:
                    return False
                continue
            quiet_at = self._last_arrival + quiet_s
            if now >= quiet_at:
                return True
            if now >= deadline:
                return False
            await asyncio.sleep(min(quiet_at, deadline) - now)
