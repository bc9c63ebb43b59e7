"""What a user configures about offloading, as frozen records: the CLI flags, ``device.toml`` and the
benchmarks all build these, and ``edgeexit.device.factory.build_runner`` turns them into a runner.

So an offload option is added once, here, and reaches every entry point: a ``device.toml`` can say
whatever ``edgeexit run`` can (the policy's objective, its decision log, its probe interval), and
the benchmarks measure the runner a device would build. The engine's own options are
``edgeexit.runtime.settings.EngineSettings``.

The records import no grpc and load nothing: building one checks values, never files or servers.
``OffloadFlags`` is how ``edgeexit run`` spells them: its ``settings()`` checks the flags together,
in one place, with messages that name the flags (``device.toml`` checks its keys in
``edgeexit.daemon.config`` with messages that name the keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edgeexit.errors import UsageError
from edgeexit.policy import Objective, create_policy
from edgeexit.transport.tls import TlsSettings

#: The policies that weigh this device's costs (a profile, or costs measured where the runner is built).
COST_POLICIES = ("best-static", "adaptive")
#: What ``battery`` may be besides a level: read it from the operating system (psutil) per sample.
AUTO_BATTERY = "auto"


@dataclass(frozen=True)
class PolicySettings:
    """A policy deciding at every boundary (``local``, ``split@K``, ``best-static``, ``adaptive``).

    ``objective``: what it minimizes and under which budget. ``profile``: the profile.json
    (``edgeexit profile`` on this device) whose costs ``best-static`` / ``adaptive`` weigh.
    ``decision_log``: a JSON-lines file every decision is appended to, with its inputs and reason.
    ``probe_interval_s``: probe the server before a decision when the last probe is older (None:
    only the transfers feed the link estimate). ``battery``: None (no battery), ``"auto"`` (read it
    per sample), or a level in percent on battery power."""

    name: str
    objective: Objective = field(default_factory=Objective)
    profile: Path | None = None
    decision_log: Path | None = None
    probe_interval_s: float | None = None
    battery: float | Literal["auto"] | None = None

    def __post_init__(self) -> None:
        create_policy(self.name)  # an unknown name fails here, listing the known ones
        if self.probe_interval_s is not None and not self.probe_interval_s > 0:
            raise UsageError(f"probe_interval_s is {self.probe_interval_s}; expected seconds above 0, or None")
        if isinstance(self.battery, str) and self.battery != AUTO_BATTERY:
            raise UsageError(f"battery is {self.battery!r}; expected None, 'auto', a percentage or a BatteryState")

    @property
    def weighs_costs(self) -> bool:
        """Whether the policy needs the device's costs: it weighs them, or a profile was given."""
        return self.name.strip() in COST_POLICIES or self.profile is not None

    @property
    def probes_first(self) -> bool:
        """Whether a light probe should start the link estimate from the real link (the policies
        that read the estimate)."""
        return self.name.strip() in COST_POLICIES


@dataclass(frozen=True)
class OffloadSettings:
    """Where and how samples are offloaded: ``split`` (a fixed boundary K; -1: the input, the
    whole model on the server) or ``policy`` (deciding per sample), to ``servers`` (round-robin,
    failover; none: a policy only ever finishes locally).

    ``codec``: how the boundary tensor travels (None: the package's preferred one,
    ``edgeexit.device.tails.default_codec``). ``timeout_ms``: the deadline of one offload,
    failover included. ``token_file``: the bearer token the server asks for. ``early_exit``:
    False offloads every sample from the boundary (the split-at-K baseline)."""

    servers: tuple[str, ...] = ()
    split: int | None = None
    policy: PolicySettings | None = None
    codec: str | None = None
    timeout_ms: float = 200.0
    token_file: Path | None = None
    tls: TlsSettings | None = None
    early_exit: bool = True

    def __post_init__(self) -> None:
        if (self.split is None) == (self.policy is None):
            raise UsageError("offloading needs exactly one of a split boundary or a policy")
        if self.split is not None and not self.servers:
            raise UsageError(f"offloading at boundary {self.split} needs at least one tail server (HOST:PORT)")
        if not self.timeout_ms > 0:
            raise UsageError(f"timeout_ms is {self.timeout_ms}; expected a deadline above 0 ms")

    @property
    def timeout_s(self) -> float:
        return self.timeout_ms / 1e3


