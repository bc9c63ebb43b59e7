"""``edgeexit verify`` for a decoder package: on the device, before it is trusted with text.

A hash says the files are the ones exported; it does not say this machine's ONNX Runtime computes
what the workstation's PyTorch did. The export recorded, per check prompt, transformers' greedy
continuation (the token ids); here the package's own graphs must give them again, token for token,
at full depth. Each mode that promises full depth's text (speculative, with the package's draft)
must give the same tokens too; a weight variant or an early exit promises agreement, not equality,
so its agreement is reported, not required.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeexit.errors import PackageError
from edgeexit.generation.package import open_decoder_package
from edgeexit.signing import TrustedKeys


@dataclass(frozen=True)
class DecoderCheck:
    """One prompt's continuation on this machine against the export's record."""

    #: what ran: ``full fp32``, ``speculative fp32``, ``full int4``, ``early-exit fp32`` ...
    row: str
    prompt: str
    #: tokens recorded at export (transformers' greedy continuation)
    expected: int
    #: leading tokens this machine's run shares with it
    agreeing: int
    #: whether the row must equal the record (full depth and speculation) or only agree with it
    required: bool

    @property
    def identical(self) -> bool:
        return self.agreeing == self.expected

    @property
    def ok(self) -> bool:
        return self.identical or not self.required


@dataclass(frozen=True)
class DecoderReport:
    files_checked: int
    checks: tuple[DecoderCheck, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


def verify_decoder_package(path: str | Path, *, trusted_keys: TrustedKeys | None = None) -> DecoderReport:
    """Hashes (and the signature, with ``trusted_keys``), every graph loaded, and the export's greedy
    continuations reproduced by every mode and weight variant the package holds."""
    from edgeexit.generation.engine import DecoderEngine

    package = open_decoder_package(path, trusted_keys=trusted_keys)
    manifest = package.manifest
    recorded = [row for row in manifest.reference.get("greedy", []) if "continuation" in row]
    notes: list[str] = []
    if not recorded:
        notes.append(
            "the manifest records no greedy continuations (exported before edgeexit recorded their tokens): "
            "graphs loaded and hashes checked only; re-export to check the text too"
        )
    rows: list[tuple[str, str | None, dict[str, Any], bool]] = [("full", None, {}, True)]
    speculation = manifest.speculation
    if speculation is not None and (speculation.draft_head is not None or manifest.exits):
        rows.append(("speculative", None, {"mode": "speculative"}, True))
        for variant in manifest.variants:
            rows.append((f"speculative, {variant.name} draft", None,
                         {"mode": "speculative", "draft_variant": variant.name}, True))  # fmt: skip
    if manifest.exits:
        rows.append(("early-exit", None, {"mode": "early-exit"}, False))
    rows += [(f"full {variant.name}", variant.name, {}, False) for variant in manifest.variants]
    engines: dict[str | None, Any] = {}
    checks = []
    for name, variant, options, required in rows:
        engine = engines.get(variant)
        if engine is None:
            engine = engines[variant] = DecoderEngine(package, variant=variant or "fp32")
        for row in recorded:
            expected = [int(t) for t in row["continuation"]]
            ids = [int(t) for t in row["prompt_ids"]]
            out = engine.generate(ids, max(len(expected), 1), **options).tokens
            agreeing = next((i for i, (a, b) in enumerate(zip(out, expected, strict=False)) if a != b),
                            min(len(out), len(expected)))  # fmt: skip
            checks.append(DecoderCheck(name, str(row.get("prompt", "")), len(expected), agreeing, required))
    return DecoderReport(files_checked=len(manifest.files), checks=tuple(checks), notes=tuple(notes))


def require_ok(report: DecoderReport, path: str | Path) -> None:
    """Refuse a package whose full-depth or speculative text differs from the export's record."""
    failed = [f"{c.row} on {c.prompt!r} ({c.agreeing} of {c.expected} tokens)" for c in report.checks if not c.ok]
    if failed:
        raise PackageError(
            f"{path}: this machine's greedy text differs from the one recorded at export: {'; '.join(failed)}; "
            "expected identical tokens (a changed graph, or an ONNX Runtime that computes differently here)"
        )
