"""One small exception hierarchy, in the style of httpx/requests.

Every message says what failed, what was expected and how to fix it, so that the CLI can print
it as-is (no traceback) and a script can catch ``EdgeExitError`` for anything edgeexit raises.
"""

from __future__ import annotations


class EdgeExitError(Exception):
    """Base of everything edgeexit raises on purpose."""


class DataError(EdgeExitError):
    """A data set could not be found or read, or does not have the expected layout."""


class ModelError(EdgeExitError):
    """A model, factory, backbone or checkpoint is not what edgeexit expected."""


class ExportError(EdgeExitError):
    """Export failed: the graph could not be written, checked or did not match PyTorch."""


class PackageError(EdgeExitError):
    """A package on disk is missing, altered, of an unknown version or otherwise invalid."""


class InputError(EdgeExitError):
    """An input tensor, image or file given to the runtime does not match the package."""
