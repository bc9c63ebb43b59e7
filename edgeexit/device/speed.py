"""Run this machine as a slower device: every device segment takes ``factor`` x its measured time.

What a benchmark of offloading needs from a workstation standing in for a Raspberry Pi is the Pi's
compute time on the device side and this machine's on the server side. ``emulate_device_speed``
wraps an Engine's loaded segments (and its batch-1 chain) so that right after a segment runs, the
device waits ``(factor - 1)`` x the time it took, inside the engine's own segment timing. So
everything downstream sees a slow device with no change of its own: wall latency, the Result's
``segment_ms`` (hence the device energy a benchmark charges at active power), the segment
latencies the policies' costs are measured from, and a PolicyRunner's decision time (its
``policy.decide`` is wrapped too: the decision is device work).

On a shared machine a segment's measured time carries other processes' load, and a factor
multiplies it: five times the contention is not a Pi. So when given calibration samples,
``emulate_device_speed`` first measures each segment's uncontended batch-1 time here (the lowest
of a few rounds of mean latency) and then makes every run of segment k take ``factor`` x that
time per sample (``rows`` x it for a batch), waiting only for what the run itself did not take:
the device's speed is then a constant of the emulation, not of the neighbours' load.

The wait spins (``wait_until``), sleeping only the part of a long wait beyond ``SPIN_S`` (50 ms):
a device that computes does not sleep, and code that runs right after a sleep runs cold. Measured
at a Pi 4's speed on the 96 px EfficientNet (docs/benchmarks.md, issue 14's fourth pass): with the
wait slept to its last 0.5 ms, a PolicyRunner's bookkeeping per sample cost 14-16 us over the bare
engine; with it spun, 6 us, what it costs at this machine's speed. The spin does not compete with
the tail server: at batch 1 the device waits for the server's answer without spinning, and the
server is idle while a device segment runs. The tail server is a separate process and is never
slowed.

The engine is changed in place (its segment list and chain are the walker's), once: a second
call is refused rather than compounding the factor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeexit.errors import UsageError
from edgeexit.profile.device_speed import DeviceSpeed, get_device_speed

if TYPE_CHECKING:
    from edgeexit.device.policy_runner import PolicyRunner
    from edgeexit.runtime.engine import Engine

#: Spin through the last this much of a wait; sleep only what is beyond it (see the module docstring).
SPIN_S = 0.05


def wait_until(deadline: float) -> None:
    """Return at ``time.perf_counter() >= deadline``: sleep what is beyond ``SPIN_S``, spin the rest."""
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            return
        if left > SPIN_S:
            time.sleep(left - SPIN_S)


def slowed(fn: Callable[..., Any], factor: float) -> Callable[..., Any]:
    """``fn`` taking ``factor`` x its own time: after it returns, wait ``(factor - 1)`` x the CPU
    time it took on this thread (not its wall time: a scheduling stall on a shared machine is
    not the device's work, and multiplying it would make the emulated device stall ``factor`` x
    as long). ONNX Runtime with one intra-op thread and the policies run on the calling thread."""

    def run(*args: Any, **kwargs: Any) -> Any:
        tick = time.thread_time()
        out = fn(*args, **kwargs)
        spent = time.thread_time() - tick
        wait_until(time.perf_counter() + spent * (factor - 1.0))
        return out

    run.__wrapped__ = fn  # type: ignore[attr-defined]
    return run


class SlowedSegment:
    """A loaded segment whose ``run`` takes ``factor`` x as long (``target_ms`` per sample when
    calibrated: the run is padded to ``rows x target_ms``); everything else is the segment's."""

    def __init__(self, segment: Any, factor: float, target_ms: float | None = None) -> None:
        self._segment = segment
        self.spec = segment.spec
        self.calls = 0  # how many runs went through the emulation (tests check the wiring with it)
        self._target_s = None if target_ms is None else target_ms / 1e3
        self._run = slowed(segment.run, factor) if target_ms is None else segment.run

    def run(self, x: np.ndarray, context: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        self.calls += 1
        if self._target_s is None:
            return self._run(x, context)  # type: ignore[no-any-return]
        tick = time.perf_counter()
        out = self._run(x, context)
        wait_until(tick + self._target_s * (x.shape[0] if x.ndim else 1))
        return out  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._segment, name)


class SlowedChain:
    """A batch-1 chain whose ``run_segment`` takes ``factor`` x as long; its buffers are the chain's."""

    def __init__(self, chain: Any, factor: float, target_ms: Sequence[float] | None = None) -> None:
        self._chain = chain
        self.calls = 0
        self._target_s = None if target_ms is None else [t / 1e3 for t in target_ms]
        self._run = slowed(chain.run_segment, factor) if target_ms is None else chain.run_segment

    @property
    def input(self) -> np.ndarray:
        return self._chain.input  # type: ignore[no-any-return]

    @property
    def context(self) -> dict[str, np.ndarray]:
        return self._chain.context  # type: ignore[no-any-return]

    @property
    def outputs(self) -> list[dict[str, np.ndarray]]:
        return self._chain.outputs  # type: ignore[no-any-return]

    def run_segment(self, k: int) -> dict[str, np.ndarray]:
        self.calls += 1
        if self._target_s is None:
            return self._run(k)  # type: ignore[no-any-return]
        tick = time.perf_counter()
        out = self._run(k)
        wait_until(tick + self._target_s[k])
        return out  # type: ignore[no-any-return]

    def run_all(self, times: list[float]) -> None:
        """The full-depth walk, each segment slowed as ``run_segment`` slows it (the wrapped
        chain's own ``run_all`` would run them at this machine's speed)."""
        for k in range(len(self._chain.outputs)):
            tick = time.perf_counter()
            self.run_segment(k)
            times.append((time.perf_counter() - tick) * 1e3)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chain, name)


