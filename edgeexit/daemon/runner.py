"""One loaded configuration: the package's Engine (+ offload runner), its worker thread, its client.

A ``Runtime`` is what SIGHUP swaps. It owns a one-thread executor because an Engine (and its
OffloadRunner) is not thread-safe; ONNX Runtime releases the GIL, so the event loop keeps
accepting calls while a request runs. Requests submitted to an old Runtime finish on it;
``close()`` waits for them, then closes its tail client. The runner comes from
``edgeexit.device.factory.build_runner``, as ``edgeexit run``'s does.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from edgeexit.daemon.config import ConfigError, DaemonConfig
from edgeexit.device.factory import DeviceRunner, build_runner
from edgeexit.errors import EdgeExitError, ProfileError
from edgeexit.runtime.engine import Engine, Result

log = logging.getLogger("edgeexit.daemon")
_generations = itertools.count(1)


class Runtime:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.generation = next(_generations)
        self.engine = Engine.from_settings(config.package, config.engine)  # verifies every hash
        self.device: DeviceRunner = _device_runner(self.engine, config)
        self.mode = self.device.mode
        self.manifest = self.engine.manifest
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"edgeexit-infer-{self.generation}")
        self._lock = threading.Lock()
        self._closed = False

    def _run(self, xs: np.ndarray) -> list[Result]:
        if xs.shape[0] == 1:
            return [self.device.run(xs)]
        return self.device.run_batch(xs)

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

    def describe(self) -> dict[str, object]:
        return {
            "generation": self.generation,
            "package": str(self.config.package),
            "package_id": self.manifest.package_id,
            "model": self.manifest.model_name,
            "threads": self.config.threads,
            "mode": self.mode,
        }


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
