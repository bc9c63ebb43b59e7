"""TLS, mutual TLS and bearer tokens, with certificates made in the test (trustme)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgeexit.server import ServerError, ServerOptions, TailServer
from edgeexit.server.auth import read_tokens
from edgeexit.transport.generated import grpc_service_pb2 as pb

LIVE = pb.ServerLiveRequest()


@dataclass(frozen=True)
class Pki:
    server_cert: Path
    server_key: Path
    server_ca: bytes  # what clients trust
    device_ca: Path  # what the server trusts for client certificates (mTLS)
    device_key: bytes
    device_chain: bytes
    stranger_key: bytes  # a client certificate from a CA the server does not trust
    stranger_chain: bytes


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    server_ca, device_ca, other_ca = trustme.CA(), trustme.CA(), trustme.CA()
    server = server_ca.issue_cert("127.0.0.1", "localhost")
    device = device_ca.issue_cert("device-1")
    stranger = other_ca.issue_cert("device-2")
    server_cert, server_key, device_ca_file = root / "server.pem", root / "server.key", root / "devices-ca.pem"
    server_cert.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(server_key))
    device_ca.cert_pem.write_to_path(str(device_ca_file))
    return Pki(
        server_cert=server_cert,
        server_key=server_key,
        server_ca=server_ca.cert_pem.bytes(),
        device_ca=device_ca_file,
        device_key=device.private_key_pem.bytes(),
        device_chain=b"".join(blob.bytes() for blob in device.cert_chain_pems),
        stranger_key=stranger.private_key_pem.bytes(),
        stranger_chain=b"".join(blob.bytes() for blob in stranger.cert_chain_pems),
    )


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_tls(start_server: Callable[..., TailServer], connect, pki: Pki) -> None:
    server = start_server(tls_cert=pki.server_cert, tls_key=pki.server_key)
    assert server.tls
    secure = connect(server, grpc.ssl_channel_credentials(root_certificates=pki.server_ca))
    assert secure.stub.ServerLive(LIVE, timeout=10).live
    plain = connect(server)  # plaintext to a TLS port: the handshake never completes
    assert refused(lambda: plain.stub.ServerLive(LIVE, timeout=5)).code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_clients_without_a_trusted_certificate(
    start_server: Callable[..., TailServer], connect, pki: Pki, wire, hidden
) -> None:
    server = start_server(tls_cert=pki.server_cert, tls_key=pki.server_key, tls_ca=pki.device_ca)
    device = grpc.ssl_channel_credentials(pki.server_ca, private_key=pki.device_key, certificate_chain=pki.device_chain)
    client = connect(server, device)
    assert client.stub.ServerLive(LIVE, timeout=10).live
    response = client.stub.ModelInfer(wire.request(wire.tail("fp32"), wire.encode("fp32", hidden)), timeout=10)
    assert response.outputs[0].name == "logits"
    no_cert = connect(server, grpc.ssl_channel_credentials(root_certificates=pki.server_ca))
    assert refused(lambda: no_cert.stub.ServerLive(LIVE, timeout=5)).code() == grpc.StatusCode.UNAVAILABLE
    stranger = connect(
        server,
        grpc.ssl_channel_credentials(pki.server_ca, private_key=pki.stranger_key, certificate_chain=pki.stranger_chain),
    )
    assert refused(lambda: stranger.stub.ServerLive(LIVE, timeout=5)).code() == grpc.StatusCode.UNAVAILABLE


def test_bearer_token(start_server: Callable[..., TailServer], connect, wire, hidden) -> None:
    server = start_server(tokens=("old-token", "s3cret-token"))
    client = connect(server)
    request = wire.request(wire.tail("fp32"), wire.encode("fp32", hidden))
    missing = refused(lambda: client.stub.ModelInfer(request, timeout=10))
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer <token>" in missing.details()
    for metadata in ([("authorization", "Bearer wrong")], [("authorization", "Basic czNjcmV0LXRva2Vu")]):
        wrong = refused(lambda m=metadata: client.stub.ModelInfer(request, timeout=10, metadata=m))
        assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "wrong" not in wrong.details()  # the token is never echoed
    assert refused(lambda: client.stub.ServerLive(LIVE, timeout=10)).code() == grpc.StatusCode.UNAUTHENTICATED
    for token in ("s3cret-token", "old-token"):  # any configured token (rotation), scheme case-insensitive
        metadata = [("authorization", f"bearer {token}")]
        assert client.stub.ModelInfer(request, timeout=10, metadata=metadata).outputs[0].name == "logits"
        assert client.stub.ServerLive(LIVE, timeout=10, metadata=metadata).live
    # grpc.health.v1 stays open for load balancers and probes
    health = health_pb2_grpc.HealthStub(client.channel)
    status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert server.metrics.registry.get_sample_value("edgeexit_errors_total", {"code": "UNAUTHENTICATED"}) == 4


def test_token_over_mutual_tls(start_server: Callable[..., TailServer], connect, pki: Pki) -> None:
    server = start_server(tls_cert=pki.server_cert, tls_key=pki.server_key, tls_ca=pki.device_ca, tokens=("t0k",))
    device = grpc.ssl_channel_credentials(pki.server_ca, private_key=pki.device_key, certificate_chain=pki.device_chain)
    client = connect(server, device)
    assert refused(lambda: client.stub.ServerLive(LIVE, timeout=10)).code() == grpc.StatusCode.UNAUTHENTICATED
    assert client.stub.ServerLive(LIVE, timeout=10, metadata=[("authorization", "Bearer t0k")]).live


def test_token_file(tmp_path: Path) -> None:
    file = tmp_path / "tokens"
    file.write_text("# devices\nfirst\n\n  second  \n", encoding="utf-8")
    assert read_tokens(file) == ("first", "second")
    file.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(ServerError, match="holds no token"):
        read_tokens(file)
    with pytest.raises(ServerError, match="cannot read the token file"):
        read_tokens(tmp_path / "absent")


def test_tls_configuration_errors_are_clear(tmp_path: Path, tiny_repo: Path, pki: Pki) -> None:
    with pytest.raises(ServerError, match="both --tls-cert and --tls-key"):
        TailServer([tiny_repo], ServerOptions(listen="127.0.0.1:0", tls_cert=pki.server_cert))
    with pytest.raises(ServerError, match="--tls-ca needs --tls-cert and --tls-key"):
        TailServer([tiny_repo], ServerOptions(listen="127.0.0.1:0", tls_ca=pki.device_ca))
    not_pem = tmp_path / "cert.txt"
    not_pem.write_text("hello", encoding="utf-8")
    with pytest.raises(ServerError, match="is not PEM"):
        TailServer([tiny_repo], ServerOptions(listen="127.0.0.1:0", tls_cert=not_pem, tls_key=pki.server_key))
    with pytest.raises(ServerError, match="cannot read the private key"):
        TailServer([tiny_repo], ServerOptions(listen="127.0.0.1:0", tls_cert=pki.server_cert, tls_key=tmp_path / "no"))
