"""Energy meters: measure the energy of a stretch of code from the best source the machine has.

Order of preference, because a measurement beats a model:

1. ``RaplMeter`` -- Intel RAPL package counters (``/sys/class/powercap/intel-rapl:N/energy_uj``),
   cumulative, so two reads suffice.
2. ``JetsonInaMeter`` -- the INA3221 power monitors on Jetson modules, which report instantaneous
   power, so a background thread samples and integrates it.
3. ``ModelMeter`` -- the CPU-time power model of ``edgeexit.profile.power`` with a device preset.

Every meter has the same two calls, ``start()`` and ``stop() -> EnergyReading``, and every reading
says where it came from (``source``: ``"rapl"``, ``"ina3221"``, ``"model:<preset>"``), because a
policy or a report must never mistake a model's guess for a measurement.

All sysfs paths hang off a ``root`` argument so the readers are tested against a directory tree
laid out like sysfs.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from edgeexit.errors import MeterUnavailable, UsageError
from edgeexit.profile.power import PowerPreset, get_preset, model_energy


@dataclass(frozen=True)
class EnergyReading:
    """Energy used between ``start()`` and ``stop()``, and which source measured or modelled it."""

    joules: float
    seconds: float
    source: str

    @property
    def watts(self) -> float:
        return self.joules / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Skipped:
    """A source ``best_meter`` did not use, and why."""

    source: str
    reason: str


class EnergyMeter(ABC):
    """start() / stop() around the work; also a context manager whose reading lands in ``last``."""

    source: str
    last: EnergyReading | None = None

    def __init__(self) -> None:
        self._t0: float | None = None

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._begin()

    def stop(self) -> EnergyReading:
        if self._t0 is None:
            raise UsageError(f"{type(self).__name__}.stop() called before start()")
        seconds = time.perf_counter() - self._t0
        joules = self._end(seconds)
        self._t0 = None
        self.last = EnergyReading(joules=joules, seconds=seconds, source=self.source)
        return self.last

    @abstractmethod
    def _begin(self) -> None: ...

    @abstractmethod
    def _end(self, seconds: float) -> float:
        """Joules since ``_begin``; ``seconds`` is the wall time the reading will report."""

    def __enter__(self) -> EnergyMeter:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def _read_number(path: Path) -> float:
    """One integer/float sysfs value; OSError (missing, permission, a directory) propagates."""
    return float(path.read_text().strip())


# --- Intel RAPL -------------------------------------------------------------------------------------------------

RAPL_ROOT = "/sys/class/powercap"
_PACKAGE = re.compile(r"^intel-rapl:\d+$")  # package domains; intel-rapl:0:0 (core, uncore, dram) are sub-domains


@dataclass(frozen=True)
class RaplDomain:
    path: Path
    name: str
    max_range_uj: float


def find_rapl_domains(root: str | Path = RAPL_ROOT) -> list[RaplDomain]:
    """The readable RAPL package domains under ``root``; MeterUnavailable says why there are none.

    Only packages are summed: sub-domains (core, dram) are inside their package's count, or, for
    dram on some servers, outside it but not on every machine, so adding them would make figures
    incomparable across hosts. Since Linux 5.10 ``energy_uj`` is root-only (CVE-2020-8694), so
    "not readable" is the common case for an unprivileged user.
    """
    base = Path(root)
    if not base.is_dir():
        raise MeterUnavailable(f"no powercap directory at {base} (not Linux, or no RAPL driver)")
    candidates = sorted(p for p in base.iterdir() if _PACKAGE.match(p.name))
    if not candidates:
        raise MeterUnavailable(f"no intel-rapl:N package domains under {base} (not an Intel/AMD RAPL machine)")
    domains = []
    for path in candidates:
        try:
            _read_number(path / "energy_uj")
            max_range = _read_number(path / "max_energy_range_uj")
        except (OSError, ValueError) as error:
            raise MeterUnavailable(
                f"{path / 'energy_uj'} is not readable ({type(error).__name__}: {error}); since Linux 5.10 it is "
                "root-only: run as root or `chmod a+r` it"
            ) from error
        try:
            name = (path / "name").read_text().strip()
        except OSError:
            name = path.name
        domains.append(RaplDomain(path=path, name=name, max_range_uj=max_range))
    return domains


def rapl_delta_uj(start: float, end: float, max_range_uj: float) -> float:
    """Counter increase from ``start`` to ``end`` allowing one wraparound at ``max_range_uj``.

    A counter that wrapped more than once between two reads cannot be told apart; the range is
    ~262 kJ on common parts (over an hour at 60 W), far longer than a profiled segment.
    """
    return end - start if end >= start else end + max_range_uj - start


class RaplMeter(EnergyMeter):
    """Sum of the RAPL package domains: CPU package energy (not the whole board, not the screen)."""

    source = "rapl"

    def __init__(self, root: str | Path = RAPL_ROOT) -> None:
        super().__init__()
        self.domains = find_rapl_domains(root)
        self._start: list[float] = []

    def _read(self) -> list[float]:
        return [_read_number(d.path / "energy_uj") for d in self.domains]

    def _begin(self) -> None:
        self._start = self._read()

    def _end(self, seconds: float) -> float:
        end = self._read()
        micro = sum(rapl_delta_uj(s, e, d.max_range_uj) for s, e, d in zip(self._start, end, self.domains, strict=True))
        return micro / 1e6


# --- Jetson INA3221 ---------------------------------------------------------------------------------------------
# Layouts (paths relative to /sys/bus/i2c/drivers):
# - mainline hwmon driver (JetPack 5+, e.g. Orin): ina3221/<bus-addr>/hwmon/hwmonN/in{1,2,3}_label,
#   in{1,2,3}_input (bus voltage, mV), curr{1,2,3}_input (current, mA) -- Linux kernel documentation,
#   Documentation/hwmon/ina3221.rst, https://kernel.org/doc/Documentation/hwmon/ina3221.rst
# - NVIDIA's L4T staging IIO driver (JetPack 4, e.g. Nano): ina3221x/<bus-addr>/iio:deviceN/in_power{0,1,2}_input
#   (mW) with rail_name_{0,1,2} -- L4T nvidia/drivers/staging/iio/meter/ina3221.c, as read by energymon's Jetson
#   backend (github.com/energymon/energymon, jetson/) and alumet's nvidia-jetson plugin, which notes the driver dir
#   is "ina3221" on modern and "ina3221x" on older systems.
# Rail names per module (energymon jetson/JetsonPowerRails.md): Nano POM_5V_IN / POM_5V_GPU / POM_5V_CPU;
# Orin Nano / NX VDD_IN / VDD_CPU_GPU_CV / VDD_SOC. The *_IN rail is the module's total input; the others are parts
# of it, so summing all rails would double count.

INA_DRIVERS = "sys/bus/i2c/drivers"
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN", "5V_IN")  # the module input rail, preferred when present


@dataclass(frozen=True)
class InaRail:
    """One monitored rail; power is read from one mW file or from a mA and a mV file."""

    label: str
    power_mw: Path | None = None
    current_ma: Path | None = None
    voltage_mv: Path | None = None

    def watts(self) -> float:
        if self.power_mw is not None:
            return _read_number(self.power_mw) / 1000.0
        if self.current_ma is None or self.voltage_mv is None:
            raise UsageError(f"INA3221 rail {self.label!r} has neither a power file nor current and voltage")
        return _read_number(self.current_ma) * _read_number(self.voltage_mv) / 1e6


def _hwmon_rails(drivers: Path) -> list[InaRail]:
    rails = []
    for label_file in sorted(drivers.glob("ina3221*/*/hwmon/hwmon*/in*_label")):
        channel = label_file.name.removeprefix("in").removesuffix("_label")
        current, voltage = label_file.parent / f"curr{channel}_input", label_file.parent / f"in{channel}_input"
        if current.exists() and voltage.exists():  # in7 ("sum of shunt voltage") has no current: skip
            rails.append(InaRail(label_file.read_text().strip(), current_ma=current, voltage_mv=voltage))
    return rails


def _iio_rails(drivers: Path) -> list[InaRail]:
    rails = []
    for power in sorted(drivers.glob("ina3221*/*/iio:device*/in_power*_input")):
        channel = power.name.removeprefix("in_power").removesuffix("_input")
        name_file = power.parent / f"rail_name_{channel}"
        label = name_file.read_text().strip() if name_file.exists() else f"{power.parent.name}/power{channel}"
        rails.append(InaRail(label, power_mw=power))
    return rails


def find_ina_rails(root: str | Path = "/", rails: Sequence[str] | None = None) -> list[InaRail]:
    """The INA3221 rails to sum: ``rails`` by label if given, else the module input rail if there is
    one, else every rail. MeterUnavailable if there are none or they cannot be read."""
    drivers = Path(root) / INA_DRIVERS
    found = _hwmon_rails(drivers) + _iio_rails(drivers)
    if not found:
        raise MeterUnavailable(f"no INA3221 rails under {drivers}/ina3221*/ (not a Jetson with power monitors)")
    if rails is not None:
        chosen = [r for r in found if r.label in rails]
        missing = sorted(set(rails) - {r.label for r in chosen})
        if missing:
            raise MeterUnavailable(f"INA3221 rails {missing} not found; present: {sorted(r.label for r in found)}")
    else:
        total = [r for r in found if r.label in TOTAL_RAILS]
        chosen = total[:1] or found
    for rail in chosen:
        try:
            rail.watts()
        except (OSError, ValueError) as error:
            raise MeterUnavailable(f"INA3221 rail {rail.label!r} is not readable ({error})") from error
    return chosen


def integrate(samples: Sequence[tuple[float, float]]) -> float:
    """Joules from (time s, power W) samples by the trapezoid rule: exact for piecewise-linear power."""
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in itertools.pairwise(samples))


class JetsonInaMeter(EnergyMeter):
    """Integrates INA3221 rail power sampled every ``interval_s`` in a background thread.

    The INA3221 reports instantaneous (averaged over its conversion time) power, not energy, so the
    resolution is the sampling interval; 50 ms default costs well under 1% of a core.
    """

    source = "ina3221"

    def __init__(
        self,
        root: str | Path = "/",
        *,
        rails: Sequence[str] | None = None,
        interval_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if interval_s <= 0:
            raise UsageError(f"interval_s must be > 0, got {interval_s}")
        self.rails = find_ina_rails(root, rails)
        self.interval_s = interval_s
        self._clock = clock
        self._samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def samples(self) -> tuple[tuple[float, float], ...]:
        """The (time, watts) points of the current or last measurement."""
        return tuple(self._samples)

    def sample(self) -> tuple[float, float]:
        """One (time, watts) point, summed over the chosen rails."""
        point = (self._clock(), sum(rail.watts() for rail in self.rails))
        self._samples.append(point)
        return point

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def _begin(self) -> None:
        self._samples = []
        self._stop.clear()
        self.sample()
        self._thread = threading.Thread(target=self._run, name="edgeexit-ina3221", daemon=True)
        self._thread.start()

    def _end(self, seconds: float) -> float:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        return integrate(self._samples)


# --- power model ------------------------------------------------------------------------------------------------


class ModelMeter(EnergyMeter):
    """Energy from the preset's power model and this process's CPU time (psutil user + system)."""

    def __init__(self, preset: str | PowerPreset, *, pid: int | None = None) -> None:
        import psutil  # the [device] extra; imported here so the readers above work without it

        super().__init__()
        self.preset = get_preset(preset)
        self.source = f"model:{self.preset.name}"
        self._process = psutil.Process(pid)
        self._cpu0 = 0.0

    def _cpu(self) -> float:
        times = self._process.cpu_times()
        return times.user + times.system

    def _begin(self) -> None:
        self._cpu0 = self._cpu()

    def _end(self, seconds: float) -> float:
        return model_energy(self.preset, seconds, self._cpu() - self._cpu0)


# --- choice -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeterChoice:
    """The meter ``best_meter`` picked and, for every better source it passed over, the reason."""

    meter: EnergyMeter
    skipped: tuple[Skipped, ...]

    @property
    def source(self) -> str:
        return self.meter.source


def best_meter(root: str | Path = "/", *, preset: str | PowerPreset, interval_s: float = 0.05) -> MeterChoice:
    """RAPL if readable, else Jetson INA3221 if present, else the power model with ``preset``.

    ``root`` is the filesystem root the sysfs paths hang off (``/`` on a device; a fake tree in tests).
    """
    skipped = []
    try:
        return MeterChoice(RaplMeter(Path(root) / RAPL_ROOT.lstrip("/")), ())
    except MeterUnavailable as error:
        skipped.append(Skipped("rapl", str(error)))
    try:
        return MeterChoice(JetsonInaMeter(root, interval_s=interval_s), tuple(skipped))
    except MeterUnavailable as error:
        skipped.append(Skipped("ina3221", str(error)))
    return MeterChoice(ModelMeter(preset), tuple(skipped))
