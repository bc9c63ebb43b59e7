"""Power presets, the CPU-time model and the radio models, against hand-computed numbers."""

from __future__ import annotations

import pytest

from edgeexit.errors import EdgeExitError
from edgeexit.profile import PowerPreset, get_preset, get_radio, list_presets, list_radios, model_energy
from edgeexit.profile.power import busy_fraction


def test_the_presets_the_issue_asks_for_exist_and_each_cites_its_source() -> None:
    assert list_presets() == ["jetson-nano", "orin-nano", "rpi4", "rpi5", "x86-laptop"]
    for name in list_presets():
        preset = get_preset(name)
        assert 0 < preset.idle_w < preset.active_w
        assert len(preset.source) > 20
        if not preset.estimate:
            assert "ESTIMATE" not in preset.source
    assert get_preset("rpi4").estimate is False  # a measured, published pair
    assert "pidramble" in get_preset("rpi4").source


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(EdgeExitError, match="expected one of: jetson-nano, orin-nano, rpi4, rpi5, x86-laptop"):
        get_preset("pi-zero")


def test_a_preset_without_a_source_or_with_idle_above_active_is_refused() -> None:
    with pytest.raises(EdgeExitError, match="no source"):
        PowerPreset("mine", idle_w=1.0, active_w=2.0, cores=4, source=" ")
    with pytest.raises(EdgeExitError, match="idle_w <= active_w"):
        PowerPreset("mine", idle_w=3.0, active_w=2.0, cores=4, source="bench")


def test_model_energy_formula() -> None:
    preset = PowerPreset("toy", idle_w=2.0, active_w=6.0, cores=4, source="hand")
    # 10 s wall, 20 CPU s on 4 cores: busy = 0.5 -> 2*10 + (6-2)*0.5*10 = 40 J
    assert model_energy(preset, wall_s=10.0, cpu_s=20.0) == pytest.approx(40.0)
    assert model_energy(preset, wall_s=10.0, cpu_s=0.0) == pytest.approx(20.0)  # idle floor
    assert model_energy(preset, wall_s=10.0, cpu_s=400.0) == pytest.approx(60.0)  # clamped at full load
    assert busy_fraction(1.0, 0.0, 4) == 0.0
    with pytest.raises(EdgeExitError):
        model_energy(preset, wall_s=-1.0, cpu_s=0.0)


def test_lte_upload_energy_by_hand() -> None:
    lte = get_radio("lte")
    # 1 MB at 8 Mbit/s: t = 8e6 bits / 8e6 = 1 s; P = (1288.04 + 438.39 * 8) mW = 4.79516 W
    energy = lte.energy(1_000_000, 8.0)
    assert energy.seconds == pytest.approx(1.0)
    assert energy.transfer_j == pytest.approx(4.79516)
    assert energy.tail_j == pytest.approx(1.06004 * 11.576)
    assert energy.joules == pytest.approx(4.79516 + 1.06004 * 11.576)
    assert energy.source == "radio:lte"
    assert lte.energy(1_000_000, 8.0, tail=False).joules == pytest.approx(4.79516)


def test_wifi_upload_energy_by_hand() -> None:
    wifi = get_radio("wifi")
    # 50 kB at 20 Mbit/s: t = 4e5 / 2e7 = 0.02 s; P = (132.86 + 283.17 * 20) mW = 5.79626 W
    energy = wifi.energy(50_000, 20.0)
    assert energy.seconds == pytest.approx(0.02)
    assert energy.transfer_j == pytest.approx(5.79626 * 0.02)
    assert energy.tail_j == pytest.approx(0.1193 * 0.2381)
    # the LTE tail dwarfs WiFi's: the reason small offloads over LTE rarely pay
    assert get_radio("lte").energy(50_000, 20.0).joules > 50 * energy.joules


def test_radio_edge_cases_and_registry() -> None:
    assert list_radios() == ["lte", "wifi"]
    assert get_radio("wifi").energy(0, 10.0).joules == 0.0
    with pytest.raises(EdgeExitError, match="uplink_mbps must be > 0"):
        get_radio("lte").energy(10, 0.0)
    with pytest.raises(EdgeExitError, match="expected one of: lte, wifi"):
        get_radio("5g")
    for name in list_radios():
        assert "Huang" in get_radio(name).source
