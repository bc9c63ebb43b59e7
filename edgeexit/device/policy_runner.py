"""Policy-driven offload on the device: decide at every boundary whether to keep going or offload now.

``PolicyRunner`` steps one sample boundary by boundary (``Engine.run_until`` to boundary 0, then
``Engine.advance``): after each boundary's exit check, if the sample is still going, it asks the
policy (``edgeexit.policy``) with the link estimate and the battery level. ``offload`` sends the
boundary's tensor to its tail exactly as ``OffloadRunner`` does (the same code: any failure
finishes the sample here from that boundary, so no request is lost); ``continue`` advances to the
next boundary, and after the last one the sample finishes locally. Every transfer feeds the
``LinkEstimator``; so do light probes (``probe()``, a ServerLive round trip), and every request
(how often the device is asked for work, which sets an offload's share of the radio's tail). Every decision is
kept on the Result (``Result.decisions``) with what taking it cost (``Decision.decide_ms``), and
can be logged, one JSON line each, with its inputs.

``run_batch`` handles a batch as a batch: the batch runs to the first boundary together (early
exits retire), the policy decides once for the survivors at each boundary, and an ``offload``
sends them in one request (``max_batch`` per request, the tail's ``max_batch_size``). Nothing
about a sample enters a decision (the policies weigh expected costs and the link estimate), so
with the same estimate a batch gets the answers and the decisions its samples would get one by
one; the link estimate is updated once per request instead of once per sample.

When the package has an input tail (``__from_input``, boundary -1: the whole model on the server)
for the codec, the first decision is at boundary -1, before segment 0 runs ("offload at the
input"); otherwise it is at boundary 0.

One runner per thread, like its Engine.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from edgeexit.codecs import Codec, create_codec
from edgeexit.device.offload import _configured_max_batch, offload_or_resume
from edgeexit.device.tails import select_tail
from edgeexit.errors import OffloadError, UsageError
from edgeexit.manifest import TailSpec
from edgeexit.policy import BatteryState, Decision, LinkEstimate, LinkEstimator, Policy, SplitPolicy, read_battery
from edgeexit.policy.costs import static_split
from edgeexit.policy.feedback import SCALE_STEP, LatencyFeedback
from edgeexit.repository import DEFAULT_MAX_BATCH
from edgeexit.runtime.engine import Engine, Pending, Result
from edgeexit.runtime.results import replaced
from edgeexit.transport.client import TailClient

log = logging.getLogger("edgeexit.device")

#: A decision log: a callable ``(sample_id, decision)``, or a path to a JSON-lines file (appended to).
DecisionLog = Callable[[Any, Decision], None] | str | Path
#: Deadline of one probe when the client's own is longer: a probe must stay light.
PROBE_TIMEOUT_S = 0.5
#: How long a keyed link estimate is reused while no probe or transfer moved it (estimates only
#: start decaying toward the prior after ``LinkEstimator.stale_after_s``, 30 s by default).
KEY_REUSE_S = 1.0


class PolicyRunner:
    """An Engine whose samples are offloaded where ``policy`` decides, through ``client``.

    ``codec``: how a boundary tensor travels (the package needs that codec's tail at a boundary
    to offload there). ``estimator``: the LinkEstimator fed by every transfer and probe (None: a
    fresh one with its conservative prior). ``decision_log``: a callable ``(sample_id, decision)``
    or a path to a JSON-lines file opened for append (one line per decision: ``sample`` plus
    ``Decision.to_dict()``; for a batch's decision, ``sample`` is the list of the samples it was
    taken for). ``battery``: None (no battery), ``"auto"`` (psutil, read once per sample or
    batch), a level in percent on battery power, or a ``BatteryState``. ``probe_interval_s``:
    before a decision, probe the server when the last probe is older than that (None: never on
    its own; ``probe()`` is always available). ``client`` None: an ``offload`` decision falls back.
    """

    def __init__(
        self,
        engine: Engine,
        client: TailClient | None,
        policy: Policy,
        *,
        codec: str = "fp16",
        estimator: LinkEstimator | None = None,
        decision_log: DecisionLog | None = None,
        battery: BatteryState | float | str | None = None,
        probe_interval_s: float | None = None,
        early_exit: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.client = client
        self.policy = policy
        self.codec_name = codec
        self.codec: Codec = create_codec(codec)
        self.estimator = estimator if estimator is not None else LinkEstimator()
        self.early_exit = early_exit
        self.last_boundary = len(engine.segments) - 2
        self.tails: dict[int, TailSpec] = {}
        for k in range(-1, self.last_boundary + 1):
            try:
                self.tails[k] = select_tail(engine.manifest, k, codec)
            except OffloadError:
                continue  # no tail here: the policy's offload there falls back (costs list no such option)
        if isinstance(policy, SplitPolicy) and policy.k not in self.tails:
            select_tail(engine.manifest, policy.k, codec)  # raises the error that lists what the package has
        if isinstance(battery, str) and battery != "auto":
            raise UsageError(f"battery is {battery!r}; expected None, 'auto', a percentage or a BatteryState")
        self.battery = battery
        if probe_interval_s is not None and not probe_interval_s > 0:
            raise UsageError(f"probe_interval_s is {probe_interval_s}; expected seconds above 0, or None")
        self.probe_interval_s = probe_interval_s
        self._clock = clock
        self._last_probe: float | None = None
        self._classes = engine.manifest.num_classes or None
        self._counter = itertools.count()
        self._batch_limits: dict[str, int] = {}
        self._plans: dict[tuple[object, ...], tuple[Decision, tuple[Decision, ...], float | None]] = {}
        #: the plan in use and the estimate key it was made on (kept while the estimate stays near it)
        self._current: tuple[tuple[object, ...], tuple[Decision, tuple[Decision, ...], float | None]] | None = None
        #: measured / modelled latency of the samples run along a plan (used under a latency SLO)
        self.feedback = LatencyFeedback()
        self._key_cache: tuple[tuple[object, ...], float, tuple[object, ...]] | None = None
        self._log_file: IO[str] | None = None
        self._log_call: Callable[[Any, Decision], None] | None = None
        if isinstance(decision_log, (str, Path)):
            self._log_file = Path(decision_log).open("a", encoding="utf-8")  # noqa: SIM115  # closed by close()
        elif decision_log is not None:
            self._log_call = decision_log

    # ---------------------------------------------------------------- running

    def run(self, x: np.ndarray, *, keep_hidden: bool = False, sample_id: Any = None) -> Result:
        """One sample, deciding at each boundary it reaches; the Result carries the decisions
        (``Result.decisions``) and, when it was offloaded or fell back, ``Result.offload``."""
        sample = next(self._counter) if sample_id is None else sample_id
        if self.last_boundary < 0:  # a single segment: nothing to decide
            return self.engine.run(x, keep_hidden=keep_hidden)
        self.estimator.observe_request(1)
        battery = self._battery()
        first = -1 if -1 in self.tails else 0  # decide before segment 0 when the input can be offloaded
        found = self._plan(first, battery)
        if found is not None:  # the decisions are known up front: no stepping
            plan, modelled_ms = found
            start = time.perf_counter()
            result = self._run_plan(x, plan, first, sample, keep_hidden)
            if modelled_ms is not None:  # a latency SLO: learn how the device runs against the model
                # the plan's own time: building it (decisions at the device's speed, 4-8 ms once per
                # estimate) is not what the model prices, and counting it read local at 2x its model
                self.feedback.observe((time.perf_counter() - start) * 1e3, modelled_ms)
                scale = self.feedback.scale
                moved = abs(math.log(scale / self.policy.latency_scale))
                if moved >= SCALE_STEP and moved >= self.feedback.step:  # moved beyond its noise: plan anew
                    self.policy.latency_scale = scale
            return result
        decisions: list[Decision] = []
        state = self.engine.run_until(x, first, early_exit=self.early_exit, keep_hidden=keep_hidden)
        while isinstance(state, Pending):
            decision = self.decide(state.boundary, battery)
            decisions.append(decision)
            self._record(sample, decision)
            if decision.action == "offload":
                state = self._offload(state)
            elif state.boundary >= self.last_boundary:
                state = self.engine.resume(state)
            else:
                state = self.engine.advance(state, state.boundary + 1)
        return replaced(state, decisions=tuple(decisions)) if decisions else state

    def run_batch(self, xs: np.ndarray, *, keep_hidden: bool = False) -> list[Result]:
        """A batch as a batch: one decision per boundary for the samples still going, the
        survivors offloaded together; Results in input order, each carrying the decisions taken
        at the boundaries it reached (shared by the samples that reached them together)."""
        if self.last_boundary < 0:
            return self.engine.run_batch(xs, keep_hidden=keep_hidden)
        if len(xs):  # an empty batch is the engine's to refuse
            self.estimator.observe_request(len(xs))
        battery = self._battery()
        first = -1 if -1 in self.tails else 0
        progress = self.engine.run_batch_until(xs, first, early_exit=self.early_exit, keep_hidden=keep_hidden)
        results: list[Result | None] = list(progress.results)
        ids = [next(self._counter) for _ in results]
        pending = progress.pending
        decisions: list[Decision] = []
        while pending is not None:
            decision = self.decide(pending.boundary, battery)
            decisions.append(decision)
            self._record([ids[row] for row in pending.rows], decision)
            taken = tuple(decisions)
            if decision.action == "offload":
                finished, pending_rows, pending = self._offload_batch(pending), pending.rows, None
                self._place(results, pending_rows, finished, taken)
            elif pending.boundary >= self.last_boundary:
                self._place(results, pending.rows, self.engine.resume_batch(pending), taken)
                pending = None
            else:
                done, pending = self.engine.advance_batch(pending, pending.boundary + 1)
                for row, result in done.items():
                    results[row] = replaced(result, decisions=taken)
        return results  # type: ignore[return-value]  # every row is answered once nothing is pending

    @staticmethod
    def _place(results: list[Result | None], rows: Sequence[int], finished: Sequence[Result],
               decisions: tuple[Decision, ...]) -> None:  # fmt: skip
        for row, result in zip(rows, finished, strict=True):
            results[row] = replaced(result, decisions=decisions)

    #: A plan: the decisions a sample meets, and its modelled mean latency (None: not needed).
    Plan = tuple[tuple[Decision, ...], float | None]

    def _plan(self, first: int, battery: BatteryState | float | None) -> Plan | None:
        """The decisions a sample would meet at boundaries ``first`` .., up to and including the
        first "offload" (or through the last boundary when every one says "continue, finish
        locally"), when they can be known before it runs, with the plan's modelled mean latency
        when the policy learns from it (``Policy.needs_latency_feedback``; else None); None when
        the decisions cannot be known up front (step, deciding per boundary).

        A decision depends on the boundary, the link estimate and the battery only, and nothing
        moves the estimate while one sample runs up to its offload (no transfer, and no probe
        unless ``probe_interval_s`` asks for one: then this returns None). Stepping a sample
        boundary by boundary (``run_until`` / ``advance``, a copied tensor per boundary, a
        decision per boundary) cost ~1.1 ms per sample at a Pi's speed over ``run_until(x, k)``
        in one go (measured: the adaptive row offloading at boundary 2 exactly as the static
        early+split@2 did, 11.3 vs 9.9 ms per sample at 500 Mbit/s / 5 ms); so the sample runs in
        one go to the plan's offload boundary (or to its end) and carries the decisions of the
        boundaries it reached, as the stepped path would give it. Kept per link estimate, at the
        grain the policy's own memo treats as equal (``Policy.estimate_key``): every transfer nudges the
        estimate, and re-planning on each nudge cost 0.27 ms per sample at a Pi's speed for the
        same decisions. The plan in use is kept while the estimate stays within one grain of the
        one it was made on (``_near``): an estimate hovering at a grain's edge crossed it on most
        transfers, and each crossing re-planned (0.2-0.4 ms of decisions per sample at a Pi's speed
        while offloading, docs/benchmarks.md, sweeps K-L). The first decision carries what this
        check cost (``decide_ms``)."""
        if self.probe_interval_s is not None or not self.early_exit:
            return None  # a due probe or the no-exit baseline: step, as decided per boundary
        tick = time.perf_counter()
        key = self._estimate_key(battery)
        current = self._current
        if current is not None and _near(current[0], key):
            found: tuple[Decision, tuple[Decision, ...], float | None] | None = current[1]
        else:
            found = self._plans.get(key)
            if found is not None:
                self._current = (key, found)
        if found is None:
            plan: list[Decision] = []
            link = self.estimator.estimate()  # one estimate for the whole plan: its options are shared
            for k in range(first, self.last_boundary + 1):
                plan.append(self.decide(k, battery, link))
                if plan[-1].action == "offload":
                    break
            modelled = None
            if self.policy.needs_latency_feedback:  # the plan's mean over all samples, unscaled
                split = plan[-1].boundary if plan[-1].action == "offload" else None
                modelled = static_split(self.policy.costs, split, link).latency_ms  # type: ignore[arg-type]
            if len(self._plans) >= 64:
                self._plans.clear()
            rest = tuple(replaced(d, decide_ms=0.0) for d in plan[1:])  # paid once, here
            self._plans[key] = (plan[0], rest, modelled)
            self._current = (key, self._plans[key])
            return tuple(plan), modelled
        head, rest, modelled = found
        return (replaced(head, decide_ms=(time.perf_counter() - tick) * 1e3), *rest), modelled

    def _estimate_key(self, battery: BatteryState | float | None) -> tuple[object, ...]:
        """``policy.estimate_key`` of the current estimate, reused while nothing it rests on moved:
        no probe or transfer (``LinkEstimator.version``), the request interval at the policy's own
        grain (``Policy.interval_key``; none where it does not enter the choice), the same battery
        reading and latency scale, for less than ``KEY_REUSE_S``. Reading the estimate and keying it cost
        ~65 us per sample right after the segments ran at a Pi 4's emulated speed (15 us hot), about
        as much as the rest of the runner (docs/benchmarks.md, point 4, third pass)."""
        estimator = self.estimator
        now = self._clock()
        policy = self.policy
        stamp = (estimator.version, policy.interval_key(estimator.request_interval_s, battery), battery,
                 policy.latency_scale, estimator.backing_off)  # fmt: skip
        cached = self._key_cache
        if cached is not None and cached[0] == stamp and now - cached[1] < KEY_REUSE_S:
            return cached[2]
        key = policy.estimate_key(estimator.estimate(), battery)  # the policy's grain: same decisions
        self._key_cache = (stamp, now, key)
        return key

    def _run_plan(self, x: np.ndarray, plan: tuple[Decision, ...], first: int, sample: Any,
                  keep_hidden: bool) -> Result:  # fmt: skip
        """One sample along a known plan: to the plan's offload boundary in one ``run_until`` and
        offloaded there, or (all "continue") one ``Engine.run``; the decisions it reached kept."""
        last = plan[-1]
        if last.action == "offload":
            state = self.engine.run_until(x, last.boundary, early_exit=self.early_exit, keep_hidden=keep_hidden)
        else:
            state = self.engine.run(x, keep_hidden=keep_hidden)
        if isinstance(state, Pending):
            taken = plan
            state = self._offload(state)
        else:  # exited at exit ``state.exit``: it reached (without exiting) the boundaries before it
            taken = plan[: max(0, min(state.exit, self.last_boundary + 1) - first)]
        for decision in taken:
            self._record(sample, decision)
        return replaced(state, decisions=taken) if taken else state

    def decide(self, boundary: int, battery: BatteryState | float | None = None,
               link: LinkEstimate | None = None) -> Decision:  # fmt: skip
        """The policy's decision at ``boundary`` with ``link`` (None: the current link estimate,
        probing first when ``probe_interval_s`` says the last probe is too old); ``decide_ms`` on
        it is what the policy took to decide (the estimate and the options, the probe not included)."""
        if (
            link is None
            and self.probe_interval_s is not None
            and (self._last_probe is None or self._clock() - self._last_probe >= self.probe_interval_s)
        ):
            self.probe()
        tick = time.perf_counter()
        decision = self.policy.decide(boundary, self.estimator.estimate() if link is None else link, battery)
        spent = (time.perf_counter() - tick) * 1e3
        return replaced(decision, decide_ms=spent)

    def _offload(self, pending: Pending) -> Result:
        tail = self.tails.get(pending.boundary)
        if tail is None:  # a policy without costs may ask for a boundary the package has no tail at
            log.warning("policy %s offloads at boundary %d: no %s tail there, continuing locally",
                        self.policy.name, pending.boundary, self.codec_name)  # fmt: skip
            return self.engine.resume(pending)
        return self._send(tail, pending)[0]

    def _offload_batch(self, pending: Pending) -> list[Result]:
        """The survivors of a batch from their boundary: one request per ``max_batch`` of them."""
        tail = self.tails.get(pending.boundary)
        if tail is None:
            log.warning("policy %s offloads at boundary %d: no %s tail there, continuing locally",
                        self.policy.name, pending.boundary, self.codec_name)  # fmt: skip
            return self.engine.resume_batch(pending)
        step = self._max_batch(tail)
        finished: list[Result] = []
        for start in range(0, pending.samples, step):
            part = pending if pending.samples <= step else pending.select(start, start + step)
            finished += self._send(tail, part)
        return finished

    def _send(self, tail: TailSpec, pending: Pending) -> list[Result]:
        """One request (or its local fallback); a delivered one feeds the link estimator once."""
        results = offload_or_resume(self.engine, self.client, tail, self.codec, pending, classes=self._classes)
        info = results[0].offload
        if info is not None and info.offloaded:
            sent = sum(r.offload.bytes_sent for r in results if r.offload is not None)  # the shares sum to the request
            self.estimator.observe_reply(
                sent, info.transfer_ms / 1e3, queue_ms=info.queue_ms, compute_ms=info.compute_ms,
                server_ms=info.server_ms, modelled_compute_ms=self._modelled_compute_ms(pending.boundary, len(results)),
                expected_server_ms=info.expected_server_ms,
            )  # fmt: skip
        elif info is not None and info.shed:  # answered at once: the server is full, back off
            self.estimator.observe_shed(info.expected_server_ms)
        return results

    def _modelled_compute_ms(self, boundary: int, samples: int) -> float | None:
        """The tail's compute for ``samples`` as the policy's costs model it (``server_ms``,
        ``input_server_ms``: a quiet server's time; 0 where they have none; None without costs)."""
        costs = self.policy.costs
        if costs is None:
            return None
        if boundary == -1:
            modelled = costs.input_server_ms or 0.0
        else:
            modelled = costs.server_ms[boundary] if costs.server_ms and boundary < len(costs.server_ms) else 0.0
        return modelled * samples

    def _max_batch(self, tail: TailSpec) -> int:
        found = self._batch_limits.get(tail.model)
        if found is None:
            found = self._batch_limits[tail.model] = _configured_max_batch(self.engine, tail.model) or DEFAULT_MAX_BATCH
        return found

    # ---------------------------------------------------------------- probes

    def probe(self, timeout_s: float | None = None) -> float | None:
        """One light ServerLive round trip to the next server the breakers allow: its RTT (s) feeds
        the estimator and is returned; None when no server answered (a failure counts on that
        server's breaker, as a failed offload would)."""
        self._last_probe = self._clock()
        client = self.client
        if client is None:
            return None
        budget = min(client.timeout_s, PROBE_TIMEOUT_S) if timeout_s is None else timeout_s
        answered = client.live(budget)
        if answered is None:
            log.debug("probe: no server answered within %.0f ms", budget * 1e3)
            return None
        rtt = answered.rtt_s
        self.estimator.observe_probe(rtt, answered.expected_server_ms)
        return rtt

    # ---------------------------------------------------------------- decisions

    def _battery(self) -> BatteryState | float | None:
        if self.battery == "auto":
            return read_battery()
        return self.battery  # type: ignore[return-value]

    def _record(self, sample: Any, decision: Decision) -> None:
        if self._log_call is not None:
            self._log_call(sample, decision)
        if self._log_file is not None:
            line = json.dumps({"sample": sample, **decision.to_dict()}, sort_keys=True, default=str)
            self._log_file.write(line + "\n")
            self._log_file.flush()

    def close(self) -> None:
        """Close the decision log file (the client is the caller's)."""
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> PolicyRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PolicyRunner(policy={self.policy.name!r}, codec={self.codec_name!r}, client={self.client!r})"


def _near(planned: tuple[object, ...], now: tuple[object, ...]) -> bool:
    """Whether an estimate keyed ``now`` is within one grain of the one a plan was made on
    (``Policy.estimate_key``): the link's steps (bandwidth, RTT, server delay) and the request
    interval's each within one, the battery and the latency scale the same."""
    if planned == now:
        return True
    if len(planned) != len(now) or planned[0] != now[0]:
        return False
    for was, found in zip(planned[1:], now[1:], strict=True):
        if isinstance(was, tuple) and isinstance(found, tuple) and was[0] == found[0] == "interval":
            was, found = was[1], found[1]
        if isinstance(was, int) and isinstance(found, int):
            if abs(was - found) > 1:
                return False
        elif was != found:
            return False
    return True
