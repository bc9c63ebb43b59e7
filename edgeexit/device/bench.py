"""``edgeexit bench``: labelled data through device + tail server over emulated links, per policy.

For each link (``LinkSpec``) and each policy, the same samples run one at a time, as a device
answers requests:

- ``local``: the engine alone, with early exit;
- ``split@input``: every input sent as it is to the input tail (``__from_input``), which runs the
  whole model: "offload at the input", the all-offload baseline (when the package has that tail);
- ``split@K``: every sample offloaded at boundary K, no early exit (Neurosurgeon's baseline);
- ``early exit + split@K``: the samples no exit up to K was sure of travel;
- ``best-static`` and ``adaptive``: ``PolicyRunner`` deciding at each boundary with a
  ``LinkEstimator`` fed by its own transfers over the emulated link (and one modelled probe that
  gives it the link's RTT: ServerLive probes would measure loopback, not the emulated link).
  Their ``DeviceCosts`` come from this run: segment latencies measured on the first samples at
  full depth, exit rates from the package's calibration, energy from the power model.

Every row's runner is what ``edgeexit.device.factory.build_runner`` builds for the same settings
on a device, over a ``TailClient`` whose transport is an ``EmulatedLink`` (a fresh client and a
reset link per row, so each row sees the same seeded delays and losses). Latency is wall time per sample,
emulated delay included. Energy is modelled, never measured here: device compute time (the
Result's segment times) x the preset's active watts, the wait for the server x its idle watts, and
the radio's transmit energy for the bytes sent at the link's rate (``edgeexit.profile.radio``),
plus the radio's tail as it runs: the first offload pays all of it, each later one extends it by
the time since the previous one (capped at the tail's length: ``RadioModel.tail_energy_j``), so
back-to-back offloads keep the radio up between them and pay for that time, sparse ones each pay a
whole tail. The policies weigh the same presets (``edgeexit.profile.record.modelled_costs``).

``device_speed`` (``--device-speed rpi4``, or a factor): the device's segments run at that speed
(``edgeexit.device.speed``: each takes ``factor`` x its uncontended time here, measured once at
setup, padded inside the engine's timing), so latency, device energy and the policies' costs are
those of the slower device; the policies' decisions are slowed too (they run on the device). The
tail server is not. Every row says which
speed it ran at, and what the policy's decisions cost per sample (``decide_ms``, included in
``mean_ms``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeexit.device.factory import build_runner
from edgeexit.device.settings import OffloadSettings, PolicySettings
from edgeexit.device.speed import emulate_device_speed, slow_policy
from edgeexit.device.tails import default_codec
from edgeexit.errors import DataError, PackageError, UnknownNameError, UsageError
from edgeexit.policy.objective import Objective
from edgeexit.profile.device_speed import DeviceSpeed, get_device_speed
from edgeexit.runtime.engine import Engine, Result
from edgeexit.runtime.settings import EngineSettings
from edgeexit.transport.client import TailClient
from edgeexit.transport.link_emulation import EmulatedLink, LinkSpec

if TYPE_CHECKING:
    from edgeexit.policy.costs import DeviceCosts
    from edgeexit.profile.power import PowerPreset
    from edgeexit.profile.radio import RadioPreset

DEFAULT_POLICIES = ("local", "split", "early+split", "best-static", "adaptive")
#: ServerLive probes a policy row starts with (the least RTT is kept).
PROBES = 3


@dataclass(frozen=True)
class BenchRow:
    """One policy over one link: per-sample means unless the name says total."""

    link: str
    policy: str
    samples: int
    accuracy: float
    mean_ms: float
    p99_ms: float
    energy_mj: float  # modelled, per sample
    exit_rates: dict[str, float]  # per head ("exit 0", ...), plus "server" for offloaded answers
    offload_rate: float  # answered by the server
    bytes_sent: int  # total over the row
    fallbacks: int
    #: upload + RTT of the offloaded samples' requests, per sample: what the emulated link added at the
    #: least (without jitter, a lower bound of ``mean_ms``)
    emulated_ms: float
    energy_source: str = "modelled"
    extra: dict[str, object] = field(default_factory=dict)
    #: the policy's own decisions, per sample (time in ``Policy.decide`` at the device's speed)
    decide_ms: float = 0.0
    device_speed: str = "host (x1)"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class EnergyModel:
    """Device watts (a power preset) and a radio model (``edgeexit.profile``)."""

    device: str = "rpi4"
    radio: str = "wifi"

    def presets(self) -> tuple[PowerPreset, RadioPreset]:
        """The power and radio presets, by name (an unknown one lists the known ones)."""
        from edgeexit.profile.power import get_preset
        from edgeexit.profile.radio import get_radio

        return get_preset(self.device), get_radio(self.radio)

    @property
    def label(self) -> str:
        return f"modelled: {self.device} + {self.radio}"


def resolve_policies(names: Sequence[str] | None, boundaries: Sequence[int], *, have_policy_runner: bool) -> list[str]:
    """Row names in order: ``local``, ``split@K``, ``early+split@K``, ``best-static``, ``adaptive``.
    ``boundaries`` may hold -1 (the input tail: row ``split@input``, which ``split`` includes; early
    exit means nothing before segment 0, so there is no ``early+split@input``).
    ``names``: ``local``, ``split`` (every K), ``split@K``, ``early+split`` / ``early+split@K``,
    ``best-static``, ``adaptive`` (None: all)."""
    wanted = list(names) if names else list(DEFAULT_POLICIES)
    rows: list[str] = []
    known = "local, split, split@K, early+split, early+split@K, best-static, adaptive"
    for raw in wanted:
        name = raw.strip().lower()
        if name == "local":
            rows.append("local")
        elif name in ("split", "early+split"):
            rows += [f"{name}@{'input' if k == -1 else k}" for k in boundaries if k >= 0 or name == "split"]
        elif name.startswith(("split@", "early+split@")):
            k = name.rpartition("@")[2]
            at = -1 if k == "input" and name == "split@input" else (int(k) if k.isdigit() else None)
            if at is None or at not in boundaries:
                raise UsageError(
                    f"policy {raw!r}: the package has tails at boundaries {list(boundaries)} (-1: split@input)"
                )
            rows.append(name)
        elif name in ("best-static", "adaptive"):
            if have_policy_runner:
                rows.append(name)
            elif names:
                raise UsageError(f"policy {raw!r} needs edgeexit.device.policy_runner, which is not installed")
        else:
            raise UnknownNameError(f"unknown bench policy {raw!r}; expected one of: {known}")
    return list(dict.fromkeys(rows))


def _has_policy_runner() -> bool:
    try:
        import edgeexit.device.policy_runner  # noqa: F401
    except ImportError:
        return False
    return True


def run_bench(
    package: str | Path,
    server: str,
    x: np.ndarray,
    y: np.ndarray,
    links: Sequence[LinkSpec],
    *,
    policies: Sequence[str] | None = None,
    codec: str | None = None,
    seed: int = 0,
    timeout_s: float = 2.0,
    energy: EnergyModel | None = None,
    progress: Callable[[str], None] | None = None,
    device_speed: DeviceSpeed | str | float | None = None,
) -> list[BenchRow]:
    """Every (link, policy) row; ``server`` a tail server's ``HOST:PORT``; ``device_speed`` the
    device emulated (None: this machine's own speed)."""
    if len(x) == 0:
        raise DataError("the bench data has no samples")
    setup = BenchSetup.load(package, x[: min(len(x), 32)], codec=codec, energy=energy, speed=device_speed)
    boundaries = sorted({t.boundary for t in setup.early.manifest.tails})
    if not boundaries:
        raise PackageError(f"{package} has no tails to offload to: export it with tails (edgeexit export --codecs)")
    names = resolve_policies(policies, boundaries, have_policy_runner=_has_policy_runner())
    rows: list[BenchRow] = []
    for spec in links:
        for name in names:
            if progress:
                progress(f"{spec} / {name}")
            with TailClient(server, timeout_s=timeout_s, transport=EmulatedLink(spec, seed)) as client:
                rows.append(setup.measure(name, setup.runner(name, client, spec), x, y, spec))
    return rows


def segment_ms(engine: Engine, xs: np.ndarray) -> list[float]:
    """Mean per-segment latency at full depth (warm-up first)."""
    engine.run(xs[0])
    times = np.array([engine.run(sample).segment_ms for sample in xs], dtype=np.float64)
    return [float(v) for v in times.mean(axis=0)]


@dataclass(frozen=True)
class BenchSetup:
    """What every row of a bench shares: the package's two engines (``early`` with its calibrated
    exits, ``full`` with none), the codec offloads use, the segment latencies the policies' costs
    are built from, and the energy model rows are charged with."""

    early: Engine
    full: Engine
    codec: str
    segment_ms: Sequence[float]
    energy: EnergyModel
    speed: DeviceSpeed = field(default_factory=lambda: get_device_speed("host"))

    @classmethod
    def load(cls, package: str | Path, xs: np.ndarray, *, codec: str | None = None, energy: EnergyModel | None = None,
             speed: DeviceSpeed | str | float | None = None) -> BenchSetup:  # fmt: skip
        """Both engines from ``package`` at ``speed`` (None: this machine's); segment latencies
        measured at full depth on ``xs``, at that speed."""
        found = get_device_speed(speed)
        full = emulate_device_speed(
            Engine.from_settings(package, EngineSettings(threshold=float("inf"), cache_dir=None)), found, xs[:8]
        )
        # one device: the early-exit engine runs at the speed the full one was calibrated to (the costs')
        early = emulate_device_speed(Engine.from_settings(package, EngineSettings(cache_dir=None)), found,
                                     base_ms=getattr(full, "calibrated_segment_ms", None))  # fmt: skip
        codec = default_codec(early.manifest, codec)
        calibrated = getattr(full, "calibrated_segment_ms", None)
        # at an emulated speed the device's segments take exactly factor x their calibrated time (a
        # quiet device's profile); a mean measured here would carry the neighbours' stalls into the costs
        measured = [found.factor * ms for ms in calibrated] if calibrated else segment_ms(full, xs)
        return cls(early, full, codec, measured, energy or EnergyModel(), found)

    def policy_costs(self) -> DeviceCosts:
        """The ``DeviceCosts`` a policy row weighs: this run's segment latencies (at the device's
        speed), the tails' compute at this machine's speed (the tail server's), the energy model's
        presets and the package's exit rates."""
        from edgeexit.profile.record import modelled_costs

        preset, radio = self.energy.presets()
        costs = modelled_costs(self.early.manifest, self.segment_ms, codec=self.codec, power=preset, radio=radio)
        host = getattr(self.full, "calibrated_segment_ms", None) or [ms / self.speed.factor for ms in self.segment_ms]
        # the tail server runs at this machine's speed: the tails' compute is the segments' here
        return dataclasses.replace(costs, server_ms=tuple(sum(host[k + 1 :]) for k in range(len(host) - 1)),
                                   input_server_ms=sum(host))  # fmt: skip

    def runner(self, name: str, client: TailClient, spec: LinkSpec,
               objective: Objective | None = None) -> Callable[[np.ndarray], Result]:  # fmt: skip
        """One row's runner, built by the device factory over the row's client (its emulated link):
        ``split@K`` on the full-depth engine with no early exit, ``early+split@K`` with it, and the
        policies (under ``objective``, default: latency) with costs from this run's segment
        latencies, the tails' compute at this machine's speed and the energy model's presets.

        A policy's link estimate starts from real ServerLive probes over the emulated link (the
        least RTT of ``PROBES``, with this machine's gRPC overhead) and one modelled probe transfer of the largest
        tensor it may send (the link's delay for those bytes plus the probe's overhead): what a
        device learns from one probe request, so that it does not start from the estimator's
        5 Mbit/s prior, which would keep it from ever trying a fast link."""
        if name == "local":
            return self.early.run
        if name.startswith(("split@", "early+split@")):
            early_exit = name.startswith("early+")
            at = name.rpartition("@")[2]
            split = OffloadSettings(servers=client.addresses, split=-1 if at == "input" else int(at),
                                    codec=self.codec, early_exit=early_exit)  # fmt: skip
            return build_runner(self.early if early_exit else self.full, split, client=client).runner.run
        from edgeexit.policy import LinkEstimator

        costs = self.policy_costs()
        estimator = LinkEstimator()
        chosen = PolicySettings(name, objective or Objective())
        policy = OffloadSettings(servers=client.addresses, policy=chosen, codec=self.codec)
        runner = build_runner(self.early, policy, client=client, costs=costs, estimator=estimator).runner
        # real ServerLive probes over the emulated link: its RTT plus this stack's overhead; the least of
        # three, as a device filters a probe that met a scheduling stall
        answered = [found[1] for found in (client.live(timeout_s=1.0) for _ in range(PROBES)) if found is not None]
        rtt = min(answered) if answered else spec.rtt_s
        estimator.observe_probe(rtt)
        overhead = max(0.0, rtt - spec.rtt_s)
        probe = max((size for size in (*costs.encoded_bytes, costs.input_bytes) if size), default=0)
        if probe:  # one probe request of the largest tensor it may send (modelled: the link's delay + that overhead)
            estimator.observe_transfer(probe, spec.transfer_s(probe) + overhead)
        return slow_policy(runner, self.speed).run  # type: ignore[arg-type]  # a policy makes a PolicyRunner

    def measure(self, name: str, run: Callable[[np.ndarray], Result], x: np.ndarray, y: np.ndarray,
                spec: LinkSpec) -> BenchRow:  # fmt: skip
        """``run`` over every sample, one at a time: the row for ``name`` over ``spec``."""
        return _measure(name, run, x, y, spec, self.energy, self.speed)


def _measure(name: str, run: Callable[[np.ndarray], Result], x: np.ndarray, y: np.ndarray, spec: LinkSpec,
             energy: EnergyModel, speed: DeviceSpeed | None = None) -> BenchRow:  # fmt: skip
    preset, radio = energy.presets()
    tail = radio.cost_model()
    latencies, predictions, exits = [], [], []
    sent = offloaded = fallbacks = 0
    compute_s = wait_s = emulated_s = decide_s = tail_j = 0.0
    last_transfer = -math.inf  # when the radio last sent: the tail runs from there
    for sample in x:
        tick = time.perf_counter()
        result = run(sample)
        latencies.append((time.perf_counter() - tick) * 1e3)
        predictions.append(-1 if result.prediction is None else result.prediction)
        compute_s += sum(result.segment_ms) / 1e3
        decide_s += sum(getattr(d, "decide_ms", 0.0) for d in result.decisions) / 1e3
        info = result.offload
        if info is not None and info.bytes_sent:
            now = time.perf_counter()
            tail_j += tail.tail_energy_j(now - last_transfer)
            last_transfer = now
        if info is not None:
            sent += info.bytes_sent
            wait_s += info.transfer_ms / 1e3
            if info.offloaded:
                offloaded += 1
                emulated_s += spec.transfer_s(info.bytes_sent)  # samples run one at a time: one request each
            else:
                fallbacks += 1
        exits.append("server" if info is not None and info.offloaded else f"exit {result.exit}")
    n = len(x)
    radio_j = tail_j
    if sent:
        radio_j += radio.energy(sent, spec.bandwidth_bps / 1e6, tail=False).joules
    # the decisions are device compute too: charged at active power like the segments
    energy_j = (compute_s + decide_s) * preset.active_w + wait_s * preset.idle_w + radio_j
    names, counts = np.unique(np.array(exits), return_counts=True)
    return BenchRow(
        link=str(spec),
        policy=name,
        samples=n,
        accuracy=float(np.mean(np.array(predictions) == np.asarray(y))),
        mean_ms=float(np.mean(latencies)),
        p99_ms=float(np.percentile(latencies, 99)),
        energy_mj=energy_j / n * 1e3,
        exit_rates={str(k): float(c) / n for k, c in sorted(zip(names, counts, strict=True))},
        offload_rate=offloaded / n,
        bytes_sent=int(sent),
        fallbacks=fallbacks,
        emulated_ms=emulated_s / n * 1e3,
        energy_source=energy.label,
        decide_ms=decide_s / n * 1e3,
        device_speed=(speed or get_device_speed("host")).label,
    )


def plot_latency(rows: Sequence[BenchRow], path: str | Path) -> Path:
    """A grouped bar chart: mean latency per policy, one group per link."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    links = list(dict.fromkeys(r.link for r in rows))
    policies = list(dict.fromkeys(r.policy for r in rows))
    by = {(r.link, r.policy): r.mean_ms for r in rows}
    width = 0.8 / max(len(policies), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(links) * len(policies) * 0.5 + 3), 4.5))
    for i, policy in enumerate(policies):
        xs = [j + i * width for j in range(len(links))]
        ax.bar(xs, [by.get((link, policy), 0.0) for link in links], width, label=policy)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(links))], links)
    ax.set_ylabel("mean latency per sample (ms)")
    ax.set_title("edgeexit bench: mean latency per policy and link")
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
