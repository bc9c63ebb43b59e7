"""TLS for the tail channel, as one record: what ``--tls-*`` flags, ``device.toml``'s
``[offload.tls]`` and ``TailClient(tls=...)`` all take.

The record loads nothing (grpc is imported only when credentials are built), so a device that
only reads its settings, or runs locally, never pays for grpc.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeexit.errors import UsageError

if TYPE_CHECKING:
    import grpc


@dataclass(frozen=True)
class TlsSettings:
    """``ca`` verifies the server (None: the system's roots); ``cert`` and ``key`` (together) are
    this device's certificate for mutual TLS; ``server_name`` is the name checked in the server's
    certificate when dialling an address it does not list."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel credentials, the PEM files read now (a missing one is a UsageError naming it)."""
        import grpc

        if (self.cert is None) != (self.key is None):
            raise UsageError(
                "TLS client certificate and key go together; got only the "
                + ("certificate" if self.cert is not None else "key")
                + ": pass both (--tls-cert and --tls-key) or neither"
            )
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "CA certificate"),
            private_key=_read(self.key, "private key"),
            certificate_chain=_read(self.cert, "certificate"),
        )


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise UsageError(f"cannot read the TLS {what} {path}: {err.strerror or err}; expected a PEM file") from None
