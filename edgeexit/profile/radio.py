"""Radio energy models: what it costs the device to upload an encoded hidden tensor.

Offloading trades local compute for radio energy, and on cellular links the radio's *tail* (the
time it stays in a high-power state after the last packet) often costs more than the transfer
itself, so the policy needs both terms:

    E(B, U) = P(U) * t + P_tail * T_tail,   P(U) = beta + alpha_u * U,   t = 8 B / (U * 1e6)

with U the uplink throughput in Mbit/s. This is the linear throughput-power model of Huang et al.,
"A Close Examination of Performance and Power Characteristics of 4G LTE Networks", MobiSys 2012
(https://doi.org/10.1145/2307636.2307658), Table 4 (P = alpha_u * t_u + alpha_d * t_d + beta, here
uplink only) and Table 3 (tail timer and tail power), measured on an HTC Thunderbolt phone.

A preset is the cited source; the offload policy reads the same figures in watts as
``edgeexit.policy.RadioModel``, which ``RadioPreset.cost_model()`` gives: the one conversion from
the paper's milliwatts.

The constants below are as the paper reports them to our best reading; the stored copies we could
search held the paper's abstract, not its tables, so re-check them against the PDF before
publishing numbers derived from them.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeexit.errors import UsageError
from edgeexit.policy.costs import RadioModel
from edgeexit.registry import Registry

HUANG_2012 = "Huang et al., MobiSys 2012, doi:10.1145/2307636.2307658"


@dataclass(frozen=True)
class RadioEnergy:
    """The energy of one upload, split so a report can show transfer vs. tail."""

    joules: float
    seconds: float  # time on air (the tail is not counted: the request is already sent)
    transfer_j: float
    tail_j: float
    source: str  # "radio:<name>"


@dataclass(frozen=True)
class RadioPreset:
    """A named, cited radio: a linear uplink power model plus a fixed tail, in the paper's units
    (mW, mW per Mbit/s, s). ``cost_model()`` is the same radio as the policies' ``RadioModel``."""

    name: str
    beta_mw: float  # base power while transferring
    alpha_up_mw_per_mbps: float  # extra power per Mbit/s of uplink throughput
    tail_s: float  # how long the radio stays in the high-power state after the transfer
    tail_mw: float  # average power during the tail
    source: str

    def power_w(self, uplink_mbps: float) -> float:
        """Radio power while sending at ``uplink_mbps``: (beta + alpha_u * U) / 1000."""
        _positive(uplink_mbps, "uplink_mbps")
        return (self.beta_mw + self.alpha_up_mw_per_mbps * uplink_mbps) / 1000.0

    def tail_j(self) -> float:
        return self.tail_mw / 1000.0 * self.tail_s

    def cost_model(self) -> RadioModel:
        """This radio in the policy's units (W, W per Mbit/s, J), with its name."""
        return RadioModel(
            tx_w_per_mbps=self.alpha_up_mw_per_mbps / 1000.0,
            tx_base_w=self.beta_mw / 1000.0,
            tail_j=self.tail_j(),
            tail_s=self.tail_s,  # back-to-back offloads share one tail (RadioModel.tail_energy_j)
            name=self.name,
        )

    def energy(self, nbytes: int, uplink_mbps: float, *, tail: bool = True) -> RadioEnergy:
        """Energy to send ``nbytes`` at ``uplink_mbps``; ``tail=False`` when the caller charges the
        tail itself (back-to-back offloads share one: ``RadioModel.tail_energy_j``)."""
        if nbytes < 0:
            raise UsageError(f"nbytes must be >= 0, got {nbytes}")
        if nbytes == 0:  # nothing sent: the radio never leaves idle
            return RadioEnergy(0.0, 0.0, 0.0, 0.0, f"radio:{self.name}")
        seconds = nbytes * 8 / (_positive(uplink_mbps, "uplink_mbps") * 1e6)
        transfer = self.power_w(uplink_mbps) * seconds
        tail_j = self.tail_j() if tail else 0.0
        return RadioEnergy(transfer + tail_j, seconds, transfer, tail_j, f"radio:{self.name}")


def _positive(value: float, what: str) -> float:
    if not value > 0:
        raise UsageError(f"{what} must be > 0, got {value}")
    return value


RADIOS: Registry[RadioPreset] = Registry("radio model")


def register_radio(preset: RadioPreset) -> RadioPreset:
    return RADIOS.register(preset.name)(preset)


def get_radio(name: str | RadioPreset) -> RadioPreset:
    """A radio preset by name (``wifi``, ``lte``); an unknown name lists the known ones."""
    return name if isinstance(name, RadioPreset) else RADIOS.get(name)


def list_radios(pattern: str = "*") -> list[str]:
    return RADIOS.names(pattern)


register_radio(
    RadioPreset(
        name="lte",
        # Huang et al. 2012, Table 4: LTE alpha_u = 438.39 mW/Mbps, beta = 1288.04 mW.
        # Table 3: LTE RRC_CONNECTED tail timer T_tail = 11.576 s at P_tail = 1060.04 mW (DRX on). Note the tail
        # is ~11.6 s (~12.3 J), far longer than a few hundred ms: it dominates small uploads.
        beta_mw=1288.04,
        alpha_up_mw_per_mbps=438.39,
        tail_s=11.576,
        tail_mw=1060.04,
        source=f"{HUANG_2012}: Table 4 (alpha_u 438.39 mW/Mbps, beta 1288.04 mW), Table 3 (tail 11.576 s @ 1060 mW)",
    )
)

register_radio(
    RadioPreset(
        name="wifi",
        # Huang et al. 2012, Table 4: WiFi alpha_u = 283.17 mW/Mbps, beta = 132.86 mW.
        # Table 3: WiFi tail 238.1 ms at 119.3 mW (PSM re-entry) -- small, as expected of 802.11.
        beta_mw=132.86,
        alpha_up_mw_per_mbps=283.17,
        tail_s=0.2381,
        tail_mw=119.3,
        source=f"{HUANG_2012}: Table 4 (alpha_u 283.17 mW/Mbps, beta 132.86 mW), Table 3 (tail 238.1 ms @ 119.3 mW)",
    )
)
