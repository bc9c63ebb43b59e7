"""What a device knows about the tail server's load: its expected wait, and whether to back off.

Why: every device's policy reads its own link, but the server is shared. When a fleet's offloads
together exceed what the server can do, a device that only sees its link keeps offloading into a
queue that grows until deadlines pass, then computes locally anyway (it waited, then did the work).
``edgeexit serve`` reports its expected wait (queue x recent time per batch) on every reply and
every probe, and answers at once (RESOURCE_EXHAUSTED, ``OffloadShed``) a request it could not
finish by its deadline. This class turns those into two numbers a policy prices:

- ``wait_ms``: an EWMA of the reported waits (half-life in reports, like the link's), which ages
  like the link estimate but faster: after ``stale_after_s`` without a report it decays toward
  0 (an idle server has no wait), halving every ``decay_half_life_s``. A device that stopped
  offloading because the server was busy thus comes back once the reports stop, and the next
  reply or probe corrects it at once.
- ``backoff_s``: after a shed, offloading stops for a random time, drawn uniformly from
  [0.5, 1.5) x ``base_s`` x 2^(sheds in a row - 1), at most ``max_s``. Random so that devices
  shed at the same moment do not all return at the same moment (a fleet in lock-step oscillates
  between an idle and a saturated server); doubling so that a lasting overload pushes more of
  the fleet away for longer; one delivered offload resets the streak.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

from edgeexit.errors import UsageError

#: Reports of the server's wait to a half-weight: a load change shows within a few replies.
WAIT_HALF_LIFE_REPORTS = 3.0
#: A report older than this starts to fade toward no wait, halving every ``DECAY_HALF_LIFE_S``.
WAIT_STALE_AFTER_S = 2.0
WAIT_DECAY_HALF_LIFE_S = 2.0
#: The first backoff's mean and the longest one.
BACKOFF_BASE_S = 0.25
BACKOFF_MAX_S = 8.0


class ServerLoad:
    """The server's expected wait (``wait_ms``) and this device's backoff (``backoff_s``); see the module."""

    def __init__(
        self,
        *,
        half_life_reports: float = WAIT_HALF_LIFE_REPORTS,
        stale_after_s: float = WAIT_STALE_AFTER_S,
        decay_half_life_s: float = WAIT_DECAY_HALF_LIFE_S,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if half_life_reports <= 0 or stale_after_s < 0 or decay_half_life_s <= 0:
            raise UsageError("ServerLoad needs half_life_reports > 0, stale_after_s >= 0 and decay_half_life_s > 0")
        if not 0 < backoff_base_s <= backoff_max_s:
            raise UsageError(
                f"ServerLoad needs 0 < backoff_base_s <= backoff_max_s, got {backoff_base_s}, {backoff_max_s}"
            )
        self._alpha = 1.0 - 0.5 ** (1.0 / half_life_reports)
        self.stale_after_s = stale_after_s
        self.decay_half_life_s = decay_half_life_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._rng = random.Random(seed)
        self._clock = clock
        self._wait_ms: float | None = None
        self._at = -math.inf
        self._until = -math.inf  # backing off until then
        self.streak = 0  # sheds since the last delivered offload
        self.sheds = 0

    def observe_wait(self, wait_ms: float) -> None:
        """A reply's or a probe's expected wait (ms); ignored when not a finite number >= 0."""
        if not math.isfinite(wait_ms) or wait_ms < 0:
            return
        now = self._clock()
        current = self._current(now)
        fresh = self._freshness(now)
        weight = max(self._alpha, 1.0 - fresh)  # a faded estimate yields to the new report
        self._wait_ms = wait_ms if self._wait_ms is None else (1.0 - weight) * current + weight * wait_ms
        self._at = now

    def observe_delivered(self) -> None:
        """An offload was answered: the server had room, so the next shed starts a new streak."""
        self.streak = 0

    def observe_shed(self, wait_ms: float | None = None) -> float:
        """The server shed a request (with its expected wait, when it said): back off for a random
        time; returns that time in seconds."""
        if wait_ms is not None:
            self.observe_wait(wait_ms)
        self.sheds += 1
        self.streak += 1
        mean = min(self.backoff_max_s, self.backoff_base_s * 2.0 ** (self.streak - 1))
        duration = min(self.backoff_max_s, mean * (0.5 + self._rng.random()))
        self._until = max(self._until, self._clock() + duration)
        return duration

    @property
    def wait_ms(self) -> float:
        return self._current(self._clock())

    @property
    def backoff_s(self) -> float:
        """Seconds of backoff left (0: offloading is allowed)."""
        return max(0.0, self._until - self._clock())

    def _freshness(self, now: float) -> float:
        if self._wait_ms is None:
            return 0.0
        overdue = now - self._at - self.stale_after_s
        return 1.0 if overdue <= 0 else 0.5 ** (overdue / self.decay_half_life_s)

    def _current(self, now: float) -> float:
        if self._wait_ms is None:
            return 0.0
        return self._wait_ms * self._freshness(now)
