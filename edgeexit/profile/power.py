"""Device power presets and the CPU-time power model (numpy-free, psutil only at the call site).

A Raspberry Pi or a Jetson without a readable power sensor still needs an energy figure for the
offload policy, so edgeexit estimates one from two published numbers per device: the board's idle
power and its power with every core busy. Between them the model is linear in CPU utilization,
the usual first-order model for a CPU-bound workload (it ignores DVFS, memory and GPU power).

Every preset carries ``source``: where its numbers come from, so a figure derived from it can say
so. Values that could not be traced to a publication are marked ``estimate=True``.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeexit.errors import UsageError
from edgeexit.registry import Registry


@dataclass(frozen=True)
class PowerPreset:
    """Whole-board power of one device class, as measured at its supply.

    ``active_w`` is the power with all ``cores`` busy (a ``stress``-style CPU load), so a process
    that keeps one core of four busy is at a quarter of the way from ``idle_w`` to ``active_w``.
    """

    name: str
    idle_w: float
    active_w: float
    cores: int
    source: str
    estimate: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.idle_w <= self.active_w:
            raise UsageError(f"power preset {self.name!r}: need 0 <= idle_w <= active_w, got {self}")
        if self.cores < 1:
            raise UsageError(f"power preset {self.name!r}: cores must be >= 1, got {self.cores}")
        if not self.source.strip():
            raise UsageError(f"power preset {self.name!r} has no source; every figure must say where it is from")


PRESETS: Registry[PowerPreset] = Registry("power preset")


def register_preset(preset: PowerPreset) -> PowerPreset:
    """Add a preset (e.g. one measured on your own board) so ``get_preset`` and ``best_meter`` find it."""
    return PRESETS.register(preset.name)(preset)


def get_preset(name: str | PowerPreset) -> PowerPreset:
    """A preset by name; an unknown name is an error that lists the known presets."""
    return name if isinstance(name, PowerPreset) else PRESETS.get(name)


def list_presets(pattern: str = "*") -> list[str]:
    return PRESETS.names(pattern)


def busy_fraction(cpu_s: float, wall_s: float, cores: int) -> float:
    """The share of the device's total CPU capacity used: cpu_s / (wall_s * cores), clamped to [0, 1].

    Clamped because the process may run on a host with more cores than the preset's device (a
    laptop replaying a Pi profile), where the raw ratio can exceed one.
    """
    if wall_s <= 0:
        return 0.0
    return min(1.0, max(0.0, cpu_s / (wall_s * cores)))


def model_energy(preset: PowerPreset, wall_s: float, cpu_s: float) -> float:
    """Energy in joules over ``wall_s`` seconds during which the process used ``cpu_s`` CPU seconds.

        E = idle_W * wall + (active_W - idle_W) * busy * wall,   busy = cpu / (wall * cores)

    The idle term is the board's floor (it is paid whether or not the model runs, which is what a
    battery sees); the second term is the extra power of the busy cores. CPU time is process
    user + system time from psutil, so ONNX Runtime's intra-op threads count.
    """
    if wall_s < 0 or cpu_s < 0:
        raise UsageError(f"wall and CPU time must be >= 0, got wall={wall_s} cpu={cpu_s}")
    busy = busy_fraction(cpu_s, wall_s, preset.cores)
    return preset.idle_w * wall_s + (preset.active_w - preset.idle_w) * busy * wall_s


# --- presets ----------------------------------------------------------------------------------------------------
# Measured at the USB / barrel supply, headless unless noted. Sources were located through mirrors and
# excerpts; the URL given is the original publication.

register_preset(
    PowerPreset(
        name="rpi4",
        # Jeff Geerling, "Power Consumption Benchmarks", https://www.pidramble.com/wiki/benchmarks/power-consumption
        # Pi 4 Model B: idle 540 mA @ 5 V = 2.7 W; 400% CPU load (`stress --cpu 4`) 1280 mA = 6.4 W.
        idle_w=2.7,
        active_w=6.4,
        cores=4,
        source="pidramble.com/wiki/benchmarks/power-consumption (Jeff Geerling): Pi 4 B idle 540 mA = 2.7 W, "
        "stress --cpu 4 1280 mA = 6.4 W",
    )
)

register_preset(
    PowerPreset(
        name="rpi5",
        # No first-party figure found. A published community test (GitHub README "MY Pi5 PERFORMANCE TESTS",
        # Pi 5 8 GB in the official case) reports 3 W / 0.6 A idle and 7.2 W / 1.4 A with four cores under
        # stress for 5 minutes. Raspberry Pi's product brief gives only the 27 W (5.1 V 5 A) supply rating.
        # Treat as an estimate until measured with a USB power meter.
        idle_w=3.0,
        active_w=7.2,
        cores=4,
        source="ESTIMATE: community measurement (GitHub 'MY Pi5 PERFORMANCE TESTS'): Pi 5 8GB idle 3 W, "
        "4-core stress 7.2 W; no Raspberry Pi Ltd figure found",
        estimate=True,
    )
)

register_preset(
    PowerPreset(
        name="jetson-nano",
        # Active: NVIDIA Jetson Nano module power budget is 10 W in the default MAXN nvpmodel mode (5 W mode
        # is the alternative), NVIDIA Jetson Nano Developer Kit / module data sheet,
        # https://developer.nvidia.com/embedded/jetson-nano -- a budget, not a measurement, so the CPU-only
        # load of edgeexit stays below it. Idle: no NVIDIA figure found; ~1.9 W SoC idle from a published
        # component power budget (saltylab-firmware jetson/docs/power-budget.md) -- an estimate.
        idle_w=1.9,
        active_w=10.0,
        cores=4,
        source="active: NVIDIA Jetson Nano MAXN 10 W nvpmodel budget (developer.nvidia.com/embedded/jetson-nano); "
        "idle: ESTIMATE ~1.9 W SoC from a published robot power budget",
        estimate=True,
    )
)

register_preset(
    PowerPreset(
        name="orin-nano",
        # Active: NVIDIA Jetson Orin Nano 8 GB module, 15 W power mode (7 W and 15 W modes; 25 W MAXN on
        # "Super" JetPack 6.2), NVIDIA Jetson Orin Nano series data sheet,
        # https://developer.nvidia.com/embedded/jetson-orin-nano -- a budget, not a measurement.
        # Idle: NVIDIA developer forum, "Jetson Orin Nano 8GB - Lowest Theoretical Operating Power Consumption"
        # (forums.developer.nvidia.com/t/348662): whole dev kit 2.6 W (Joulescope), tegrastats VDD_IN 2180 mW,
        # after trimming the device tree -- a lower bound; a stock image idles higher.
        idle_w=2.6,
        active_w=15.0,
        cores=6,
        source="active: NVIDIA Orin Nano 8GB 15 W power mode (developer.nvidia.com/embedded/jetson-orin-nano); "
        "idle: NVIDIA forum t/348662, dev kit 2.6 W at minimum config (lower bound)",
        estimate=True,
    )
)

register_preset(
    PowerPreset(
        name="x86-laptop",
        # No single published figure fits "a generic laptop". Active: 28 W, Intel's processor base power for
        # its P-series / U-series-class mobile parts (ark.intel.com); idle: ~5 W for a laptop with the screen
        # off is a typical value, not a citation. Prefer RaplMeter on x86, which measures.
        idle_w=5.0,
        active_w=28.0,
        cores=8,
        source="ESTIMATE: active = 28 W Intel mobile processor base power class (ark.intel.com); idle 5 W typical; "
        "on x86 prefer RAPL, which measures",
        estimate=True,
    )
)
