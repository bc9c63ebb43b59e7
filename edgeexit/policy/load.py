"""What a device knows about the tail server's load: the time it expects to take, and whether to back off.

Why: every device's policy reads its own link, but the server is shared. When a fleet's offloads
together exceed what the server can do, a device that only sees its link keeps offloading into a
queue that grows until deadlines pass, then computes locally anyway (it waited, then did the work).
``edgeexit serve`` reports on every reply and every probe the time a request arriving now would
spend in it (its expected wait for a batch to start, plus one batch: ``expected_server_ms``), and
answers at once (RESOURCE_EXHAUSTED, ``OffloadShed``) a request it could not finish by its
deadline. This class turns those into two numbers a policy prices:

- ``expected_ms``: an EWMA of the reported times (a half-life in reports, like the link's), used
  while it is fresh (a report within ``stale_after_s``), None after: an offload is then priced
  from the replies' measured queue again, as without load feedback. While fresh it replaces that
  measured queue (``costs.offload_now``): it looks ahead where the replies look back, and a
  device that stopped offloading because the server was busy hears from its probes that the
  server is free again, where its last reply would have kept it local until that went stale.
- ``backoff_s``: after a shed, offloading stops for a random time, drawn uniformly from
  [0.5, 1.5) x ``backoff_base_s`` x 2^(sheds in a row - 1), at most ``backoff_max_s``. Random
  so that devices shed at the same moment do not all return at the same moment (a fleet in
  lock-step oscillates between an idle and a saturated server); doubling so that a lasting
  overload pushes more of the fleet away for longer; one delivered offload resets the streak.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

from edgeexit.errors import UsageError

#: Reports of the server's expected time to a half-weight: a load change shows within a few replies.
HALF_LIFE_REPORTS = 3.0
#: A report older than this is not used: a device probing once a second keeps it fresh.
STALE_AFTER_S = 2.0
#: The first backoff's mean and the longest one.
BACKOFF_BASE_S = 0.25
BACKOFF_MAX_S = 8.0


class ServerLoad:
    """The server's expected time (``expected_ms``) and this device's backoff (``backoff_s``); see the module."""

    def __init__(
        self,
        *,
        half_life_reports: float = HALF_LIFE_REPORTS,
        stale_after_s: float = STALE_AFTER_S,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if half_life_reports <= 0 or stale_after_s <= 0:
            raise UsageError("ServerLoad needs half_life_reports > 0 and stale_after_s > 0")
        if not 0 < backoff_base_s <= backoff_max_s:
            raise UsageError(
                f"ServerLoad needs 0 < backoff_base_s <= backoff_max_s, got {backoff_base_s}, {backoff_max_s}"
            )
        self._alpha = 1.0 - 0.5 ** (1.0 / half_life_reports)
        self.stale_after_s = stale_after_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._rng = random.Random(seed)
        self._clock = clock
        self._expected_ms: float | None = None
        self._at = -math.inf
        self._until = -math.inf  # backing off until then
        self.streak = 0  # sheds since the last delivered offload
        self.sheds = 0

    def observe_expected(self, expected_ms: float) -> None:
        """A reply's or a probe's expected time (ms); ignored when not a finite number >= 0."""
        if not math.isfinite(expected_ms) or expected_ms < 0:
            return
        now = self._clock()
        if self._expected_ms is None or now - self._at > self.stale_after_s:
            self._expected_ms = expected_ms  # nothing fresh to average with
        else:
            self._expected_ms += self._alpha * (expected_ms - self._expected_ms)
        self._at = now

    def observe_delivered(self) -> None:
        """An offload was answered: the server had room, so the next shed starts a new streak."""
        self.streak = 0

    def observe_shed(self, expected_ms: float | None = None) -> float:
        """The server shed a request (with its expected time, when it said): back off for a random
        time; returns that time in seconds."""
        if expected_ms is not None:
            self.observe_expected(expected_ms)
        self.sheds += 1
        self.streak += 1
        mean = min(self.backoff_max_s, self.backoff_base_s * 2.0 ** (self.streak - 1))
        duration = min(self.backoff_max_s, mean * (0.5 + self._rng.random()))
        self._until = max(self._until, self._clock() + duration)
        return duration

    @property
    def expected_ms(self) -> float | None:
        """The EWMA of the reports while fresh, else None (see the module docstring)."""
        if self._expected_ms is None or self._clock() - self._at > self.stale_after_s:
            return None
        return self._expected_ms

    @property
    def backoff_s(self) -> float:
        """Seconds of backoff left (0: offloading is allowed)."""
        return max(0.0, self._until - self._clock())