@dataclass(frozen=True)
class OffloadFlags:
    """``edgeexit run``'s offload and policy flags as given (None: not given); ``settings()``
    checks them together before anything is loaded."""

    server: tuple[str, ...] = ()
    split: str | None = None
    codec: str | None = None
    timeout_ms: float = 1000.0
    token_file: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    policy: str | None = None
    profile: Path | None = None
    objective: str = "latency"
    energy_budget_j: float | None = None
    latency_slo_ms: float | None = None
    constraint_scope: str = "request"
    decision_log: Path | None = None

    def settings(self) -> OffloadSettings | None:
        """The settings these flags ask for (None: run on this device only), or the UsageError
        that names the flags that do not go together."""
        split = parse_split(self.split)
        self._check_policy_flags()
        self._check_offload_flags()
        if not self.server and self.policy is None:
            return None
        tls = None
        if any(p is not None for p in (self.tls_ca, self.tls_cert, self.tls_key)):
            tls = TlsSettings(ca=self.tls_ca, cert=self.tls_cert, key=self.tls_key)
        policy = None
        if self.policy is not None:
            objective = Objective(kind=self.objective, energy_budget_j=self.energy_budget_j,  # type: ignore[arg-type]
                                  latency_slo_ms=self.latency_slo_ms, scope=self.constraint_scope)  # type: ignore[arg-type]  # fmt: skip
            policy = PolicySettings(self.policy, objective, profile=self.profile, decision_log=self.decision_log)
        return OffloadSettings(servers=self.server, split=split, policy=policy, codec=self.codec,
                               timeout_ms=self.timeout_ms, token_file=self.token_file, tls=tls)  # fmt: skip

    def _check_policy_flags(self) -> None:
        if self.policy is None:
            given = {
                "--profile": self.profile,
                "--energy-budget-j": self.energy_budget_j,
                "--latency-slo-ms": self.latency_slo_ms,
                "--decision-log": self.decision_log,
                "--objective": None if self.objective == "latency" else self.objective,
                "--constraint-scope": None if self.constraint_scope == "request" else self.constraint_scope,
            }
            _refuse_given(given, "with --policy (local, split@K, best-static, adaptive)")
            return
        if self.split is not None:
            raise UsageError(f"--split {self.split} and --policy {self.policy} both choose where to offload: give one "
                             f"(--split {self.split} is --policy split@{self.split})")  # fmt: skip
        if not self.server and self.policy.strip() != "local":
            raise UsageError(
                f"--policy {self.policy} offloads to a tail server, but no --server HOST:PORT was given: add --server "
                "(e.g. --server 127.0.0.1:8001, where `edgeexit serve PACKAGE` listens) or use --policy local"
            )

    def _check_offload_flags(self) -> None:
        given = {"--codec": self.codec, "--token-file": self.token_file, "--tls-ca": self.tls_ca,
                 "--tls-cert": self.tls_cert, "--tls-key": self.tls_key}  # fmt: skip
        if not self.server:
            if self.split is not None:
                raise UsageError(
                    f"--split {self.split} offloads to a tail server, but no --server HOST:PORT was given: add "
                    "--server (e.g. --server 127.0.0.1:8001, where `edgeexit serve PACKAGE` listens) or drop --split"
                )
            _refuse_given(given, "when offloading: add --server HOST:PORT and --split K")
            return
        if self.split is None and self.policy is None:
            raise UsageError(
                "--server needs --split K: the boundary after which inputs not yet exited are offloaded "
                "(0 .. segments-2; `edgeexit inspect PACKAGE` lists the segments and tails)"
            )


def parse_split(split: str | None) -> int | None:
    """``--split``: a boundary K, or ``input`` (boundary -1: the input tail runs the whole model)."""
    if split is None:
        return None
    text = split.strip().lower()
    if text == "input":
        return -1
    if not text.isdigit():
        raise UsageError(f"--split {split!r}: expected a boundary K (0, 1, ...) or 'input'")
    return int(text)


def _refuse_given(given: dict[str, object], needs: str) -> None:
    """UsageError naming every flag in ``given`` that was set, which only applies ``needs``."""
    extra = [name for name, value in given.items() if value is not None]
    if extra:
        verb = "applies" if len(extra) == 1 else "apply"
        raise UsageError(f"{', '.join(extra)} only {verb} {needs}")
