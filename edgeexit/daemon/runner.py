"""One loaded configuration: the package's Engine (+ offload runner), its worker thread, its client.

A ``Runtime`` is what SIGHUP swaps. It owns a one-thread executor because an Engine (and its
OffloadRunner) is not thread-safe; ONNX Runtime releases the GIL, so the event loop keeps
accepting calls while a request runs. Requests submitted to an old Runtime finish on it;
``close()`` waits for them, then closes its tail client.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from edgeexit.daemon.config import ConfigError, DaemonConfig
from edgeexit.errors import EdgeExitError
from edgeexit.runtime.engine import Engine, Result

log = logging.getLogger("edgeexit.daemon")
_generations = itertools.count(1)


class Runtime:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.generation = next(_generations)
        self.engine = Engine(config.package, threads=config.threads)  # verifies every hash
        self.client: Any = None
        self.runner: Any = None
        self.mode = "local"
        if config.offload is not None:
            self.runner, self.client, self.mode = _offload_runner(self.engine, config)
        self.manifest = self.engine.manifest
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"edgeexit-infer-{self.generation}")
        self._lock = threading.Lock()
        self._closed = False

    def _run(self, xs: np.ndarray) -> list[Result]:
        target = self.runner if self.runner is not None else self.engine
        if xs.shape[0] == 1:
            return [target.run(xs)]
        return list(target.run_batch(xs))

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
        if hasattr(self.runner, "close"):
            self.runner.close()
        if self.client is not None:
            self.client.close()

    def describe(self) -> dict[str, object]:
        return {
            "generation": self.generation,
            "package": str(self.config.package),
            "package_id": self.manifest.package_id,
            "model": self.manifest.model_name,
            "threads": self.config.threads,
            "mode": self.mode,
        }


def _offload_runner(engine: Engine, config: DaemonConfig) -> tuple[Any, Any, str]:
    from edgeexit.transport.client import TailClient, TlsConfig

    offload = config.offload
    assert offload is not None
    token = None
    if offload.token_file is not None:
        try:
            token = offload.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(
                f"offload.token_file {offload.token_file}: cannot read it ({getattr(err, 'strerror', None) or err}); "
                "expected a file holding the bearer token"
            ) from None
    tls = None
    if offload.tls is not None:
        tls = TlsConfig(
            ca=offload.tls.ca, cert=offload.tls.cert, key=offload.tls.key, server_name=offload.tls.server_name
        )
    client = TailClient(list(offload.servers), timeout_s=offload.timeout_ms / 1e3, token=token, tls=tls)
    try:
        if offload.policy is not None:
            runner = _policy_runner(engine, client, offload.policy, offload.codec, offload.profile)
            return runner, client, f"policy {offload.policy} ({runner.codec_name})"
        from edgeexit.device.offload import OffloadRunner

        runner = OffloadRunner(engine, client, split=offload.split or 0, codec=offload.codec, max_batch=None)
        return runner, client, f"split@{offload.split} ({runner.tail.codec})"
    except EdgeExitError as err:
        client.close()
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"[offload]: {err}") from None
    except BaseException:
        client.close()
        raise


def _policy_runner(engine: Engine, client: Any, name: str, codec: str | None, profile: Path | None) -> Any:
    """A PolicyRunner for ``offload.policy``; best-static / adaptive take their costs from ``offload.profile``."""
    from edgeexit.device.policy_runner import PolicyRunner
    from edgeexit.device.tails import PREFERRED_CODECS
    from edgeexit.policy import create_policy

    if codec is None:
        have = {t.codec for t in engine.manifest.tails}
        codec = next((c for c in PREFERRED_CODECS if c in have), "fp16")
    costs = None
    if profile is not None:
        try:
            from edgeexit.profile.record import device_costs, load_profile
        except ImportError as err:
            raise ConfigError(
                f"offload.profile needs edgeexit.profile.record, which this edgeexit lacks ({err})"
            ) from None
        try:
            costs = device_costs(load_profile(profile), engine.manifest, codec=codec)
        except (EdgeExitError, OSError) as err:
            raise ConfigError(f"offload.profile {profile}: {err}") from None
    try:
        policy = create_policy(name, costs)
    except EdgeExitError as err:
        raise ConfigError(f"offload.policy {name!r}: {err}") from None
    return PolicyRunner(engine, client, policy, codec=codec)
