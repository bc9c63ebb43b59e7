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


class ArchiveError(PackageError):
    """A package tar is unsafe or does not match its manifest: a path outside its root, a link or
    device, a duplicate entry, a file the manifest does not list, or a file whose sha256 differs.
    It is refused before anything from it is used; re-pack it with ``edgeexit pack`` or re-copy it."""


class InputError(EdgeExitError):
    """An input tensor, image or file given to the runtime does not match the package."""


class OffloadError(EdgeExitError):
    """Offloading to a tail server failed: unreachable, too slow, refused, or a reply that does not
    decode. The device runtime catches it and finishes the request locally, so it reaches a caller
    only from the transport API itself. ``attempts``, ``bytes_sent`` and ``transfer_ms`` say what the
    failed offload cost, so a fallback's record can still show it."""

    def __init__(self, message: str, *, attempts: int = 0, bytes_sent: int = 0, transfer_ms: float = 0.0) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.bytes_sent = bytes_sent
        self.transfer_ms = transfer_ms
