"""profile.json: round trip, errors naming the file and the JSON path, and the DeviceCosts the
policies read from it. No assertion depends on how long anything took."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from edgeexit.package import open_package
from edgeexit.policy import LinkEstimate, create_policy
from edgeexit.policy.costs import DeviceCosts
from edgeexit.profile import ProfileError, device_costs, load_profile, profile_package, save_profile
from edgeexit.profile.measure import percentiles
from edgeexit.profile.record import (
    PROFILE_FORMAT,
    EncodedSize,
    Machine,
    Profile,
    SegmentProfile,
    SkippedSource,
    cost_radio,
    cpu_model,
    modelled_costs,
)


def make_profile(package_id: str = "abc", segments: int = 3) -> Profile:
    return Profile(
        package_id=package_id,
        model_name="digits_cnn",
        machine=Machine("Linux-test", "Test CPU", 4),
        threads=2,
        runs=50,
        warmup=5,
        device_preset="rpi4",
        energy_source="model:rpi4",
        energy_skipped=(SkippedSource("rapl", "no powercap directory"),),
        inputs="reference.npz (2 samples)",
        peak_rss_bytes=50_000_000,
        segments=tuple(
            SegmentProfile(k, 1.0 + k, 1.5 + k, 2.0 + k, 1.2 + k, 0.01, 0.02, 0.03, 0.012, 0.003, "model:rpi4")
            for k in range(segments)
        ),
        encoded=tuple(
            EncodedSize(k, codec, size >> k, "manifest")
            for k in range(segments - 1)
            for codec, size in (("fp32", 4096), ("fp16", 2048), ("int8", 1024))
        ),
        created="2026-01-01T00:00:00+00:00",
        edgeexit_version="0.1.0",
    )


def test_round_trip(tmp_path: Path) -> None:
    profile = make_profile()
    path = save_profile(profile, tmp_path / "profile.json")
    assert load_profile(path) == profile
    raw = json.loads(path.read_text())
    assert raw["format"] == PROFILE_FORMAT
    assert raw["machine"]["cores"] == 4
    assert raw["threads"] == 2
    assert profile.encoded_bytes(1, "fp16") == 1024
    assert profile.encoded_bytes(2, "fp16") is None
    assert profile.codecs == ("fp32", "fp16", "int8")


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda raw: raw["segments"][1].update(latency_p50_ms="fast"), "segments[1].latency_p50_ms: expected a number"),
        (lambda raw: raw["machine"].pop("cores"), "machine: missing required field 'cores'"),
        (lambda raw: raw.update(format_version=99), "format_version 99 is not supported"),
        (lambda raw: raw.update(format="edgeexit-package"), "'format' is 'edgeexit-package'"),
        (lambda raw: raw.update(extra=1), "unknown field(s) ['extra']"),
        (lambda raw: raw["segments"][0].update(index=3), "segments[0].index is 3; expected 0"),
    ],
)
def test_bad_profile_names_file_and_path(tmp_path: Path, mutate, expected: str) -> None:
    raw = json.loads(make_profile().to_json())
    mutate(raw)
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_not_json_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    path.write_text("{nope")
    with pytest.raises(ProfileError, match="is not valid JSON"):
        load_profile(path)
    path.write_text("[]")
    with pytest.raises(ProfileError, match="expected a JSON object, found list"):
        load_profile(path)
    with pytest.raises(ProfileError, match="no such profile"):
        load_profile(tmp_path / "absent.json")


def test_cpu_model_from_cpuinfo(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Intel(R) Core(TM) i7\n\nprocessor\t: 1\nmodel name\t: other\n")
    assert cpu_model(x86) == "Intel(R) Core(TM) i7"
    pi = tmp_path / "pi"
    pi.write_text(
        "processor\t: 0\nBogoMIPS\t: 108.00\n\nHardware\t: BCM2835\nModel\t: Raspberry Pi 4 Model B Rev 1.4\n"
    )
    assert cpu_model(pi) == "Raspberry Pi 4 Model B Rev 1.4"


def test_percentiles_ordered() -> None:
    p50, p90, p99, mean = percentiles([5.0, 1.0, 3.0, 2.0, 4.0, 100.0])
    assert p50 <= p90 <= p99
    assert mean == pytest.approx(115.0 / 6)
    assert percentiles([]) == (0.0, 0.0, 0.0, 0.0)


def test_cost_radio_converts_units() -> None:
    wifi = cost_radio("wifi")
    assert wifi.name == "wifi"
    assert wifi.tx_w_per_mbps == pytest.approx(0.28317)
    assert wifi.tail_j > 0
    assert wifi.tail_s == pytest.approx(0.2381)  # back-to-back offloads share the tail: the model needs its length


def test_one_radio_two_units() -> None:
    """A preset (mW, cited) and the policy's RadioModel (W) are one radio: the preset's upload
    energy is the cost model's transmit energy, tail included."""
    from edgeexit.profile import get_radio

    for name in ("wifi", "lte"):
        preset = get_radio(name)
        model = preset.cost_model()
        assert model == cost_radio(name) == cost_radio(preset) == cost_radio(model)
        upload = preset.energy(50_000, 20.0)
        assert model.transmit_j(upload.seconds, 20e6) == pytest.approx(upload.joules)


