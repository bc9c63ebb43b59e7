"""One loaded configuration: the package's Engine (+ offload runner), its worker thread, its client.

A ``Runtime`` is what SIGHUP swaps. It owns a one-thread executor because an Engine (and its
OffloadRunner) is not thread-safe; ONNX Runtime releases the GIL, so the event loop keeps
accepting calls while a request runs. Requests submitted to an old Runtime finish on it;
``close()`` waits for them, then closes its tail client. The runner comes from
``edgeexit.device.factory.build_runner``, as ``edgeexit run``'s does. With ``[shadow]`` it also
hands a share of the answered requests to a ``ShadowSampler`` (its own thread and full-depth
Engine), which watches the early answers' disagreement with full depth.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from edgeexit.calibration.drift import DriftReport
from edgeexit.daemon.config import ConfigError, DaemonConfig
from edgeexit.daemon.generation import GenerationRuntime
from edgeexit.device.factory import DeviceRunner, build_runner
from edgeexit.device.shadow import Recertified, ShadowSampler, apply_thresholds
from edgeexit.errors import EdgeExitError, ProfileError
from edgeexit.manifest import Manifest
from edgeexit.runtime.engine import Engine, Result

#: Called on the shadow thread after each shadow run: the report, and whether it is a new alarm.
DriftListener = Callable[[DriftReport, bool], None]

log = logging.getLogger("edgeexit.daemon")


class Runtime:
    def __init__(
        self,
        config: DaemonConfig,
        on_drift: DriftListener | None = None,
        on_recertified: Callable[[Recertified], None] | None = None,
        *,
        generation: int = 1,
    ) -> None:
        self.config = config
        self.generation = generation
        self.engine = Engine.from_settings(config.package, config.engine)  # verifies every hash
        self.device: DeviceRunner = _device_runner(self.engine, config)
        self.mode = self.device.mode
        self.manifest = self.engine.manifest
        self._on_drift = on_drift
        self._on_recertified = on_recertified
        self.shadow = _shadow(config, self.manifest, self._drift if config.shadow is not None else None)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"edgeexit-infer-{self.generation}")
        self._lock = threading.Lock()
        self._closed = False

    def _run(self, xs: np.ndarray) -> list[Result]:
        results = [self.device.run(xs)] if xs.shape[0] == 1 else self.device.run_batch(xs)
        if self.shadow is not None:  # after the answers exist; offer() never waits
            for x, result in zip(xs, results, strict=True):
                self.shadow.offer(x, result)
        return results

    def _drift(self, report: DriftReport, alarm: bool) -> None:
        """On the shadow thread: pass the report on; on a breach with ``recertify``, choose tighter
        thresholds from the shadow samples and have the inference thread serve with them."""
        if self._on_drift is not None:
            self._on_drift(report, alarm)
        settings, shadow = self.config.shadow, self.shadow
        if settings is None or shadow is None or not settings.recertify or not report.breached:
            return
        if shadow.kept < settings.min_samples:
            return  # too few to certify anything yet; the breach stays on and is looked at again
        current = [rule.threshold for rule in self.engine.rules]
        found = shadow.recertify(current, settings.delta, report.eps)
        with self._lock:
            if self._closed:
                return
            self._executor.submit(apply_thresholds, self.engine, found.thresholds).result()
        shadow.restart()  # the early answers from now on are the new thresholds'
        if self._on_recertified is not None:
            self._on_recertified(found)

    async def infer(self, xs: np.ndarray) -> list[Result]:
        """Run ``xs`` (a validated ``[N, ...]`` float32 batch) on this Runtime's worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, xs)

    def close(self) -> None:
        """Finish what was submitted, then release the tail client (idempotent; blocks)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._executor.shutdown(wait=True)
        self.device.close()
        if self.shadow is not None:
            self.shadow.close()

    def describe(self) -> dict[str, object]:
        return {
            "generation": self.generation,
            "package": str(self.config.package),
            "package_id": self.manifest.package_id,
            "model": self.manifest.model_name,
            "threads": self.config.threads,
            "mode": self.mode,
        }


def load_runtime(
    config: DaemonConfig,
    on_drift: DriftListener | None = None,
    on_recertified: Callable[[Recertified], None] | None = None,
    *,
    generation: int = 1,
) -> Runtime | GenerationRuntime:
    """The Runtime for ``config``'s package: a classifier's (engine, offload, shadow) or, for a decoder
    package, text generation's (``edgeexit.daemon.generation``; ``[offload]`` and ``[shadow]`` do
    not apply to it and are refused). ``generation`` is the caller's to count: only a runtime that
    loaded takes a number, so a failed reload leaves no gap."""
    from edgeexit.generation.package import is_decoder_package

    if not is_decoder_package(config.package):
        return Runtime(config, on_drift, on_recertified, generation=generation)
    for table in ("offload", "shadow"):
        if getattr(config, table) is not None:
            raise ConfigError(f"[{table}] applies to classifier packages; {config.package} is a decoder package")
    return GenerationRuntime(config, generation=generation)


def _shadow(config: DaemonConfig, manifest: Manifest, on_drift: DriftListener | None) -> ShadowSampler | None:
    """``[shadow]``'s sampler, held to its ``eps`` or the package's calibration budget (the certified
    eps of a Learn-then-Test calibration, else its max drop; none for an uncalibrated package)."""
    settings = config.shadow
    if settings is None:
        return None
    eps = settings.eps
    record = manifest.calibration
    if eps is None and record is not None:
        eps = record.guarantee.eps if record.guarantee is not None else (record.max_drop or None)
    return ShadowSampler(config.package, settings.share, eps=eps, queue_size=settings.queue_size,
                         settings=config.engine, listener=on_drift)  # fmt: skip


def _device_runner(engine: Engine, config: DaemonConfig) -> DeviceRunner:
    """The factory's runner for ``[offload]``; what it refuses is a ConfigError naming the table."""
    offload = config.offload
    try:
        return build_runner(engine, offload)
    except ConfigError:
        raise
    except ProfileError as err:  # only a policy reads a profile
        profile = offload.policy.profile if offload is not None and offload.policy is not None else None
        raise ConfigError(f"offload.profile {profile}: {err}") from None
    except EdgeExitError as err:
        raise ConfigError(f"[offload]: {err}") from None
