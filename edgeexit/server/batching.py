"""Dynamic batching for one model: concurrent requests become one session run.

Triton's rule: a batch starts when it is full (``max_batch_size`` samples) or when its oldest
request has waited ``max_queue_delay``; whatever queued while the previous batch ran joins the
next one. Each of the model's ``instances`` (config.pbtxt ``instance_group`` count) is one worker
coroutine that forms a batch and runs it in a thread of its own, so the event loop keeps
accepting requests while ONNX Runtime computes (it releases the GIL).

The queue is bounded in requests: at ``max_queue`` waiting requests the next one is answered
RESOURCE_EXHAUSTED at once, so an overloaded server sheds load instead of growing its memory
and every client's latency. It is also bounded in time: ``expected_wait_s`` is how long a request
arriving now would wait for its batch to start (the full batches queued ahead of it, plus half of
each batch running, times the recent time per batch, over the instances), ``expected_server_s``
that plus its own batch: the time it would spend here. A request whose deadline would pass before
then is answered RESOURCE_EXHAUSTED at once with the expected time, instead of being computed for
a caller that will have given up: the caller finishes it locally without waiting (a device falls back), and
the server spends its time on requests that can still make it. A request whose caller gave up
(deadline, cancel) leaves the queue and is never computed. ``close`` stops taking requests and
runs what is queued without waiting for the delay (``hurry`` does the latter alone, while the
server drains): graceful shutdown finishes in-flight requests promptly.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import numpy as np

from edgeexit.errors import RequestError
from edgeexit.transport.wire import EXPECTED_SERVER_KEY

#: Weight of the newest batch in the time per batch: a load change shows within a few batches.
BATCH_TIME_ALPHA = 0.2

#: One session run: a batch of inputs → outputs by name, every array batch-first.
RunFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True, eq=False)
class BatchResult:
    """One request's share of a batch, and the times the response reports."""

    outputs: dict[str, np.ndarray]
    queue_ms: float
    compute_ms: float
    batch_size: int


@dataclass(frozen=True)
class BatchStats:
    """What one batch did, for metrics: its samples, each request's wait, the run's time."""

    model: str
    version: str
    samples: int
    queue_s: tuple[float, ...]
    compute_s: float


@dataclass(eq=False)
class _Pending:
    feeds: dict[str, np.ndarray]
    samples: int
    future: asyncio.Future[BatchResult]
    enqueued: float = field(default_factory=time.perf_counter)
    deadline: float | None = None  # perf_counter time its caller gives up (None: no deadline)


