"""Device speed presets: how much slower than this machine a target device runs the same network.

``edgeexit bench --device-speed rpi4`` emulates a Raspberry Pi 4 on a workstation: every segment
the device runs takes ``factor`` x its measured time here (``edgeexit.device.speed``), while the
tail server runs at this machine's speed. Offloading pays exactly when the device is slow relative
to the link and the server, so the factor decides where the Neurosurgeon crossover falls; it must
come from a measurement, not a guess.

A preset is a ratio of two measurements of the same network at the same resolution and batch 1:
a published figure on the target (``target_ms``, with its source) over our own on the reference
machine (``reference_ms``, with the command that measured it). Both sides are fp32 CPU inference.
The reference measurement is of *this* project's VM (AMD EPYC, AVX2, 1 ONNX Runtime thread), and
a factor is a ratio to one machine: on a host 2.2x faster than that VM (measured: a later EPYC VM
ran the same reference in 4.24 ms against 9.27), ``rpi4``'s 6.89 emulates a device 2.2x faster than
a Pi 4. So a preset that names its reference network (``reference``) can be re-based on the host it
runs on: ``DeviceSpeed.on_host`` takes the reference's time measured here
(``edgeexit.device.speed.calibrate_to_host``, ``edgeexit bench --speed-reference PKG``) and gives the
factor that makes this host's segments take the target's time. A float factor (``--device-speed
4.5``) states one directly.

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
    #: the reference network to measure on a host to re-base the factor there (``on_host``):
    #: ``(model_name, input_shape)`` as a package's manifest records them; None: not re-basable
    reference: tuple[str, tuple[int, ...]] | None = None
    #: the target network's work per unit of the reference's (e.g. MAdds 300/407): reference time
    #: x this = the target network's time on the same host
    reference_work: float = 1.0
    #: whether ``reference_ms`` was measured on the host this runs on (``on_host``)
    on_this_host: bool = False

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
        """How tables name it: ``rpi4 (x6.89)``, ``rpi4 (x14.1, this host)`` once re-based, ``host (x1)``."""
        return f"{self.name} (x{self.factor:.3g}{', this host' if self.on_this_host else ''})"

    @classmethod
    def from_measurements(cls, name: str, target_ms: float, reference_ms: float, source: str, *,
                          reference: tuple[str, tuple[int, ...]] | None = None,
                          reference_work: float = 1.0) -> DeviceSpeed:  # fmt: skip
        """``target_ms`` (the target's time) over ``reference_ms`` (the same work on the reference
        machine); ``reference`` and ``reference_work`` as on the fields, for ``on_host``."""
        if not (target_ms > 0 and reference_ms > 0):
            raise UsageError(f"device speed {name!r}: both measurements must be above 0 ms, got "
                             f"{target_ms} and {reference_ms}")  # fmt: skip
        return cls(name, target_ms / reference_ms, source, target_ms, reference_ms, reference, reference_work)

    def on_host(self, measured_ms: float) -> DeviceSpeed:
        """This preset re-based on the host that measured its reference network in ``measured_ms``
        (full depth, batch 1, 1 ONNX Runtime thread): the factor that makes a segment here take
        what it would take on the target."""
        if self.reference is None or self.target_ms is None:
            raise UsageError(
                f"device speed {self.name!r} names no reference network to measure on this host; "
                "expected a preset with one (e.g. rpi4), or give the factor itself (--device-speed 4.5)"
            )
        if not (measured_ms > 0 and measured_ms == measured_ms):
            raise UsageError(
                f"device speed {self.name!r}: the reference's time here must be above 0 ms, got {measured_ms}"
            )
        here = measured_ms * self.reference_work
        source = (f"{self.source}; re-based on this host: its reference measured here in {measured_ms:.2f} ms "
                  f"({here:.2f} ms of the target network's work)")  # fmt: skip
        return DeviceSpeed(self.name, self.target_ms / here, source, self.target_ms, here, self.reference,
                           self.reference_work, on_this_host=True)  # fmt: skip


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
#: Factor: 44 / 6.38 = 6.9 on that VM (re-based on another host by measuring the same reference there:
#: ``DeviceSpeed.on_host``). The MAdds scaling is an approximation (depthwise-heavy MobileNet v2 runs
#: fewer MAdds per ms than EfficientNet-Lite0's wider convolutions on both CPUs).
#: Conservative: the Pi figure uses all 4 cores while the emulated device runs 1 thread, so a
#: single-threaded Pi would be slower still (XNNPACK's own Pi 4 issue #814 reports 1-thread
#: MobileNet v1 at 2.2x its 4-thread time), and a slower device only favours offloading more.
RPI4_TARGET_MS = 44.0
#: MobileNet v2's MAdds over EfficientNet-Lite0's: the reference's time x this = MobileNet v2's
RPI4_REFERENCE_WORK = 300.0 / 407.0
RPI4_REFERENCE_MS = 8.66 * RPI4_REFERENCE_WORK
#: The network to measure on a host to re-base the factor there: ``edgeexit export efficientnet_lite0
#: --input-shape 1,3,224,224``'s package
RPI4_REFERENCE = ("efficientnet_lite0", (3, 224, 224))
register_speed(
    DeviceSpeed.from_measurements(
        "rpi4",
        RPI4_TARGET_MS,
        RPI4_REFERENCE_MS,
        "target: XNNPACK README (github.com/google/XNNPACK#raspberry-pi), MobileNet v2 1.0X 224x224 fp32, "
        "RPi 4 (BCM2711), 4 threads: 44 ms; reference: EfficientNet-Lite0 224x224 fp32 on this VM, 1 ONNX Runtime "
        "thread, 8.66 ms (docs/benchmarks.md), scaled by 300/407 MAdds to MobileNet v2's work (6.38 ms)",
        reference=RPI4_REFERENCE,
        reference_work=RPI4_REFERENCE_WORK,
    )
)
