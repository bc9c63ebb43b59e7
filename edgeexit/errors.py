"""Every exception edgeexit raises on purpose, in one module, grouped by what the caller can do.

In the manner of httpx: catch ``EdgeExitError`` for anything edgeexit raises, or one branch for
the failures a caller handles differently. Every message says what failed, what was expected and
how to fix it, so the CLI prints it as-is (no traceback).

::

    EdgeExitError
    ├── UsageError             the call itself is wrong: fix the arguments / flags / settings
    │   ├── ConfigError          device.toml cannot be used as written (the message names the key)
    │   └── UnknownNameError     a name no registry has (also a LookupError): the message lists the known ones
    ├── DataError              a data set cannot be found or read, or has the wrong layout
    ├── InputError             an input given to the runtime does not match the package
    ├── ModelError             a model, factory, backbone or checkpoint is not what edgeexit expected
    ├── ExportError            export failed (graph not written, not checked, not matching PyTorch)
    ├── PackageError           a package on disk is missing, altered, of an unknown version, invalid
    │   └── ArchiveError         a package tar is unsafe or does not match its manifest
    ├── ProfileError           a device profile (profile.json) cannot be used with this package
    ├── MeterUnavailable       this machine has no such energy meter (no RAPL / INA files, not readable)
    ├── ServerError            a server cannot start as configured (port, certificate, token, model)
    ├── RequestError           one request to a server cannot be served (``code`` goes on the wire)
    └── OffloadError           offloading to a tail server failed; the device finishes locally
        ├── OffloadTimeout       no reply within the deadline: retrying later may work
        ├── ServerUnavailable    no server could be reached (down, refused, circuit open)
        └── OffloadRejected      a server answered with an error status (``code``): the request is wrong

The module imports nothing but the standard library: the device, the daemon and the server all
import it, and none of them may pull grpc or torch through it.
"""

from __future__ import annotations

from typing import Any


class EdgeExitError(Exception):
    """Base of everything edgeexit raises on purpose."""


# -- the call is wrong ------------------------------------------------------------------------------------------


class UsageError(EdgeExitError):
    """Arguments, flags or settings that conflict, are missing, or are out of range.

    Nothing was run: fix the call (the message says which option and what it accepts)."""


class ConfigError(UsageError):
    """device.toml cannot be used as written; the message names the key."""


class UnknownNameError(UsageError, LookupError):
    """A criterion, codec, head, adapter, policy, preset or model name that is not registered.

    Also a ``LookupError``, like a missing key; the message lists the names that exist."""


# -- what was handed in is wrong ---------------------------------------------------------------------------------


class DataError(EdgeExitError):
    """A data set could not be found or read, or does not have the expected layout."""


class InputError(EdgeExitError):
    """An input tensor, image or file given to the runtime does not match the package."""


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


class ProfileError(EdgeExitError):
    """A profile.json cannot be used: unreadable, malformed, or measured on another package."""


class MeterUnavailable(EdgeExitError):
    """This energy source cannot be used here; the message says why (no such files, not readable...).
    ``best_meter`` then falls back to the next source, the power model last."""


# -- serving ---------------------------------------------------------------------------------------------------


class ServerError(EdgeExitError):
    """A server (``edgeexit serve``, the device daemon) cannot start as configured: a port, a
    certificate, a token file, a model."""


class RequestError(EdgeExitError):
    """One request to a server cannot be served. ``code`` (a ``grpc.StatusCode``) goes on the wire
    and ``message`` says what was expected, so validation, batching and the handlers agree on one
    mapping (docs/offload.md, "Status codes")."""

    def __init__(self, code: Any, message: str, *, trailing: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.trailing = trailing  # trailing metadata for the client to read (e.g. a shed's expected time)


# -- offloading ------------------------------------------------------------------------------------------------


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


class OffloadTimeout(OffloadError):
    """No reply within the offload's deadline (DEADLINE_EXCEEDED, or lost on an emulated link).
    The server may be slow rather than wrong: a later offload may succeed."""


class ServerUnavailable(OffloadError):
    """No tail server could be reached: every address refused or was down (UNAVAILABLE), or its
    circuit breaker is open. Finish locally; the breaker probes again later."""


class OffloadRejected(OffloadError):
    """A tail server answered with an error status (``code``, e.g. INVALID_ARGUMENT,
    FAILED_PRECONDITION for another package's weights, RESOURCE_EXHAUSTED): retrying the same
    request elsewhere will not help unless the status says the server is full."""

    def __init__(
        self, message: str, *, code: Any = None, attempts: int = 0, bytes_sent: int = 0, transfer_ms: float = 0.0
    ) -> None:
        super().__init__(message, attempts=attempts, bytes_sent=bytes_sent, transfer_ms=transfer_ms)
        self.code = code


class OffloadShed(OffloadRejected):
    """The tail server is loaded beyond what the request's deadline allows and said so at once
    (RESOURCE_EXHAUSTED: its queue is full, or its expected time would pass the deadline) instead of
    computing it late. Finish locally now and offload less for a while (the policies back off);
    another server may have room. ``expected_server_ms`` is the time the server expected (None: unsaid)."""

    def __init__(
        self, message: str, *, code: Any = None, expected_server_ms: float | None = None, attempts: int = 0,
        bytes_sent: int = 0, transfer_ms: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__(message, code=code, attempts=attempts, bytes_sent=bytes_sent, transfer_ms=transfer_ms)
        self.expected_server_ms = expected_server_ms


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
    "OffloadShed",
    "OffloadTimeout",
    "PackageError",
    "ProfileError",
    "RequestError",
    "ServerError",
    "ServerUnavailable",
    "UnknownNameError",
    "UsageError",
]