class Batcher:
    """Queue and batch the requests of one (model, version); see the module docstring."""

    def __init__(
        self,
        name: str,
        run: RunFn,
        *,
        version: str = "",
        max_batch_size: int,
        max_queue_delay_us: int,
        max_queue: int,
        instances: int = 1,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_depth: Callable[[str, str, int], None] | None = None,
        on_shed: Callable[[str, str, str], None] | None = None,
        shed_late: bool = True,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or instances < 1:
            raise ValueError("max_batch_size, max_queue and instances must be >= 1")
        self.name = name
        self.version = version
        self.run = run  # an attribute, so a test can wrap the session run
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_us / 1e6
        self.max_queue = max_queue
        self.instances = instances
        self._on_batch = on_batch or (lambda stats: None)
        self._on_depth = on_depth or (lambda name, version, depth: None)
        self._on_shed = on_shed or (lambda name, version, reason: None)
        self.shed_late = shed_late  # answer at once a request its deadline would pass in the queue
        self._batch_s: float | None = None  # EWMA of one batch's run; None until one ran
        self._running = 0  # batches computing now
        self._queue: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._hurry = False  # draining: run what comes without waiting for company
        self._workers: list[asyncio.Task[None]] = []
        self._executor = ThreadPoolExecutor(max_workers=instances, thread_name_prefix=f"batch-{name}")

    @property
    def depth(self) -> int:
        """Requests waiting for a batch (not those computing)."""
        return len(self._queue)

    @property
    def batch_s(self) -> float:
        """Recent time of one batch's run (0 until one ran: nothing known, nothing predicted)."""
        return self._batch_s or 0.0

    @property
    def expected_wait_s(self) -> float:
        """How long a request arriving now would wait for its batch to start: the full batches queued
        ahead of it (it joins the last, partial one) and half of each running batch, at the recent time
        per batch, shared by the instances (see the module docstring)."""
        if self._batch_s is None:
            return 0.0
        ahead = self._queued_samples() // self.max_batch_size + 0.5 * self._running
        return ahead * self._batch_s / self.instances

    @property
    def expected_server_s(self) -> float:
        """How long a request arriving now would take here: ``expected_wait_s`` and its own batch (0
        until a batch ran)."""
        return self.expected_wait_s + self.batch_s

    def start(self) -> None:
        """Start the workers (call from the event loop that will submit)."""
        self._workers = [
            asyncio.create_task(self._work(), name=f"batcher-{self.name}-{i}") for i in range(self.instances)
        ]

    async def submit(self, feeds: dict[str, np.ndarray], samples: int, time_left_s: float | None = None) -> BatchResult:
        """Queue one validated request and wait for its share of a batch. ``time_left_s``: until the
        caller's deadline (None: it set none); a request that cannot finish by then is shed."""
        if self._closing:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on another server")
        if len(self._queue) >= self.max_queue:
            self._on_shed(self.name, self.version, "queue_full")
            raise self._shed(
                f"model {self.name!r} has {len(self._queue)} requests queued, its limit (edgeexit serve --max-queue)"
            )
        known = self._batch_s is not None  # nothing is predicted before a batch ran
        if self.shed_late and known and time_left_s is not None and self.expected_server_s > time_left_s:
            self._on_shed(self.name, self.version, "deadline")  # it would finish after its caller gave up
            raise self._shed(
                f"model {self.name!r} would start this request in ~{self.expected_wait_s * 1e3:.1f} ms and "
                f"finish it in ~{self.expected_server_s * 1e3:.1f} ms, after its deadline "
                f"({time_left_s * 1e3:.1f} ms left)"
            )
        pending = _Pending(feeds, samples, asyncio.get_running_loop().create_future())
        if time_left_s is not None:
            pending.deadline = pending.enqueued + time_left_s
        self._queue.append(pending)
        self._depth_changed()
        self._wake.set()
        try:
            return await pending.future
        except asyncio.CancelledError:  # the caller gave up: do not compute for it
            if pending in self._queue:
                self._queue.remove(pending)
                self._depth_changed()
            raise

    def hurry(self) -> None:
        """From now on run every batch at once, without its batching delay (a draining server still
        takes the requests of calls already running, and must not keep them waiting)."""
        self._hurry = True
        self._wake.set()

    def _shed(self, why: str) -> RequestError:
        expected_ms = self.expected_server_s * 1e3
        return RequestError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{why}; expected time here {expected_ms:.1f} ms: shed at once so the caller can finish it elsewhere; "
            "retry later or on another server",
            trailing=((EXPECTED_SERVER_KEY, f"{expected_ms:.3f}"),),
        )

    async def close(self, timeout: float | None = None) -> None:
        """Refuse new requests and run every queued one now; after ``timeout`` seconds, give up on
        what is left (its callers get UNAVAILABLE) instead of waiting on a stuck session run."""
        self._closing = True
        self._wake.set()
        late: set[asyncio.Task[None]] = set()
        if self._workers:
            _, late = await asyncio.wait(self._workers, timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        stopped = RequestError(grpc.StatusCode.UNAVAILABLE, "the server stopped before this request ran")
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(stopped)
        self._depth_changed()
        self._executor.shutdown(wait=not late, cancel_futures=True)

    def _depth_changed(self) -> None:
        self._on_depth(self.name, self.version, len(self._queue))

    def _queued_samples(self) -> int:
        return sum(p.samples for p in self._queue)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
            deadline = self._queue[0].enqueued + self.max_queue_delay_s
            while not (self._closing or self._hurry) and self._queue and self._queued_samples() < self.max_batch_size:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take()
            if batch:
                await self._run(loop, batch)

    def _take(self) -> list[_Pending]:
        """Oldest first, as many whole requests as fit in ``max_batch_size`` samples. A request whose
        deadline would pass before this batch ends is shed here, when the batch forms: the expected time
        at its arrival was an estimate, and the queue it met may have run slower (a surge)."""
        batch: list[_Pending] = []
        samples = 0
        ends = time.perf_counter() + self.batch_s
        while self._queue and samples + self._queue[0].samples <= self.max_batch_size:
            pending = self._queue.popleft()
            if pending.future.done():
                continue
            if (
                self.shed_late
                and self._batch_s is not None
                and pending.deadline is not None
                and ends > pending.deadline
            ):
                self._on_shed(self.name, self.version, "deadline")
                left_ms = max(pending.deadline - time.perf_counter(), 0.0) * 1e3
                pending.future.set_exception(
                    self._shed(
                        f"model {self.name!r} would finish this request's batch after its deadline "
                        f"({left_ms:.1f} ms left when the batch formed)"
                    )
                )
                continue
            batch.append(pending)
            samples += pending.samples
        self._depth_changed()
        return batch

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        self._running += 1
        try:
            outputs, started, compute_s = await loop.run_in_executor(
                self._executor, self._compute, [p.feeds for p in batch]
            )
        except asyncio.CancelledError:  # close() gave up on this batch
            stopped = RequestError(grpc.StatusCode.UNAVAILABLE, "the server stopped while this request ran")
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(stopped)
            raise
        except Exception as err:  # ONNX Runtime raises untyped errors; the server must go on
            failure = RequestError(grpc.StatusCode.INTERNAL, f"model {self.name!r} failed on a batch: {str(err)[:300]}")
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(failure)
            return
        finally:
            self._running -= 1
        found = self._batch_s
        self._batch_s = compute_s if found is None else found + BATCH_TIME_ALPHA * (compute_s - found)
        samples = sum(p.samples for p in batch)
        offset = 0
        for pending in batch:
            share = {name: array[offset : offset + pending.samples] for name, array in outputs.items()}
            offset += pending.samples
            if not pending.future.done():
                pending.future.set_result(
                    BatchResult(share, (started - pending.enqueued) * 1e3, compute_s * 1e3, samples)
                )
        self._on_batch(
            BatchStats(self.name, self.version, samples, tuple(started - p.enqueued for p in batch), compute_s)
        )

    def _compute(self, requests: list[dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], float, float]:
        """In the worker thread: join the requests and run the session. Returns the outputs, when the
        run started and how long it took, so ``compute_ms`` is the model's time alone and the
        hand-off between threads counts as queueing; the join's copy stays off the event loop."""
        feeds = _concatenate(requests)
        started = time.perf_counter()
        outputs = self.run(feeds)
        return outputs, started, time.perf_counter() - started


def _concatenate(requests: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(requests) == 1:
        return requests[0]
    return {name: np.concatenate([r[name] for r in requests], axis=0) for name in requests[0]}