def emulate_device_speed(engine: Engine, speed: DeviceSpeed | str | float | None,
                         calibration: np.ndarray | None = None, rounds: int = 5,
                         base_ms: Sequence[float] | None = None) -> Engine:  # fmt: skip
    """Slow ``engine``'s segments to ``speed`` (a preset name, a factor, or a ``DeviceSpeed``), in
    place; returns the engine. ``host`` (factor 1) changes nothing. ``calibration``: samples to
    measure each segment's uncontended time on first (the lowest of ``rounds`` rounds of mean
    batch-1 latency); each segment then takes ``factor`` x that per sample. ``base_ms``: those
    uncontended times, measured already (another engine of the same package: two engines that
    stand for one device must run at one speed; calibrated apart, they differed by up to 20% on
    a shared machine, and the policies' costs came from one while the samples ran on the other).
    Neither: ``factor`` x whatever each run takes."""
    found = get_device_speed(speed)
    if getattr(engine, "device_speed", None) is not None:
        raise UsageError(
            f"this engine already runs at device speed {engine.device_speed.label}; "  # type: ignore[attr-defined]
            "emulate on a fresh Engine instead of compounding the factor"
        )
    engine.device_speed = found  # type: ignore[attr-defined]
    if found.factor == 1.0:
        return engine
    target: list[float] | None = None
    if base_ms is not None and len(base_ms) != len(engine.segments):
        raise UsageError(f"base_ms has {len(base_ms)} entries; the engine has {len(engine.segments)} segments")
    if base_ms is not None or calibration is not None:
        base = base_ms if base_ms is not None else np.min(
            [engine.segment_latency(calibration) for _ in range(rounds)], axis=0
        )  # fmt: skip
        target = [float(found.factor * ms) for ms in base]
        engine.calibrated_segment_ms = tuple(float(ms) for ms in base)  # type: ignore[attr-defined]
    segments = engine.segments
    segments[:] = [  # in place: the walker's list too
        SlowedSegment(s, found.factor, None if target is None else target[k]) for k, s in enumerate(segments)
    ]
    chain = getattr(engine, "_chain", None)
    if chain is not None:
        engine._chain = SlowedChain(chain, found.factor, target)
    return engine


def slow_policy(runner: PolicyRunner, speed: DeviceSpeed | str | float | None) -> PolicyRunner:
    """Make ``runner``'s policy decide at ``speed`` too: the decision runs on the device."""
    found = get_device_speed(speed)
    if found.factor != 1.0:
        policy = runner.policy
        policy.decide = slowed(policy.decide, found.factor)  # type: ignore[method-assign]
    return runner


def reference_ms(package: str | Path | Engine, *, rounds: int = 5, runs: int = 40) -> float:
    """``package``'s full-depth latency here, batch 1, one ONNX Runtime thread: the lowest of
    ``rounds`` round means of ``runs`` runs each (the uncontended time, as ``emulate_device_speed``
    calibrates, since a neighbour's load is not the host's speed)."""
    engine = package if not isinstance(package, (str, Path)) else _full_depth_engine(package)
    shape = tuple(d or 1 for d in engine.manifest.input.shape[1:])
    xs = np.random.default_rng(0).random((max(runs, 1), *shape), dtype=np.float32)
    for x in xs[:5]:
        engine.run(x)
    means = []
    for _ in range(max(rounds, 1)):
        tick = time.perf_counter()
        for x in xs:
            engine.run(x)
        means.append((time.perf_counter() - tick) / len(xs) * 1e3)
    return float(min(means))


def _full_depth_engine(package: str | Path) -> Engine:
    from edgeexit.runtime.engine import Engine, EngineSettings

    return Engine.from_settings(package, EngineSettings(threads=1, threshold=float("inf"), cache_dir=None))


def calibrate_to_host(speed: DeviceSpeed | str | float | None, package: str | Path, *, rounds: int = 5,
                      runs: int = 40) -> DeviceSpeed:  # fmt: skip
    """``speed`` re-based on this host: its reference network (``DeviceSpeed.reference``), exported
    as ``package``, measured here (``reference_ms``). Refuses a package of another network or input
    size, since the factor is a ratio of two timings of one network."""
    found = get_device_speed(speed)
    if found.reference is None:
        return found.on_host(1.0)  # raises: this preset names no reference network
    name, shape = found.reference
    engine = _full_depth_engine(package)
    have = tuple(engine.manifest.input.shape[1:])
    if engine.manifest.model_name != name or have != shape:
        raise UsageError(
            f"{package} holds {engine.manifest.model_name} with input {list(have)}; device speed {found.name!r} is "
            f"re-based on {name} with input {list(shape)}: export it with `edgeexit export {name} --input-shape "
            f"1,{','.join(map(str, shape))} --out DIR` and pass that directory"
        )
    return found.on_host(reference_ms(engine, rounds=rounds, runs=runs))


def device_speed_of(engine: Engine) -> DeviceSpeed:
    """The speed ``engine`` was set to run at (``host`` when it was never emulated)."""
    return getattr(engine, "device_speed", None) or get_device_speed("host")
