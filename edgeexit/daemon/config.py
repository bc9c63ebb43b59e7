"""``device.toml``: what ``edgeexit device`` serves and how; frozen dataclasses, one error per mistake.

The engine's options are an ``EngineSettings`` and ``[offload]`` is an ``OffloadSettings``, the
records ``edgeexit run`` builds from its flags: the daemon builds its runner with the same factory
(``edgeexit.device.factory.build_runner``), so the file can say whatever the command line can.

Every error names the TOML key and what was expected, so the operator fixes the file from the
message alone. Relative paths (``package``, ``offload.token_file``, ``offload.profile``,
``offload.decision_log``, ``offload.tls.*``) are taken relative to the config file's directory, so
a config and its package can move together.

TOML is read with ``tomllib`` (Python 3.11+); on 3.10 the daemon uses ``tomli`` when it is
installed and otherwise says to install it (or to use Python 3.11+).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeexit.device.settings import AUTO_BATTERY, COST_POLICIES, OffloadSettings, PolicySettings
from edgeexit.errors import ConfigError, EdgeExitError
from edgeexit.policy import Objective
from edgeexit.runtime.backends import BACKENDS, PRECISIONS
from edgeexit.runtime.settings import EngineSettings
from edgeexit.transport.tls import TlsSettings

__all__ = ["ConfigError", "DaemonConfig", "OffloadSettings", "PolicySettings", "ShadowSettings", "TlsSettings",
           "load_config"]  # fmt: skip

DEFAULT_LISTEN = "127.0.0.1:8101"
LOG_FORMATS = ("json", "text")
CODECS = ("fp32", "fp16", "int8")
OBJECTIVES = ("latency", "energy")
SCOPES = ("request", "mean")
#: The [offload] keys that only a policy reads.
POLICY_KEYS = ("profile", "objective", "energy_budget_j", "latency_slo_ms", "constraint_scope", "decision_log",
               "probe_interval_s", "battery")  # fmt: skip
#: The daemon's offload deadline when the file sets none (the CLI's is 1000 ms).
DEFAULT_TIMEOUT_MS = 200.0


@dataclass(frozen=True)
class ShadowSettings:
    """``[shadow]``: run ``share`` of the requests again at full depth in the background and watch
    the early answers' disagreement with it against ``eps`` (None: the package's calibration budget,
    its certified eps or its max drop); ``queue_size`` shadows wait at most (beyond: dropped, never
    delaying an answer); ``recertify``: what to do about a breach (see the field)."""

    share: float
    eps: float | None = None
    queue_size: int = 64
    #: on a breach, re-certify the thresholds from the shadow samples (Learn-then-Test at ``delta``,
    #: only tighter) and serve with them, once ``min_samples`` shadows are kept
    recertify: bool = False
    delta: float = 0.1
    min_samples: int = 500


@dataclass(frozen=True)
class DaemonConfig:
    package: Path
    listen: str = DEFAULT_LISTEN
    engine: EngineSettings = field(default_factory=EngineSettings)
    max_batch: int = 64
    grace_s: float = 10.0
    metrics_port: int | None = None
    log_format: str = "json"
    log_level: str = "info"
    offload: OffloadSettings | None = None
    shadow: ShadowSettings | None = None
    source: Path | None = None  # the file it was read from

    @property
    def threads(self) -> int:
        return self.engine.threads

    @property
    def unix_path(self) -> Path | None:
        """The socket file when ``listen`` is ``unix:PATH`` / ``unix:///PATH``, else None."""
        if not self.listen.startswith("unix:"):
            return None
        rest = self.listen.removeprefix("unix:")
        return Path("/" + rest.lstrip("/")) if rest.startswith("//") else Path(rest)


def _toml() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:
        import tomli
    except ModuleNotFoundError:
        raise ConfigError(
            "reading device.toml needs Python 3.11+ (tomllib) or the tomli package on Python 3.10: pip install tomli"
        ) from None
    return tomli


def load_config(path: str | Path) -> DaemonConfig:
    """Read and check ``path``; raise ``ConfigError`` naming the offending key."""
    path = Path(path)
    toml = _toml()
    try:
        data = toml.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"cannot read the config file {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"the config file {path} is not UTF-8 text; expected a TOML file") from None
    except toml.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from None
    return parse_config(data, base=path.resolve().parent, source=path)


