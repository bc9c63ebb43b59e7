"""edgeexit: early-exit neural networks from the workstation to edge devices.

The top-level package stays import-light (no torch, no onnxruntime): the device and the server
import it too. Workstation code lives in ``edgeexit.compile``, the device runtime in
``edgeexit.runtime``.
"""

from edgeexit.errors import (
    ArchiveError,
    ConfigError,
    DataError,
    EdgeExitError,
    ExportError,
    InputError,
    MeterUnavailable,
    ModelError,
    OffloadError,
    OffloadRejected,
    OffloadTimeout,
    PackageError,
    ProfileError,
    RequestError,
    ServerError,
    ServerUnavailable,
    UnknownNameError,
    UsageError,
)

__version__ = "0.1.0"

__all__ = [
    "ArchiveError",
    "ConfigError",
    "DataError",
    "EdgeExitError",
    "ExportError",
    "InputError",
    "MeterUnavailable",
    "ModelError",
    "OffloadError",
    "OffloadRejected",
    "OffloadTimeout",
    "PackageError",
    "ProfileError",
    "RequestError",
    "ServerError",
    "ServerUnavailable",
    "UnknownNameError",
    "UsageError",
    "__version__",
]
