"""``profile.json``: what ``edgeexit profile`` measured on one machine, and what the policies read.

Plain frozen dataclasses parsed field by field like the manifest (a wrong type or a missing field
is a ``ProfileError`` naming the file and the JSON path). A profile belongs to one package (its
``package_id``) and one machine and thread count: latency measured with 4 threads on an x86 laptop
says little about a Raspberry Pi, so the profile records where it came from.

``device_costs`` turns a profile plus the package's manifest into the ``DeviceCosts`` the policies
(``edgeexit.policy``) decide with; ``modelled_costs`` does the same without a profile, from segment
latencies measured where the runner is built and a power and a radio preset.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from edgeexit.errors import PackageError, ProfileError, UnknownNameError
from edgeexit.fileio import atomic_write_text
from edgeexit.manifest import Manifest, _parse, _to_plain
from edgeexit.policy.costs import DeviceCosts, RadioModel
from edgeexit.profile.power import PowerPreset, get_preset
from edgeexit.profile.radio import RadioPreset, get_radio

PROFILE_FORMAT = "edgeexit-profile"
PROFILE_VERSION = 1
PROFILE_FILE = "profile.json"


@dataclass(frozen=True)
class Machine:
    """Where a profile was measured: ``platform.platform()``, the CPU model (``/proc/cpuinfo``
    when present, else ``platform.processor()``; None when neither says) and logical cores."""

    platform: str
    cpu_model: str | None
    cores: int

    @classmethod
    def current(cls, cpuinfo: str | Path = "/proc/cpuinfo") -> Machine:
        return cls(platform=platform.platform(), cpu_model=cpu_model(cpuinfo), cores=os.cpu_count() or 1)

    def describe(self) -> str:
        return f"{self.cpu_model or 'unknown CPU'}, {self.cores} cores, {self.platform}"


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """The CPU's name from /proc/cpuinfo (x86 ``model name``, Arm ``Model`` / ``Hardware``)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            found.setdefault(key.strip().lower(), value.strip())
    for key in ("model name", "model", "hardware", "cpu model"):
        if key in found:
            return found[key]
    return platform.processor() or None


@dataclass(frozen=True)
class SegmentProfile:
    """One segment on this machine: batch-1 latency after warm-up, its exit check (criterion and
    threshold on the segment's outputs; the head itself runs inside the segment), and the energy
    of one run of the segment with the source that measured or modelled it."""

    index: int
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    latency_mean_ms: float
    exit_check_p50_ms: float
    exit_check_p90_ms: float
    exit_check_p99_ms: float
    exit_check_mean_ms: float
    energy_j: float
    energy_source: str


@dataclass(frozen=True)
class EncodedSize:
    """Bytes one sample costs on the wire at ``boundary`` with ``codec``: from the manifest's tail
    (``source="manifest"``) or measured here by encoding a real boundary tensor (``"measured"``)."""

    boundary: int
    codec: str
    bytes: int
    source: Literal["manifest", "measured"]


@dataclass(frozen=True)
class SkippedSource:
    """A better energy source that was not used, and why."""

    source: str
    reason: str


