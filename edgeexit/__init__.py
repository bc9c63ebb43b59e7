"""edgeexit: early-exit neural networks from the workstation to edge devices.

The top-level package stays import-light (no torch, no onnxruntime): the device and the server
import it too. Workstation code lives in ``edgeexit.compile``, the device runtime in
``edgeexit.runtime``.
"""

from edgeexit.errors import (
    DataError,
    EdgeExitError,
    ExportError,
    InputError,
    ModelError,
    PackageError,
)

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "EdgeExitError",
    "ExportError",
    "InputError",
    "ModelError",
    "PackageError",
    "__version__",
]
