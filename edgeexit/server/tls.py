"""Server credentials for TLS (``--tls-cert/--tls-key``) and mutual TLS (``--tls-ca`` too).

With a CA, a client must present a certificate that CA signed, or the handshake fails and the
client sees UNAVAILABLE: devices authenticate with their own certificates, no shared secret.
Files are read and sanity-checked here so a wrong path is one clear error at start-up, not a
handshake failure on the first connection.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from edgeexit.errors import ServerError


def _read_pem(path: Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ServerError(f"cannot read the {what} {path}: {err.strerror or err}; expected a PEM file") from None
    if b"-----BEGIN " not in data:
        raise ServerError(f"the {what} {path} is not PEM; expected a '-----BEGIN ...' block")
    return data


def server_credentials(cert: Path | None, key: Path | None, ca: Path | None = None) -> grpc.ServerCredentials | None:
    """None without TLS; TLS with ``cert`` and ``key``; mutual TLS when ``ca`` is given too."""
    if cert is None and key is None:
        if ca is not None:
            raise ServerError("--tls-ca needs --tls-cert and --tls-key: mutual TLS is TLS plus client certificates")
        return None
    if cert is None or key is None:
        raise ServerError("TLS needs both --tls-cert and --tls-key (the server's certificate chain and its key)")
    chain = _read_pem(cert, "certificate chain")
    private_key = _read_pem(key, "private key")
    roots = _read_pem(ca, "client CA certificate") if ca is not None else None
    return grpc.ssl_server_credentials(
        [(private_key, chain)], root_certificates=roots, require_client_auth=roots is not None
    )