@dataclass(frozen=True)
class Profile:
    package_id: str
    model_name: str
    machine: Machine
    threads: int
    runs: int
    warmup: int
    device_preset: str
    energy_source: str
    energy_skipped: tuple[SkippedSource, ...]
    inputs: str  # where the inputs came from: the package's reference sample, or random normal
    peak_rss_bytes: int
    segments: tuple[SegmentProfile, ...]
    encoded: tuple[EncodedSize, ...]
    created: str  # ISO 8601, UTC
    edgeexit_version: str
    backend: str = "onnxruntime"  # what ran the segments (Engine backend=)
    precision: str = "fp32"  # which build of them (fp32, or the int8 variant)
    format: str = PROFILE_FORMAT
    format_version: int = PROFILE_VERSION

    def encoded_bytes(self, boundary: int, codec: str) -> int | None:
        for entry in self.encoded:
            if entry.boundary == boundary and entry.codec == codec:
                return entry.bytes
        return None

    @property
    def codecs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(entry.codec for entry in self.encoded))

    def to_json(self) -> str:
        return json.dumps(_to_plain(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str = PROFILE_FILE) -> Profile:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise ProfileError(
                f"{source} is not valid JSON ({err}); expected a profile written by `edgeexit profile`"
            ) from None
        if not isinstance(raw, dict):
            raise ProfileError(f"{source}: expected a JSON object, found {type(raw).__name__}")
        if raw.get("format") != PROFILE_FORMAT:
            raise ProfileError(f"{source}: 'format' is {raw.get('format')!r}; expected {PROFILE_FORMAT!r}")
        if raw.get("format_version") != PROFILE_VERSION:
            raise ProfileError(
                f"{source}: format_version {raw.get('format_version')!r} is not supported by this edgeexit "
                f"(it reads version {PROFILE_VERSION}); measure again with `edgeexit profile`"
            )
        try:
            profile = _parse(cls, raw, "")
        except PackageError as err:
            message = str(err).replace("manifest", "profile", 1) if str(err).startswith("manifest") else str(err)
            raise ProfileError(f"{source}: {message}") from None
        profile.validate(source)
        return profile

    def validate(self, source: str = PROFILE_FILE) -> None:
        if not self.segments:
            raise ProfileError(f"{source}: 'segments' is empty; expected one entry per segment")
        for position, segment in enumerate(self.segments):
            if segment.index != position:
                raise ProfileError(f"{source}: segments[{position}].index is {segment.index}; expected {position}")
            if segment.latency_mean_ms < 0 or segment.energy_j < 0:
                raise ProfileError(f"{source}: segments[{position}] has a negative latency or energy")
        if self.threads < 1 or self.runs < 1:
            raise ProfileError(f"{source}: threads and runs must be >= 1, got {self.threads} and {self.runs}")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def save_profile(profile: Profile, path: str | os.PathLike[str]) -> Path:
    """Write ``profile`` to ``path`` atomically (a reader never sees half a file)."""
    target = Path(path)
    atomic_write_text(target, profile.to_json())
    return target


def load_profile(path: str | os.PathLike[str]) -> Profile:
    """Read a profile.json; any problem is a ``ProfileError`` naming the file and the JSON path."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(
            f"{file}: no such profile; write one with `edgeexit profile PACKAGE --json {file}`"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ProfileError(f"cannot read the profile {file}: {err}") from None
    return Profile.from_json(text, source=str(file))


def profiled_segment_ms(profile: Profile, manifest: Manifest) -> tuple[float, ...]:
    """Each segment's p50 batch-1 latency from ``profile``, which must have been measured on this
    package (its ``package_id``): a profile of other weights times other graphs."""
    check_profile_matches(profile, manifest)
    return tuple(float(segment.latency_p50_ms) for segment in profile.segments)


def check_profile_matches(profile: Profile, manifest: Manifest) -> None:
    """A ProfileError unless ``profile`` was measured on this package (its ``package_id`` and
    segment count): a profile of other weights times other graphs."""
    if profile.package_id != manifest.package_id:
        raise ProfileError(
            f"the profile was measured on package {profile.package_id}, not {manifest.package_id} "
            f"({manifest.model_name}); profile this package with `edgeexit profile`"
        )
    if len(profile.segments) != len(manifest.segments):
        raise ProfileError(
            f"the profile has {len(profile.segments)} segments; the package has {len(manifest.segments)}"
        )


def cost_radio(radio: str | RadioPreset | RadioModel) -> RadioModel:
    """A radio preset (``wifi``, ``lte``, by name or as it is) as the policy's ``RadioModel``."""
    if isinstance(radio, RadioModel):
        return radio
    return get_radio(radio).cost_model()


def modelled_costs(
    manifest: Manifest,
    segment_ms: Sequence[float],
    *,
    codec: str,
    power: str | PowerPreset = "rpi4",
    radio: str | RadioPreset | RadioModel = "wifi",
) -> DeviceCosts:
    """The ``DeviceCosts`` of a device with no profile: ``segment_ms`` measured on the spot, energy
    = the power preset's active watts x that latency, its idle watts while waiting, the radio
    preset's upload energy, exit rates from the manifest. What ``edgeexit run --policy`` assumes
    without ``--profile``, and what ``edgeexit bench`` models."""
    preset = get_preset(power) if isinstance(power, str) else power
    return DeviceCosts.from_manifest(manifest, segment_ms, codec=codec, active_w=preset.active_w,
                                     idle_w=preset.idle_w, radio=cost_radio(radio))  # fmt: skip


def device_costs(
    profile: Profile,
    manifest: Manifest,
    *,
    codec: str = "fp32",
    radio: str | RadioPreset | RadioModel | None = "wifi",
    idle_w: float | None = None,
) -> DeviceCosts:
    """The ``DeviceCosts`` the policies read: latency and energy per segment and exit check from
    the profile, exit probabilities and the tails from the manifest, the radio from a preset.

    ``idle_w`` (the device's power while it waits for a server) defaults to the profile's device
    preset. Offloading is possible only at boundaries with a tail for ``codec``; a tail whose
    manifest entry lacks ``encoded_bytes`` takes the size this profile measured.
    """
    check_profile_matches(profile, manifest)
    if idle_w is None:
        try:
            idle_w = get_preset(profile.device_preset).idle_w
        except UnknownNameError:
            idle_w = 0.0  # a preset this edgeexit does not know: no idle term
    check_j = [
        s.energy_j * s.exit_check_mean_ms / s.latency_mean_ms if s.latency_mean_ms > 0 else 0.0
        for s in profile.segments
    ]  # the check runs on the same cores as the segment: charge it the segment's average power
    costs = DeviceCosts.from_manifest(
        manifest,
        [s.latency_mean_ms for s in profile.segments],
        codec=codec,
        segment_j=[s.energy_j for s in profile.segments],
        idle_w=idle_w,
        radio=cost_radio(radio) if radio is not None else None,
        exit_check_ms=[s.exit_check_mean_ms for s in profile.segments],
    )
    with_tail = {t.boundary for t in manifest.tails if t.codec == codec}
    sizes = tuple(
        size if size is not None or k not in with_tail else profile.encoded_bytes(k, codec)
        for k, size in enumerate(costs.encoded_bytes)
    )  # the input tail (boundary -1) keeps its own: input_bytes
    input_bytes = costs.input_bytes
    if input_bytes is None and -1 in with_tail:
        input_bytes = profile.encoded_bytes(-1, codec)
    return replace(costs, encoded_bytes=sizes, input_bytes=input_bytes, exit_check_j=tuple(check_j))