def test_modelled_costs_are_the_presets(digits_package: Path) -> None:
    """Without a profile (edgeexit run --policy, edgeexit bench): latency measured on the spot,
    energy from a power preset's watts, the radio from a radio preset."""
    from edgeexit.profile import get_preset, get_radio

    manifest = open_package(digits_package).manifest
    segment_ms = [2.0] * len(manifest.segments)
    costs = modelled_costs(manifest, segment_ms, codec="fp16", power="rpi5", radio="lte")
    rpi5 = get_preset("rpi5")
    assert costs.segment_j == pytest.approx([rpi5.active_w * 2.0 / 1000] * len(segment_ms))
    assert costs.idle_w == rpi5.idle_w
    assert costs.radio == get_radio("lte").cost_model()
    assert costs == modelled_costs(manifest, segment_ms, codec="fp16", power=rpi5, radio=get_radio("lte"))


def test_device_costs_feed_best_static(digits_package: Path) -> None:
    manifest = open_package(digits_package).manifest
    profile = make_profile(manifest.package_id, len(manifest.segments))
    costs = device_costs(profile, manifest, codec="int8", radio="lte")
    assert isinstance(costs, DeviceCosts)
    assert costs.segment_ms == tuple(s.latency_mean_ms for s in profile.segments)
    assert costs.segment_j == tuple(s.energy_j for s in profile.segments)
    assert costs.exit_check_ms == tuple(s.exit_check_mean_ms for s in profile.segments)
    assert costs.idle_w == pytest.approx(2.7)  # the rpi4 preset's idle power
    assert costs.radio.name == "lte"
    assert costs.offload_boundaries == (-1, 0, 1)  # int8 tails from the input and both boundaries
    assert costs.input_bytes == next(t.encoded_bytes for t in manifest.tails if (t.boundary, t.codec) == (-1, "int8"))
    fp32 = device_costs(profile, manifest, codec="fp32")
    assert fp32.encoded_bytes == tuple(4 * b for b in costs.encoded_bytes if b is not None)
    assert fp32.input_bytes == 4 * costs.input_bytes
    policy = create_policy("best-static", costs)
    slow, _, _ = policy.plan(LinkEstimate(bandwidth_bps=0.1e6, rtt_s=0.5))
    _fast, options, _ = policy.plan(LinkEstimate(bandwidth_bps=1e9, rtt_s=0.0001))
    assert slow.name == "local"  # a slow link never pays off against ~6 ms of local compute
    assert {o.name for o in options} == {"local", "offload@input", "offload@0", "offload@1"}


def test_device_costs_refuses_another_package(digits_package: Path) -> None:
    manifest = open_package(digits_package).manifest
    with pytest.raises(ProfileError, match="measured on package other"):
        device_costs(make_profile("other", len(manifest.segments)), manifest)
    with pytest.raises(ProfileError, match="has 5 segments"):
        device_costs(make_profile(manifest.package_id, 5), manifest)


def test_profile_package_in_process(digits_package: Path, tmp_path: Path) -> None:
    profile = profile_package(digits_package, runs=5, warmup=1, progress=False, energy_seconds=0.01, cache_dir=None)
    manifest = open_package(digits_package).manifest
    assert len(profile.segments) == len(manifest.segments)
    assert profile.inputs.startswith("reference.npz")
    # a profile's measured sizes for a tail without encoded_bytes fill the gap
    stripped = replace(manifest, tails=tuple(replace(t, encoded_bytes=None) for t in manifest.tails))
    costs = device_costs(profile, stripped, codec="fp16")
    assert costs.encoded_bytes == tuple(profile.encoded_bytes(k, "fp16") for k in range(len(manifest.segments) - 1))
    assert all(size is not None for size in costs.encoded_bytes)
