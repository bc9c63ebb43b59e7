"""Energy meters: RAPL and INA3221 readers against fake sysfs trees, the power model for real, and the
choice between them. No assertion depends on how long anything took."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edgeexit.errors import EdgeExitError
from edgeexit.profile import (
    EnergyReading,
    JetsonInaMeter,
    MeterUnavailable,
    ModelMeter,
    RaplMeter,
    best_meter,
    get_preset,
)
from edgeexit.profile.meters import find_ina_rails, integrate, rapl_delta_uj

# --- fake trees -------------------------------------------------------------------------------------------------


def make_rapl(root: Path, packages: dict[int, int], max_range: int = 262_143_328_850) -> Path:
    """``root``/sys/class/powercap with intel-rapl:N packages (energy_uj values) and one core sub-domain."""
    powercap = root / "sys/class/powercap"
    for index, energy in packages.items():
        package = powercap / f"intel-rapl:{index}"
        package.mkdir(parents=True)
        (package / "name").write_text(f"package-{index}\n")
        (package / "energy_uj").write_text(f"{energy}\n")
        (package / "max_energy_range_uj").write_text(f"{max_range}\n")
        core = powercap / f"intel-rapl:{index}:0"  # a sub-domain: must not be added on top of its package
        core.mkdir()
        (core / "energy_uj").write_text("999999999\n")
    return powercap


def set_energy(powercap: Path, index: int, energy: int) -> None:
    (powercap / f"intel-rapl:{index}" / "energy_uj").write_text(f"{energy}\n")


def make_hwmon(root: Path, rails: dict[int, tuple[str, float, float]]) -> Path:
    """Mainline ina3221 hwmon layout: channel -> (label, mA, mV), plus the in7 shunt-sum channel."""
    hwmon = root / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    hwmon.mkdir(parents=True)
    for channel, (label, milliamps, millivolts) in rails.items():
        (hwmon / f"in{channel}_label").write_text(f"{label}\n")
        (hwmon / f"curr{channel}_input").write_text(f"{milliamps:g}\n")
        (hwmon / f"in{channel}_input").write_text(f"{millivolts:g}\n")
    (hwmon / "in7_label").write_text("sum of shunt voltage\n")  # no curr7: not a rail
    (hwmon / "in7_input").write_text("120\n")
    return hwmon


def make_iio(root: Path, rails: dict[int, tuple[str, float]]) -> Path:
    """L4T (JetPack 4) ina3221x IIO layout: channel -> (rail name, mW)."""
    device = root / "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    device.mkdir(parents=True)
    for channel, (label, milliwatts) in rails.items():
        (device / f"rail_name_{channel}").write_text(f"{label}\n")
        (device / f"in_power{channel}_input").write_text(f"{milliwatts:g}\n")
    return device


# --- RAPL -------------------------------------------------------------------------------------------------------


def test_rapl_sums_package_domains_between_reads(tmp_path: Path) -> None:
    powercap = make_rapl(tmp_path, {0: 1_000_000, 1: 5_000_000})
    meter = RaplMeter(powercap)
    assert [d.name for d in meter.domains] == ["package-0", "package-1"]
    meter.start()
    set_energy(powercap, 0, 3_500_000)  # +2.5 J
    set_energy(powercap, 1, 5_500_000)  # +0.5 J
    reading = meter.stop()
    assert reading.source == "rapl"
    assert reading.joules == pytest.approx(3.0)
    assert reading.seconds >= 0


def test_rapl_handles_counter_wraparound(tmp_path: Path) -> None:
    powercap = make_rapl(tmp_path, {0: 999_000}, max_range=1_000_000)
    with RaplMeter(powercap) as meter:
        set_energy(powercap, 0, 4_000)  # wrapped: 1_000 uJ to the top, then 4_000 uJ
    assert meter.last is not None
    assert meter.last.joules == pytest.approx(5_000 / 1e6)
    assert rapl_delta_uj(10, 30, 100) == 20
    assert rapl_delta_uj(90, 5, 100) == 15


def test_rapl_unreadable_counter_is_unavailable_with_the_reason(tmp_path: Path) -> None:
    # Tests run as root, where chmod 000 does not block reads; a directory where the file should be
    # fails the read the same way (an OSError) for every user.
    powercap = tmp_path / "sys/class/powercap/intel-rapl:0"
    (powercap / "energy_uj").mkdir(parents=True)
    (powercap / "max_energy_range_uj").write_text("1000\n")
    with pytest.raises(MeterUnavailable, match=r"energy_uj is not readable .*root-only"):
        RaplMeter(powercap.parent)


def test_rapl_missing_tree_or_no_packages_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(MeterUnavailable, match="no powercap directory"):
        RaplMeter(tmp_path / "nope")
    (tmp_path / "powercap/dtpm").mkdir(parents=True)  # a powercap class without RAPL (an Arm board)
    with pytest.raises(MeterUnavailable, match="no intel-rapl:N package domains"):
        RaplMeter(tmp_path / "powercap")


# --- Jetson INA3221 ---------------------------------------------------------------------------------------------


def test_hwmon_layout_prefers_the_module_input_rail(tmp_path: Path) -> None:
    make_hwmon(tmp_path, {1: ("VDD_IN", 1000, 5000), 2: ("VDD_CPU_GPU_CV", 400, 5000), 3: ("VDD_SOC", 200, 5000)})
    rails = find_ina_rails(tmp_path)
    assert [r.label for r in rails] == ["VDD_IN"]  # the others are inside VDD_IN: summing would double count
    assert rails[0].watts() == pytest.approx(5.0)  # 1000 mA * 5000 mV
    chosen = find_ina_rails(tmp_path, rails=["VDD_CPU_GPU_CV", "VDD_SOC"])
    assert sum(r.watts() for r in chosen) == pytest.approx(3.0)
    with pytest.raises(MeterUnavailable, match=r"\['VDD_GPU'\] not found"):
        find_ina_rails(tmp_path, rails=["VDD_GPU"])


def test_iio_layout_reads_milliwatts(tmp_path: Path) -> None:
    make_iio(tmp_path, {0: ("POM_5V_IN", 4200), 1: ("POM_5V_GPU", 300), 2: ("POM_5V_CPU", 1200)})
    rails = find_ina_rails(tmp_path)
    assert [r.label for r in rails] == ["POM_5V_IN"]
    assert rails[0].watts() == pytest.approx(4.2)


def test_without_an_input_rail_every_rail_is_summed(tmp_path: Path) -> None:
    make_iio(tmp_path, {0: ("GPU", 1000), 1: ("CPU", 2000)})
    assert sum(r.watts() for r in find_ina_rails(tmp_path)) == pytest.approx(3.0)


def test_integrate_is_the_trapezoid_rule() -> None:
    assert integrate([(0.0, 2.0), (1.0, 4.0), (3.0, 4.0)]) == pytest.approx(3.0 + 8.0)
    assert integrate([(5.0, 1.0)]) == 0.0


def test_ina_meter_integrates_sampled_power_with_its_clock(tmp_path: Path) -> None:
    hwmon = make_hwmon(tmp_path, {1: ("VDD_IN", 1000, 5000)})
    ticks = iter(range(1000))
    meter = JetsonInaMeter(tmp_path, interval_s=3600, clock=lambda: float(next(ticks)))  # the thread never samples
    meter.start()  # t=0, 5 W
    (hwmon / "curr1_input").write_text("2000\n")
    meter.sample()  # t=1, 10 W
    reading = meter.stop()  # t=2, 10 W
    assert reading.source == "ina3221"
    assert reading.joules == pytest.approx((5 + 10) / 2 + 10)


def test_ina_meter_background_thread_integrates_constant_power(tmp_path: Path) -> None:
    make_iio(tmp_path, {0: ("POM_5V_IN", 4000)})
    times = iter(i * 0.01 for i in range(100_000))  # a fake clock: energy does not depend on real timing
    meter = JetsonInaMeter(tmp_path, interval_s=0.001, clock=lambda: next(times))
    meter.start()
    for _ in range(10_000):  # let the thread take a few samples (bounded, so a dead thread fails, not hangs)
        if len(meter.samples) >= 5:
            break
        time.sleep(0.001)
    reading = meter.stop()
    samples = len(meter.samples)
    assert samples >= 6  # start, >= 4 from the thread, stop
    assert reading.joules == pytest.approx(4.0 * 0.01 * (samples - 1))


def test_no_ina_tree_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(MeterUnavailable, match="no INA3221 rails"):
        JetsonInaMeter(tmp_path)
    make_iio(tmp_path, {0: ("POM_5V_IN", 1)})
    with pytest.raises(EdgeExitError, match="interval_s"):
        JetsonInaMeter(tmp_path, interval_s=0)


# --- power model, for real --------------------------------------------------------------------------------------


def burn_cpu(iterations: int = 2_000_000) -> int:
    total = 0
    for i in range(iterations):
        total += i * i % 7
    return total


def test_model_meter_is_between_idle_and_active_power() -> None:
    preset = get_preset("rpi4")
    with ModelMeter("rpi4") as meter:
        burn_cpu()
    reading = meter.last
    assert isinstance(reading, EnergyReading)
    assert reading.source == "model:rpi4"
    assert reading.seconds > 0
    # CPU time was spent, so above the idle floor; one busy thread cannot exceed full load.
    assert preset.idle_w * reading.seconds < reading.joules <= preset.active_w * reading.seconds * (1 + 1e-6)


def test_stop_before_start_is_an_error() -> None:
    with pytest.raises(EdgeExitError, match="before start"):
        ModelMeter("rpi5").stop()


# --- choice -----------------------------------------------------------------------------------------------------


def test_best_meter_prefers_rapl_then_ina_then_model(tmp_path: Path) -> None:
    make_hwmon(tmp_path, {1: ("VDD_IN", 1000, 5000)})
    make_rapl(tmp_path, {0: 0})
    choice = best_meter(tmp_path, preset="orin-nano")
    assert choice.source == "rapl"
    assert choice.skipped == ()

    (tmp_path / "sys/class/powercap/intel-rapl:0/max_energy_range_uj").unlink()  # RAPL now unreadable
    choice = best_meter(tmp_path, preset="orin-nano")
    assert choice.source == "ina3221"
    assert [s.source for s in choice.skipped] == ["rapl"]
    assert "not readable" in choice.skipped[0].reason


def test_best_meter_falls_back_to_the_model_and_says_why(tmp_path: Path) -> None:
    choice = best_meter(tmp_path, preset="jetson-nano")
    assert choice.source == "model:jetson-nano"
    reasons = {s.source: s.reason for s in choice.skipped}
    assert set(reasons) == {"rapl", "ina3221"}
    assert "no powercap directory" in reasons["rapl"]
    assert "no INA3221 rails" in reasons["ina3221"]


def test_best_meter_with_an_unknown_preset_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(EdgeExitError, match=r"unknown power preset 'rpi3'; expected one of: jetson-nano, orin-nano"):
        best_meter(tmp_path, preset="rpi3")
