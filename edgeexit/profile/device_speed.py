"""Device speed presets: how much slower than this machine a target device runs the same network.

``edgeexit bench --device-speed rpi4`` emulates a Raspberry Pi 4 on a workstation: every segment
the device runs takes ``factor`` x its measured time here (``edgeexit.device.speed``), while the
tail server runs at this machine's speed. Offloading pays exactly when the device is slow relative
to the link and the server, so the factor decides where the Neurosurgeon crossover falls; it must
come from a measurement, not a guess.

A preset is a ratio of two measurements of the same network at the same resolution and batch 1:
a published figure on the target (``target_ms``, with its source) over our own on the reference
machine (``reference_ms``, with the command that measured it). Both sides are fp32 CPU inference.
The reference measurement is of *this* project's VM (AMD EPYC, AVX2, 1 ONNX Runtime thread);
on another host the same command gives its own ``reference_ms``, and a float factor
(``--device-speed 4.5``) states one directly.

Registered like the power and radio presets (timm-style, ``edgeexit.registry``), so
``--device-speed`` and ``get_device_speed`` share one list and a typo lists the known names.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeexit.errors import UsageError
from edgeexit.registry import Registry


@dataclass(frozen=True)
class DeviceSpeed:
    """A target device's speed relative to this machine: segments take ``factor`` x as long there.

    ``target_ms`` / ``reference_ms``: the two measurements ``factor`` is the ratio of (None for a
    factor given directly); ``source`` says where each comes from."""

    name: str
    factor: float
    source: str
    target_ms: float | None = None
    reference_ms: float | None = None

    def __post_init__(self) -> None:
        if not self.factor >= 1.0:
            raise UsageError(
                f"device speed {self.name!r}: factor {self.factor} would make the device faster than this machine; "
                "expected a slowdown factor >= 1 (1: this machine's own speed)"
            )
        if not self.source.strip():
            raise UsageError(f"device speed {self.name!r} has no source; every factor must say where it is from")

    @property
    def label(self) -> str:
        """How tables name it: ``rpi4 (x5.2)``, ``host (x1)``."""
        return f"{self.name} (x{self.factor:.3g})"

    @classmethod
    def from_measurements(cls, name: str, target_ms: float, reference_ms: float, source: str) -> DeviceSpeed:
        if not (target_ms > 0 and reference_ms > 0):
            raise UsageError(f"device speed {name!r}: both measurements must be above 0 ms, got "
                             f"{target_ms} and {reference_ms}")  # fmt: skip
        return cls(name, target_ms / reference_ms, source, target_ms, reference_ms)


SPEEDS: Registry[DeviceSpeed] = Registry("device speed")


def register_speed(speed: DeviceSpeed) -> DeviceSpeed:
    """Add a preset (e.g. your own board's ratio) so ``--device-speed NAME`` finds it."""
    return SPEEDS.register(speed.name)(speed)


def get_device_speed(value: str | float | DeviceSpeed | None) -> DeviceSpeed:
    """A preset by name (``host``, ``rpi4``), or a factor given as a number or a numeric string
    (``"4.5"``); None is ``host``. An unknown name lists the known ones."""
    if value is None:
        return SPEEDS.get("host")
    if isinstance(value, DeviceSpeed):
        return value
    if isinstance(value, (int, float)):
        return DeviceSpeed(f"x{value:g}", float(value), "a factor given directly")
    text = value.strip().lower()
    try:
        factor = float(text.removeprefix("x"))
    except ValueError:
        return SPEEDS.get(text)
    return DeviceSpeed(f"x{factor:g}", factor, "a factor given directly")


def list_speeds(pattern: str = "*") -> list[str]:
    return SPEEDS.names(pattern)


register_speed(DeviceSpeed("host", 1.0, "this machine: no emulation"))

#: Raspberry Pi 4 Model B (BCM2711, 4x Cortex-A72 @ 1.5 GHz), EfficientNet-Lite0's nearest
#: published sibling on it. Target: XNNPACK's README, "Raspberry Pi" table
#: (https://github.com/google/XNNPACK/blob/master/README.md#raspberry-pi, benchmarked 2020-02-12 with
#: `end2end-bench --benchmark_min_time=5`, Raspbian Buster, CMake build, randomized weights):
#: MobileNet v2 1.0X (224x224, fp32, batch 1) **44 ms** on RPi 4, multi-threaded (4 threads). XNNPACK is
#: TensorFlow Lite's CPU backend, i.e. the fastest stock way to run this network on a Pi. EfficientNet-Lite0
#: (407M MAdds) is about 1.3x MobileNet v2 (300M MAdds); the one Pi 4 figure found for it, 49 ms
#: (TFLite, CPU, threads not stated; dev.to/tildalice "MobileNet vs EfficientNet-Lite: Pi 4 First Model
#: 38ms Gap"), is consistent with that, but states too little to cite as the basis.
#: Reference: EfficientNet-Lite0 at 224x224, fp32, batch 1, 1 ONNX Runtime thread on this VM: 8.66 ms for the
#: monolithic graph (9.27 ms segmented) in docs/benchmarks.md, "Pretrained backbones: EfficientNet-Lite0"
#: (`python tools/bench_models.py --model efficientnet ... --latency-samples 40`, 2026-11-23, a quiet machine),
#: scaled by the MAdds ratio 300/407 to MobileNet v2's work: 6.38 ms. (Re-measured for this preset with
#: `python tools/bench_policy.py --measure-reference PKG224` while six other jobs shared the 2 cores: 30.6 ms,
#: rounds 21.9-33.1, i.e. the neighbours' load, not the CPU; the quiet-machine figure is the reference.)
#: Factor: 44 / 6.38 = 6.9. The MAdds scaling is an approximation (depthwise-heavy MobileNet v2 runs
#: fewer MAdds per ms than EfficientNet-Lite0's wider convolutions on both CPUs).
#: Conservative: the Pi figure uses all 4 cores while the emulated device runs 1 thread, so a
#: single-threaded Pi would be slower still (XNNPACK's own Pi 4 issue #814 reports 1-thread
#: MobileNet v1 at 2.2x its 4-thread time), and a slower device only favours offloading more.
RPI4_TARGET_MS = 44.0
RPI4_REFERENCE_MS = 8.66 * 300.0 / 407.0
register_speed(
    DeviceSpeed.from_measurements(
        "rpi4",
        RPI4_TARGET_MS,
        RPI4_REFERENCE_MS,
        "target: XNNPACK README (github.com/google/XNNPACK#raspberry-pi), MobileNet v2 1.0X 224x224 fp32, "
        "RPi 4 (BCM2711), 4 threads: 44 ms; reference: EfficientNet-Lite0 224x224 fp32 on this VM, 1 ONNX Runtime "
        "thread, 8.66 ms (docs/benchmarks.md), scaled by 300/407 MAdds to MobileNet v2's work (6.38 ms)",
    )
)
