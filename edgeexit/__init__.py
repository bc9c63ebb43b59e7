"""edgeexit: early-exit neural networks from the workstation to edge devices.

The top-level package stays import-light (no torch, no onnxruntime): the device and the server
import it too. Workstation code lives in ``edgeexit.compile``, the device runtime in
``edgeexit.runtime``.
"""

from edgeexit import errors as _errors
from edgeexit.errors import *  # noqa: F403  every public error, as edgeexit.<Name>

__version__ = "0.1.0"

__all__ = [*_errors.__all__, "__version__"]
