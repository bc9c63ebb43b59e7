"""Energy for the profiler and the offload policy (numpy/psutil only: never torch, onnx or compile).

What is here:

- ``meters``: ``EnergyMeter`` (``start()`` / ``stop() -> EnergyReading``, or ``with meter:``),
  ``RaplMeter`` (Intel RAPL package counters, wraparound-safe), ``JetsonInaMeter`` (INA3221 rails,
  hwmon and older IIO layouts, integrated in a sampling thread), ``ModelMeter`` (power model), and
  ``best_meter(root, preset=...)``: RAPL > INA3221 > model, with the reason each better source was
  skipped. Every ``EnergyReading`` carries ``source``: ``"rapl"``, ``"ina3221"`` or ``"model:<preset>"``.
- ``power``: device presets ``rpi4``, ``rpi5``, ``jetson-nano``, ``orin-nano``, ``x86-laptop`` (idle and
  full-load watts, each with its citation in ``source`` and ``estimate`` when unpublished) and
  ``model_energy``: E = idle * wall + (active - idle) * busy * wall, busy from psutil CPU time.
- ``radio``: ``wifi`` and ``lte`` upload presets (power linear in uplink Mbit/s plus a tail, Huang et
  al. MobiSys 2012), returning ``RadioEnergy`` split into transfer and tail; ``cost_model()`` gives
  the policies' ``RadioModel`` (watts).
- ``record``: ``Profile`` (``profile.json``: per-segment latency, exit-check cost and energy, peak RSS,
  encoded bytes per codec, the machine and thread count), ``save_profile`` / ``load_profile``,
  ``device_costs``: a profile as the policies' ``DeviceCosts``, and ``modelled_costs``: the same
  from segment latencies measured on the spot and a power and a radio preset.
- ``measure``: ``profile_package`` (what ``edgeexit profile`` runs; ONNX Runtime loaded lazily).
- ``plots``: latency per segment and the split-point picture (matplotlib, lazily: the [plots] extra).
"""

from __future__ import annotations

from edgeexit.profile.measure import profile_package
from edgeexit.profile.meters import (
    EnergyMeter,
    EnergyReading,
    JetsonInaMeter,
    MeterChoice,
    MeterUnavailable,
    ModelMeter,
    RaplMeter,
    Skipped,
    best_meter,
)
from edgeexit.profile.power import PRESETS, PowerPreset, get_preset, list_presets, model_energy, register_preset
from edgeexit.profile.radio import RADIOS, RadioEnergy, RadioPreset, get_radio, list_radios, register_radio
from edgeexit.profile.record import (
    EncodedSize,
    Machine,
    Profile,
    ProfileError,
    SegmentProfile,
    device_costs,
    load_profile,
    modelled_costs,
    save_profile,
)

__all__ = [
    "PRESETS",
    "RADIOS",
    "EncodedSize",
    "EnergyMeter",
    "EnergyReading",
    "JetsonInaMeter",
    "Machine",
    "MeterChoice",
    "MeterUnavailable",
    "ModelMeter",
    "PowerPreset",
    "Profile",
    "ProfileError",
    "RadioEnergy",
    "RadioPreset",
    "RaplMeter",
    "SegmentProfile",
    "Skipped",
    "best_meter",
    "device_costs",
    "get_preset",
    "get_radio",
    "list_presets",
    "list_radios",
    "load_profile",
    "model_energy",
    "modelled_costs",
    "profile_package",
    "register_preset",
    "register_radio",
    "save_profile",
]
