"""What a user configures about the device engine, as one frozen record.

The CLI flags, ``device.toml`` and the benchmarks all build an ``EngineSettings`` and hand it to
``Engine.from_settings``, so a new engine option is added once, here, and reaches every entry point.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EngineSettings:
    """How the device runs a package.

    ``threads``: intra-op threads per segment. ``criterion`` / ``threshold``: override every early
    exit's calibrated criterion or threshold (None: the manifest's). ``backend`` / ``precision``:
    which of the package's variants runs (``onnxruntime`` / ``tflite``; ``fp32`` / ``int8``).
    ``cache_dir``: where ONNX Runtime's optimized graphs are kept ("default": the user cache; None:
    never cached). ``trusted_keys``: PEM Ed25519 public keys; given any, a package no trusted key
    signed is refused before it loads (``edgeexit.signing``)."""

    threads: int = 1
    criterion: str | None = None
    threshold: float | None = None
    backend: str = "onnxruntime"
    precision: str = "fp32"
    cache_dir: Path | str | None = "default"
    trusted_keys: tuple[Path, ...] = ()