def parse_config(data: dict[str, Any], *, base: Path, source: Path | None = None) -> DaemonConfig:
    table = _Table(data, "", base)
    config = DaemonConfig(
        package=table.path("package", required=True),  # type: ignore[arg-type]
        listen=table.listen("listen"),
        engine=EngineSettings(
            threads=table.integer("threads", 1, minimum=1),
            criterion=table.optional_string("criterion"),
            threshold=table.optional_number("threshold", minimum=0.0),
            backend=table.choice("backend", "onnxruntime", BACKENDS),
            precision=table.choice("precision", "fp32", PRECISIONS),
            trusted_keys=table.paths("trusted_keys"),
        ),
        max_batch=table.integer("max_batch", 64, minimum=1),
        grace_s=table.number("grace_s", 10.0, minimum=0.0),
        metrics_port=table.optional_integer("metrics_port", minimum=0, maximum=65535),
        log_format=table.choice("log_format", "json", LOG_FORMATS),
        log_level=table.choice("log_level", "info", ("debug", "info", "warning", "error")),
        offload=_offload(table.sub("offload")),
        shadow=_shadow(table.sub("shadow")),
        source=source,
    )
    table.no_extras()
    return config


def _offload(table: _Table | None) -> OffloadSettings | None:
    if table is None:
        return None
    servers = table.strings("servers")
    if not servers:
        raise ConfigError("offload.servers is empty; expected at least one tail server address, e.g. ['10.0.0.5:8001']")
    split = table.optional_integer("split", minimum=0)
    policy = _policy(table)
    if (split is None) == (policy is None):
        raise ConfigError(
            "[offload] needs exactly one of offload.split (the boundary K after which inputs are offloaded) "
            "or offload.policy (a policy name, e.g. 'adaptive')"
        )
    codec = table.optional_string("codec")
    if codec is not None and codec not in CODECS:
        raise ConfigError(f"offload.codec is {codec!r}; expected one of {', '.join(CODECS)}")
    tls_table = table.sub("tls")
    tls = None
    if tls_table is not None:
        tls = TlsSettings(
            ca=tls_table.path("ca"),
            cert=tls_table.path("cert"),
            key=tls_table.path("key"),
            server_name=tls_table.optional_string("server_name"),
        )
        if (tls.cert is None) != (tls.key is None):
            raise ConfigError("offload.tls.cert and offload.tls.key go together; expected both or neither")
        tls_table.no_extras()
    settings = OffloadSettings(
        servers=servers,
        split=split,
        policy=policy,
        codec=codec,
        timeout_ms=table.number("timeout_ms", DEFAULT_TIMEOUT_MS, minimum=1.0),
        token_file=table.path("token_file"),
        tls=tls,
    )
    table.no_extras()
    return settings


def _shadow(table: _Table | None) -> ShadowSettings | None:
    if table is None:
        return None
    share = table.optional_number("share", minimum=0.0)
    if share is None or not 0.0 < share <= 1.0:
        raise table.wrong("share", share, "the share of requests to run again at full depth, in (0, 1], e.g. 0.02")
    eps = table.optional_number("eps", minimum=0.0)
    if eps is not None and not 0.0 < eps < 1.0:
        raise table.wrong("eps", eps, "a fraction in (0, 1) (0.01 = one point)")
    delta = table.number("delta", 0.1, minimum=0.0)
    if not 0.0 < delta < 1.0:
        raise table.wrong("delta", delta, "a probability in (0, 1), e.g. 0.1")
    recertify = table._get("recertify")
    if recertify is not None and not isinstance(recertify, bool):
        raise table.wrong("recertify", recertify, "true or false")
    settings = ShadowSettings(
        share=share, eps=eps, queue_size=table.integer("queue_size", 64, minimum=1), recertify=bool(recertify),
        delta=delta, min_samples=table.integer("min_samples", 500, minimum=1),
    )  # fmt: skip
    table.no_extras()
    return settings


def _policy(table: _Table) -> PolicySettings | None:
    """``offload.policy`` and the keys only a policy reads (one of those without it is an error)."""
    name = table.optional_string("policy")
    profile = table.path("profile")  # read (and so allowed) beside a split too, as it always was
    if name is None:
        given = [table.name(key) for key in POLICY_KEYS if key in table.data and key != "profile"]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise ConfigError(
                f"{', '.join(given)} only {verb} with offload.policy (local, split@K, best-static, adaptive)"
            )
        return None
    if name.strip() in COST_POLICIES and profile is None:
        raise ConfigError(
            f"offload.policy {name!r} weighs this device's costs: set offload.profile to the "
            "profile.json written by `edgeexit profile` on this device (or use 'local' / 'split@K')"
        )
    try:
        objective = Objective(
            kind=table.choice("objective", "latency", OBJECTIVES),  # type: ignore[arg-type]
            energy_budget_j=table.optional_number("energy_budget_j", minimum=0.0),
            latency_slo_ms=table.optional_number("latency_slo_ms", minimum=0.0),
            scope=table.choice("constraint_scope", "request", SCOPES),  # type: ignore[arg-type]
        )
    except ConfigError:
        raise
    except EdgeExitError as err:
        raise ConfigError(f"offload.objective: {err}") from None
    battery = table.battery("battery")
    probe_interval_s = table.optional_number("probe_interval_s", minimum=0.0)
    if probe_interval_s == 0:
        raise table.wrong("probe_interval_s", probe_interval_s, "seconds above 0")
    try:
        return PolicySettings(name, objective, profile=profile, decision_log=table.path("decision_log"),
                              probe_interval_s=probe_interval_s, battery=battery)  # fmt: skip
    except EdgeExitError as err:
        raise ConfigError(f"offload.policy {name!r}: {err}") from None


