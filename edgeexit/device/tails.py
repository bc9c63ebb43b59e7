"""Which tail of a package finishes a request offloaded at boundary k, and with which codec.

A wrong boundary or codec is a configuration mistake, found before any request runs, with an
error listing what the package does have: a device must not discover it one fallback at a time.
"""

from __future__ import annotations

from edgeexit.codecs import list_codecs
from edgeexit.errors import OffloadError
from edgeexit.manifest import Manifest, TailSpec

#: Without an explicit codec: half the bytes of fp32 at a rounding error far below the exits'
#: margins, then exact fp32, then int8 (a quarter of the bytes, but it moves logits).
PREFERRED_CODECS = ("fp16", "fp32", "int8")


def default_codec(manifest: Manifest, codec: str | None = None) -> str:
    """``codec`` when given, else the first of PREFERRED_CODECS that any of the package's tails
    has (fp16 when it has none): the one codec a policy offloads with at every boundary."""
    if codec is not None:
        return codec
    have = {t.codec for t in manifest.tails}
    return next((c for c in PREFERRED_CODECS if c in have), PREFERRED_CODECS[0])


def select_tail(manifest: Manifest, boundary: int, codec: str | None = None) -> TailSpec:
    """The manifest's tail from ``boundary`` with ``codec`` (None: the first of PREFERRED_CODECS
    the package has there). Boundary -1 is the model input: its tail runs the whole model."""
    last = len(manifest.segments) - 2
    if isinstance(boundary, bool) or not isinstance(boundary, int) or not -1 <= boundary <= last:
        where = f"0..{last}, or -1: the model input" if last >= 0 else "-1 (the model input) only"
        raise OffloadError(
            f"cannot offload at boundary {boundary!r}; expected a boundary with a later segment ({where}); "
            f"{manifest.model_name} has {len(manifest.segments)} segments"
        )
    if codec is not None and codec not in list_codecs():
        raise OffloadError(f"unknown codec {codec!r}; expected one of: {', '.join(list_codecs())}")
    here = [t for t in manifest.tails if t.boundary == boundary]
    if codec is None:
        ranked = sorted(here, key=lambda t: PREFERRED_CODECS.index(t.codec) if t.codec in PREFERRED_CODECS else 99)
        if ranked:
            return ranked[0]
    else:
        for tail in here:
            if tail.codec == codec:
                return tail
    wanted = describe_boundary(boundary) + (f" with codec {codec}" if codec else "")
    raise OffloadError(
        f"{manifest.model_name} has no tail for {wanted}; it has {describe_tails(manifest)}: pick one of those, "
        "or re-export the package with that codec (edgeexit export --codecs fp32,fp16,int8)"
    )


def describe_tails(manifest: Manifest) -> str:
    """'boundary 0 (fp32, fp16), boundary 1 (fp32), the input (fp32)' or 'no tails'."""
    by_boundary: dict[int, list[str]] = {}
    for tail in manifest.tails:
        by_boundary.setdefault(tail.boundary, []).append(tail.codec)
    if not by_boundary:
        return "no tails"
    ordered = sorted(by_boundary.items(), key=lambda item: (item[0] == -1, item[0]))
    return ", ".join(f"{describe_boundary(b)} ({', '.join(codecs)})" for b, codecs in ordered)


def describe_boundary(boundary: int) -> str:
    """'boundary 1', or 'the input' for boundary -1."""
    return "the input" if boundary == -1 else f"boundary {boundary}"
