"""Expected costs on the toy profile, against numbers worked out by hand in the comments."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from edgeexit.errors import EdgeExitError
from edgeexit.manifest import CalibrationRecord, ExitCalibration, ExitSpec, TailSpec
from edgeexit.policy import (
    DeviceCosts,
    LinkEstimate,
    RadioModel,
    offload_now,
    remaining,
    remaining_local,
    static_split,
    sunk,
)

LINK = LinkEstimate.fixed(8e6, 0.01)  # 8 Mbit/s, 10 ms RTT


def close(cost, latency_ms: float, energy_j: float) -> None:
    assert cost.latency_ms == pytest.approx(latency_ms)
    assert cost.energy_j == pytest.approx(energy_j)


def test_survival_is_one_minus_the_exits_so_far(toy: DeviceCosts) -> None:
    assert [toy.survival(k) for k in (-1, 0, 1, 2)] == pytest.approx([1.0, 0.5, 0.25, 0.0])
    assert toy.offload_boundaries == (0, 1)


def test_remaining_local_uses_conditional_exit_probabilities(toy: DeviceCosts) -> None:
    # from 0 (survived 0): segment 1 surely (21 ms), segment 2 with P = S(1)/S(0) = 0.5 -> 21 + 15.5
    close(remaining_local(toy, 0), 36.5, 0.21 + 0.155)
    close(remaining_local(toy, 1), 31.0, 0.31)  # S(1)/S(1) = 1
    close(remaining_local(toy, 2), 0.0, 0.0)  # at the final exit nothing remains
    close(sunk(toy, 1), 32.0, 0.32)


def test_offload_now_is_rtt_upload_and_server_with_radio_and_idle_energy(toy: DeviceCosts) -> None:
    # boundary 0: upload 100 kB * 8 / 8 Mbit/s = 0.1 s; wait 0.01 + 0.1 + 0.005 = 0.115 s
    # energy: (1 W + 0.1 W/Mbit/s * 8) * 0.1 s + 0.5 J tail + 2 W idle * 0.115 s = 0.18 + 0.5 + 0.23
    close(offload_now(toy, 0, LINK), 115.0, 0.91)
    # boundary 1: upload 0.025 s; wait 0.037 s; 1.8 * 0.025 + 0.5 + 2 * 0.037
    close(offload_now(toy, 1, LINK), 37.0, 0.619)
    queued = LinkEstimate.fixed(8e6, 0.01, server_queue_ms=10.0)
    close(offload_now(toy, 1, queued), 47.0, 0.639)


def test_static_split_counts_the_samples_that_exit_before_the_split(toy: DeviceCosts) -> None:
    close(static_split(toy, None), 11 + 0.5 * 21 + 0.25 * 31, 0.11 + 0.105 + 0.0775)  # 29.25 ms
    close(static_split(toy, 0, LINK), 11 + 0.5 * 115, 0.11 + 0.5 * 0.91)  # only survivors offload
    close(static_split(toy, 1, LINK), 11 + 10.5 + 0.25 * 37, 0.11 + 0.105 + 0.25 * 0.619)
    # from boundary 0, offloading at 1: segment 1 surely, then the half that survives exit 1 offloads
    close(remaining(toy, 0, 1, LINK), 21 + 0.5 * 37, 0.21 + 0.5 * 0.619)


def test_offloading_where_there_is_no_tail_is_refused(toy: DeviceCosts) -> None:
    with pytest.raises(EdgeExitError, match="no tail"):
        offload_now(toy, 2, LINK)
    with pytest.raises(EdgeExitError, match="behind"):
        remaining(toy, 1, 0, LINK)


def test_inconsistent_profiles_are_refused() -> None:
    with pytest.raises(EdgeExitError, match="summing to 1"):
        DeviceCosts((1.0, 1.0), (1.0, 1.0), (0.5, 0.2), (10,))
    with pytest.raises(EdgeExitError, match="one per offload boundary"):
        DeviceCosts((1.0, 1.0), (1.0, 1.0), (0.5, 0.5), (10, 20))


def fake_manifest(calibrated: bool) -> SimpleNamespace:
    exits = tuple(ExitSpec(i, i, f"h{i}", "logits", None, "max_prob", 0.9, final=i == 2) for i in range(3))
    tails = (
        TailSpec(0, "m__from_0", "tails/m__from_0/1/model.onnx", "fp32", 400),
        TailSpec(0, "m__from_0__fp16", "tails/m__from_0__fp16/1/model.onnx", "fp16", 200),
        TailSpec(1, "m__from_1__fp16", "tails/m__from_1__fp16/1/model.onnx", "fp16", 100),
    )
    record = CalibrationRecord(
        "max_prob",
        0.01,
        100,
        "0" * 64,
        0.9,
        0.89,
        1.0,
        tuple(ExitCalibration(i, 0.9, 1.0, 0.9, rate) for i, rate in enumerate((0.6, 0.3, 0.1))),
    )
    return SimpleNamespace(
        segments=(None, None, None), exits=exits, tails=tails, calibration=record if calibrated else None
    )


def test_from_manifest_reads_exit_rates_and_the_codecs_encoded_bytes() -> None:
    costs = DeviceCosts.from_manifest(
        fake_manifest(True), [10.0, 20.0, 30.0], codec="fp16", active_w=5.0, radio=RadioModel(tail_j=0.1)
    )
    assert costs.exit_prob == pytest.approx((0.6, 0.3, 0.1))
    assert costs.encoded_bytes == (200, 100)
    assert costs.segment_j == pytest.approx((0.05, 0.1, 0.15))  # 5 W * segment time
    fp32 = DeviceCosts.from_manifest(fake_manifest(False), [1.0, 1.0, 1.0], segment_j=[1.0, 1.0, 1.0])
    assert fp32.encoded_bytes == (400, None)  # no fp32 tail from boundary 1
    assert fp32.exit_prob == (0.0, 0.0, 1.0)  # uncalibrated: everything reaches the final exit
    with pytest.raises(EdgeExitError, match="active_w"):
        DeviceCosts.from_manifest(fake_manifest(True), [1.0, 1.0, 1.0])


def test_back_to_back_transfers_share_the_radios_tail(toy: DeviceCosts) -> None:
    """With the tail's length known, a transfer within the previous one's tail only extends it.
    The policies charge a plan's offloads at its steady state: with a sample every
    ``request_interval_s`` and a share ``S(k)`` of them offloaded at k, offloads come
    ``interval / S(k)`` apart and each extends the tail by that much. Unknown interval or length
    (``tail_s`` 0): every offload pays the whole tail, as before. The radio's state right now
    (``age_s``) does not enter: an idle radio's first offload is the start of the plan, not its cost."""
    import dataclasses

    from edgeexit.policy import Objective, create_policy

    shared = dataclasses.replace(toy, radio=dataclasses.replace(toy.radio, tail_s=0.25))
    assert shared.radio.tail_energy_j(0.05) == pytest.approx(0.5 * 0.05 / 0.25)
    assert shared.radio.tail_energy_j(1.0) == shared.radio.tail_energy_j() == toy.radio.tail_j == 0.5
    assert toy.radio.tail_energy_j(0.05) == 0.5  # tail_s unknown: every transfer pays all of it
    paced = LinkEstimate(bandwidth_bps=10e6, rtt_s=0.01, age_s=float("inf"), samples=1, fresh=True,
                         request_interval_s=0.05)  # fmt: skip
    unknown = dataclasses.replace(paced, request_interval_s=float("inf"))
    # boundary 0: S = 0.5, offloads 0.1 s apart -> 0.5 J x 0.1 / 0.25; boundary 1: S = 0.25, 0.2 s apart
    assert offload_now(toy, 0, paced).energy_j - offload_now(shared, 0, paced).energy_j == pytest.approx(0.5 - 0.2)
    assert offload_now(toy, 1, paced).energy_j - offload_now(shared, 1, paced).energy_j == pytest.approx(0.5 - 0.4)
    assert offload_now(shared, 0, unknown).energy_j == pytest.approx(offload_now(toy, 0, unknown).energy_j)
    assert offload_now(shared, 0, dataclasses.replace(paced, age_s=0.0)) == offload_now(shared, 0, paced)
    assert offload_now(shared, 0, paced).latency_ms == offload_now(toy, 0, paced).latency_ms
    # the policy's memo and a runner's plans tell the two apart (an offload's energy differs)
    energy = create_policy("adaptive", shared, Objective("energy"))
    assert energy.estimate_key(paced) != energy.estimate_key(unknown)
    assert create_policy("adaptive", toy).estimate_key(paced) == create_policy("adaptive", toy).estimate_key(unknown)
    latency = create_policy("adaptive", shared)  # energy does not enter its choice: no replanning as traffic changes
    assert latency.estimate_key(paced) == latency.estimate_key(unknown)
    # intervals past the tail's length all pay the whole tail: one key
    assert energy.estimate_key(dataclasses.replace(paced, request_interval_s=0.3)) == energy.estimate_key(unknown)


def test_an_idle_radio_does_not_keep_the_energy_policy_local(toy: DeviceCosts) -> None:
    """Back-to-back traffic (a sample every 10 ms): offloading the quarter of the samples that
    survive boundary 1 shares the tail (offloads 40 ms apart: 0.08 J each), which beats running
    segment 2 (0.31 J), even though the radio is idle now; with the traffic unknown each offload
    pays the whole 0.5 J tail and finishing locally wins."""
    import dataclasses

    from edgeexit.policy import Objective, create_policy

    shared = dataclasses.replace(toy, radio=dataclasses.replace(toy.radio, tail_s=0.25))
    idle_radio = LinkEstimate(bandwidth_bps=8e6, rtt_s=0.01, age_s=float("inf"), samples=1, fresh=True)
    steady = dataclasses.replace(idle_radio, request_interval_s=0.01)
    assert create_policy("adaptive", shared, Objective("energy")).decide(1, steady).action == "offload"
    assert create_policy("adaptive", shared, Objective("energy")).decide(1, idle_radio).action == "continue"