class _Table:
    """One TOML table with typed getters that name ``prefix.key`` in their errors."""

    def __init__(self, data: dict[str, Any], prefix: str, base: Path) -> None:
        self.data = data
        self.prefix = prefix
        self.base = base
        self.seen: set[str] = set()

    def _get(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key)

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def wrong(self, key: str, value: Any, expected: str) -> ConfigError:
        return ConfigError(f"{self.name(key)} is {value!r} ({type(value).__name__}); expected {expected}")

    def integer(self, key: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
        value = self.optional_integer(key, minimum=minimum, maximum=maximum)
        return default if value is None else value

    def optional_integer(self, key: str, *, minimum: int | None = None, maximum: int | None = None) -> int | None:
        value = self._get(key)
        if value is None:
            return None
        bounds = f"an integer >= {minimum}" if minimum is not None else "an integer"
        if maximum is not None:
            bounds += f" and <= {maximum}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.wrong(key, value, bounds)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise self.wrong(key, value, bounds)
        return value

    def number(self, key: str, default: float, *, minimum: float) -> float:
        value = self.optional_number(key, minimum=minimum)
        return default if value is None else value

    def optional_number(self, key: str, *, minimum: float) -> float | None:
        value = self._get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise self.wrong(key, value, f"a number >= {minimum:g}")
        return float(value)

    def battery(self, key: str) -> float | str | None:
        """``"auto"`` (read the battery per sample) or a level in percent on battery power."""
        value = self._get(key)
        if value is None or value == AUTO_BATTERY:
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
            raise self.wrong(key, value, f"{AUTO_BATTERY!r} or a battery level in percent (0 to 100)")
        return float(value)

    def optional_string(self, key: str) -> str | None:
        value = self._get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.wrong(key, value, "a non-empty string")
        return value.strip()

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.optional_string(key)
        if value is None:
            return default
        if value not in choices:
            raise ConfigError(f"{self.name(key)} is {value!r}; expected one of {', '.join(map(repr, choices))}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._get(key)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise self.wrong(key, value, "a list of HOST:PORT strings")
        return tuple(v.strip() for v in value)

    def paths(self, key: str) -> tuple[Path, ...]:
        """A list of file paths (relative ones from the config file's directory); absent: none."""
        value = self._get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise self.wrong(key, value, "a list of file paths")
        found = [Path(v.strip()).expanduser() for v in value]
        return tuple(p if p.is_absolute() else self.base / p for p in found)

    def path(self, key: str, *, required: bool = False) -> Path | None:
        value = self.optional_string(key)
        if value is None:
            if required:
                raise ConfigError(
                    f"{self.name(key)} is missing; expected the path of a package directory or of a tar written by "
                    "`edgeexit pack`"
                )
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base / path

    def listen(self, key: str) -> str:
        value = self.optional_string(key) or DEFAULT_LISTEN
        if value.startswith("unix:"):
            if not value.removeprefix("unix:").strip("/"):
                raise ConfigError(f"{self.name(key)} is {value!r}; expected unix:///path/to/socket")
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(
                f"{self.name(key)} is {value!r}; expected 'unix:///run/edgeexit/device.sock' or HOST:PORT "
                "such as '127.0.0.1:8101'"
            )
        return value

    def sub(self, key: str) -> _Table | None:
        value = self._get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.wrong(key, value, "a table")
        return _Table(value, f"{self.name(key)}.", self.base)

    def no_extras(self) -> None:
        extra = sorted(set(self.data) - self.seen)
        if extra:
            known = ", ".join(sorted(self.prefix + k for k in self.seen))
            raise ConfigError(f"unknown key {', '.join(self.prefix + k for k in extra)}; known keys here: {known}")
