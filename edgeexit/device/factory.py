"""One way to build a device runner from settings: ``build_runner(engine, settings)``.

``edgeexit run``, the device daemon and ``edgeexit bench`` all call it, so a runner is the same
whichever way it was configured: the same default codec, the same costs for a policy, the same
client from the same TLS and token settings. What it returns owns the tail client it opened::

    settings = OffloadSettings(servers=("10.0.0.5:8001",), policy=PolicySettings("adaptive", profile=path))
    with build_runner(Engine.from_settings(pkg, EngineSettings()), settings) as device:
        result = device.run(x)

``settings`` None runs on this device only (the Engine itself is the runner).
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeAlias

import numpy as np

from edgeexit.device.offload import OffloadRunner
from edgeexit.device.policy_runner import PolicyRunner
from edgeexit.device.settings import OffloadSettings, PolicySettings
from edgeexit.device.tails import default_codec
from edgeexit.errors import UsageError
from edgeexit.policy import DeviceCosts, LinkEstimator, Policy, create_policy
from edgeexit.runtime.engine import Engine, Result
from edgeexit.transport.client import TailClient

#: What answers a request: the Engine alone, a fixed split, or a policy deciding per boundary.
Runner: TypeAlias = Engine | OffloadRunner | PolicyRunner


class DeviceRunner:
    """A runner and the tail client it offloads through; closing it closes the runner's decision
    log and, when the factory opened it, the client.

    ``mode`` says what was built, for logs: ``local``, ``split@1 (fp16)``, ``policy adaptive (fp16)``.
    One per thread, like its Engine; the client may be shared."""

    def __init__(self, runner: Runner, client: TailClient | None, *, mode: str, owns_client: bool) -> None:
        self.runner = runner
        self.client = client
        self.mode = mode
        self._owns_client = owns_client

    @property
    def engine(self) -> Engine:
        return self.runner if isinstance(self.runner, Engine) else self.runner.engine

    def run(self, x: np.ndarray) -> Result:
        return self.runner.run(x)

    def run_batch(self, xs: np.ndarray) -> list[Result]:
        """A batch: early exits retire together; the survivors travel in one request, at a fixed
        split or where a policy decides (once per boundary for the batch)."""
        return list(self.runner.run_batch(xs))

    def close(self) -> None:
        """Close the decision log and the client this runner opened (idempotent)."""
        if isinstance(self.runner, PolicyRunner):
            self.runner.close()
        if self._owns_client and self.client is not None:
            self.client.close()
            self._owns_client = False

    def __enter__(self) -> DeviceRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DeviceRunner({self.mode!r}, {self.runner!r})"


def build_runner(
    engine: Engine,
    settings: OffloadSettings | None,
    *,
    costs: DeviceCosts | None = None,
    client: TailClient | None = None,
    estimator: LinkEstimator | None = None,
) -> DeviceRunner:
    """The runner ``settings`` ask for, on ``engine``.

    ``costs``: what a policy weighs when the caller measured them (else they come from the
    policy's profile). ``client``: a client the caller owns (a benchmark's, over an emulated link);
    else one is opened from the settings when they list servers, and closed with the runner.
    ``estimator``: a PolicyRunner's link estimate to start from."""
    if settings is None:
        return DeviceRunner(engine, None, mode="local", owns_client=False)
    owns = client is None and bool(settings.servers)
    if owns:
        client = open_client(settings)
    try:
        if settings.policy is not None:
            codec = default_codec(engine.manifest, settings.codec)
            policy = _policy(engine, settings.policy, codec, costs)
            runner: Runner = PolicyRunner(
                engine, client, policy, codec=codec, estimator=estimator, early_exit=settings.early_exit,
                decision_log=settings.policy.decision_log, battery=settings.policy.battery,
                probe_interval_s=settings.policy.probe_interval_s,
            )  # fmt: skip
            mode = f"policy {settings.policy.name} ({codec})"
        else:
            assert settings.split is not None  # OffloadSettings holds a split or a policy ...
            assert client is not None  # ... and a split has servers
            runner = OffloadRunner(engine, client, split=settings.split, codec=settings.codec,
                                   early_exit=settings.early_exit)  # fmt: skip
            mode = f"split@{settings.split} ({runner.tail.codec})"
    except BaseException:
        if owns and client is not None:
            client.close()
        raise
    return DeviceRunner(runner, client, mode=mode, owns_client=owns)


def open_client(settings: OffloadSettings) -> TailClient:
    """A TailClient to ``settings.servers`` with their deadline, token and TLS."""
    token = read_token(settings.token_file) if settings.token_file is not None else None
    return TailClient(list(settings.servers), timeout_s=settings.timeout_s, token=token, tls=settings.tls)


def read_token(path: Path) -> str:
    """The bearer token in ``path`` (its one line, stripped)."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or err
        raise UsageError(f"cannot read the token file {path}: {reason}; expected the token") from None


def _policy(engine: Engine, settings: PolicySettings, codec: str, costs: DeviceCosts | None) -> Policy:
    """The policy by name, with the costs it weighs: the caller's, else its profile's."""
    if costs is None and settings.weighs_costs:
        if settings.profile is None:
            raise UsageError(
                f"policy {settings.name!r} weighs this device's costs: give the profile.json written by "
                "`edgeexit profile` on this device, or costs measured here"
            )
        from edgeexit.profile.record import device_costs, load_profile

        costs = device_costs(load_profile(settings.profile), engine.manifest, codec=codec)
    return create_policy(settings.name, costs, settings.objective)
