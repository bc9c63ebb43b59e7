"""TailClient against in-process stand-in servers: deadlines, failover, round-robin, breakers,
bearer tokens, TLS and message limits. Counts outcomes; never asserts wall-clock times."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from edgeexit.codecs import create_codec
from edgeexit.errors import EdgeExitError, OffloadError
from edgeexit.transport import TailClient, TlsSettings
from edgeexit.transport.generated import grpc_service_pb2 as pb

from .conftest import CLASSES, Behaviour, fake_logits, logits_reply

MODEL = "digits__from_1__fp16"


def _payload(n: int = 2, seed: int = 0, codec: str = "fp16"):
    hidden = np.random.default_rng(seed).normal(size=(n, 16, 4, 4)).astype(np.float32)
    encoded = create_codec(codec).encode(hidden)
    return encoded, fake_logits(create_codec(codec).decode(encoded))


def test_one_call_returns_the_tails_logits_and_timings(stand_in) -> None:
    server = stand_in()
    encoded, expected = _payload()
    with TailClient(server.address, timeout_s=5) as client:
        reply = client.infer(MODEL, encoded, package_id="pid", classes=CLASSES)
    np.testing.assert_array_equal(reply.logits, expected)
    assert reply.server == server.address
    assert reply.attempts == 1
    assert reply.bytes_sent > encoded.nbytes  # the tensor and the request's framing
    assert reply.transfer_ms >= 0
    assert (reply.queue_ms, reply.compute_ms) == (0.25, 0.5)
    seen = server.behaviour.seen[0]
    assert seen.model_name == MODEL
    assert seen.parameters["package_id"].string_param == "pid"
    assert "authorization" not in server.behaviour.metadata[0]


@pytest.mark.parametrize("codec", ["fp32", "fp16", "int8"])
def test_every_codec_reaches_the_server_intact(stand_in, codec: str) -> None:
    server = stand_in()
    encoded, expected = _payload(3, codec=codec)
    with TailClient(server.address, timeout_s=5) as client:
        np.testing.assert_array_equal(client.infer(MODEL, encoded, package_id="p").logits, expected)


def test_round_robin_over_healthy_servers(stand_in) -> None:
    servers = [stand_in() for _ in range(3)]
    encoded, _ = _payload()
    with TailClient([s.address for s in servers], timeout_s=5) as client:
        answered = [client.infer(MODEL, encoded, package_id="p").server for _ in range(9)]
    addresses = [s.address for s in servers]
    assert answered == addresses * 3
    assert [len(s.behaviour.seen) for s in servers] == [3, 3, 3]


def test_failover_to_the_next_server_within_one_request(stand_in, free_port: int) -> None:
    live = stand_in()
    dead = f"127.0.0.1:{free_port}"
    encoded, expected = _payload()
    with TailClient([dead, live.address], timeout_s=5, failures_to_open=2, cooldown_s=60) as client:
        replies = [client.infer(MODEL, encoded, package_id="p") for _ in range(6)]
        assert client.states() == {dead: "open", live.address: "closed"}
    assert all(r.server == live.address for r in replies)
    for r in replies:
        np.testing.assert_array_equal(r.logits, expected)
    # the dead address was tried until its breaker opened (twice), then skipped: no more attempts
    assert sum(r.attempts for r in replies) == 6 + 2
    assert len(live.behaviour.seen) == 6


def test_an_unreachable_server_is_an_offload_error_then_the_breaker_skips_it(free_port: int) -> None:
    dead = f"127.0.0.1:{free_port}"
    encoded, _ = _payload()
    with TailClient(dead, timeout_s=2, failures_to_open=2, cooldown_s=60) as client:
        for _ in range(2):
            with pytest.raises(OffloadError, match="UNAVAILABLE") as caught:
                client.infer(MODEL, encoded, package_id="p")
            assert caught.value.attempts == 1
            assert caught.value.bytes_sent > 0
        with pytest.raises(OffloadError, match="circuit open") as caught:
            client.infer(MODEL, encoded, package_id="p")
        assert caught.value.attempts == 0
        assert caught.value.bytes_sent == 0
        assert client.states() == {dead: "open"}


def test_a_hung_server_costs_one_deadline(stand_in) -> None:
    server = stand_in(Behaviour(delay_s=1.0))
    encoded, _ = _payload()
    with TailClient(server.address, timeout_s=0.1) as client, pytest.raises(OffloadError) as caught:
        client.infer(MODEL, encoded, package_id="p")
    assert "DEADLINE_EXCEEDED" in str(caught.value)
    assert "no reply within 100 ms" in str(caught.value)


def test_a_hung_server_spends_the_budget_of_the_whole_request(stand_in) -> None:
    slow = stand_in(Behaviour(delay_s=1.0))
    fast = stand_in()
    encoded, _ = _payload()
    with TailClient([slow.address, fast.address], timeout_s=0.2) as client, pytest.raises(OffloadError) as caught:
        client.infer(MODEL, encoded, package_id="p")  # the first address eats the deadline
    assert "DEADLINE_EXCEEDED" in str(caught.value)
    assert f"{fast.address}: not tried" in str(caught.value)


@pytest.mark.parametrize(
    ("status", "fragment"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT: scripted"),
        (grpc.StatusCode.NOT_FOUND, "serve the same package's tails"),
        (grpc.StatusCode.FAILED_PRECONDITION, "other weights"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED"),
        (grpc.StatusCode.INTERNAL, "INTERNAL"),
    ],
)
def test_server_errors_are_offload_errors(stand_in, status: grpc.StatusCode, fragment: str) -> None:
    server = stand_in(Behaviour(status=status))
    encoded, _ = _payload()
    with TailClient(server.address, timeout_s=5) as client, pytest.raises(OffloadError) as caught:
        client.infer(MODEL, encoded, package_id="p")
    assert fragment in str(caught.value)
    assert server.address in str(caught.value)


def test_a_reply_that_does_not_decode_fails_over_and_counts_against_the_breaker(stand_in) -> None:
    def wrong(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        return logits_reply(np.zeros((1, 3), np.float32))  # wrong samples and classes

    broken = stand_in(Behaviour(reply=wrong))
    good = stand_in()
    encoded, expected = _payload(2)
    with TailClient([broken.address, good.address], timeout_s=5, failures_to_open=1, cooldown_s=60) as client:
        reply = client.infer(MODEL, encoded, package_id="p", classes=CLASSES)
        assert reply.server == good.address
        assert reply.attempts == 2
        np.testing.assert_array_equal(reply.logits, expected)
        assert client.states()[broken.address] == "open"
    with TailClient(broken.address, timeout_s=5) as client, pytest.raises(OffloadError, match=r"shape \[1, 3\]"):
        client.infer(MODEL, encoded, package_id="p", classes=CLASSES)


def test_bearer_token_travels_as_metadata(stand_in) -> None:
    server = stand_in(Behaviour(token="s3cret"))
    encoded, _ = _payload()
    with TailClient(server.address, timeout_s=5, token="s3cret\n") as client:
        client.infer(MODEL, encoded, package_id="p")
    assert server.behaviour.metadata[-1]["authorization"] == "Bearer s3cret"
    with TailClient(server.address, timeout_s=5) as client, pytest.raises(OffloadError, match="UNAUTHENTICATED"):
        client.infer(MODEL, encoded, package_id="p")
    with TailClient(server.address, timeout_s=5, token="wrong") as client, pytest.raises(OffloadError, match="token"):
        client.infer(MODEL, encoded, package_id="p")


def test_a_request_over_the_message_limit_is_refused_before_sending(stand_in) -> None:
    server = stand_in()
    encoded, _ = _payload(8)
    with TailClient(server.address, timeout_s=5, max_message_bytes=1024) as client:
        with pytest.raises(OffloadError, match=r"bytes; the limit is 1,024") as caught:
            client.infer(MODEL, encoded, package_id="p")
        assert caught.value.attempts == 0
        assert client.states() == {server.address: "closed"}  # not the server's fault
    assert server.behaviour.seen == []


def test_a_reply_over_the_receive_limit_is_an_offload_error(stand_in) -> None:
    def huge(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        return logits_reply(np.zeros((2, 100_000), np.float32))

    server = stand_in(Behaviour(reply=huge))
    encoded, _ = _payload(2)
    limited = TailClient(server.address, timeout_s=5, max_message_bytes=64 * 1024)
    with limited as client, pytest.raises(OffloadError, match="RESOURCE_EXHAUSTED"):
        client.infer(MODEL, encoded, package_id="p")


def test_a_restarted_server_is_probed_and_used_again(stand_in) -> None:
    """Kill, fail until the breaker opens, restart on the same port: the half-open probe closes it."""
    server = stand_in()
    port = server.port
    encoded, expected = _payload()
    with TailClient(server.address, timeout_s=2, failures_to_open=2, cooldown_s=0.05) as client:
        client.infer(MODEL, encoded, package_id="p")
        server.stop()
        outcomes = []
        for _ in range(3):
            try:
                client.infer(MODEL, encoded, package_id="p")
                outcomes.append("ok")
            except OffloadError:
                outcomes.append("failed")
        assert outcomes == ["failed"] * 3
        assert client.states()[server.address] in ("open", "half_open")
        stand_in(port=port)
        for _ in range(400):  # the breaker's cool-down and the reconnect: bounded by count, not by time
            try:
                reply = client.infer(MODEL, encoded, package_id="p")
                break
            except OffloadError:
                threading.Event().wait(0.02)
        else:
            pytest.fail("the restarted server was never used again")
        np.testing.assert_array_equal(reply.logits, expected)
        assert client.states()[server.address] == "closed"


def test_one_client_serves_many_threads(stand_in) -> None:
    servers = [stand_in(), stand_in()]
    encoded, expected = _payload()
    errors: list[BaseException] = []
    answers: list[str] = []
    with TailClient([s.address for s in servers], timeout_s=5) as client:

        def work() -> None:
            try:
                for _ in range(10):
                    reply = client.infer(MODEL, encoded, package_id="p")
                    np.testing.assert_array_equal(reply.logits, expected)
                    answers.append(reply.server)
            except BaseException as err:
                errors.append(err)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert len(answers) == 40
    assert {answers.count(s.address) for s in servers} == {20}


def test_tls_and_mutual_tls(stand_in, tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    client_cert = ca.issue_cert("device-1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client_cert.private_key_pem.write_to_path(str(tmp_path / "device.key"))
    client_cert.cert_chain_pems[0].write_to_path(str(tmp_path / "device.pem"))
    key, chain = cert.private_key_pem.bytes(), b"".join(p.bytes() for p in cert.cert_chain_pems)
    encoded, expected = _payload()

    tls_server = stand_in(credentials=grpc.ssl_server_credentials([(key, chain)]))
    with TailClient(tls_server.address, timeout_s=5, tls=TlsSettings(ca=tmp_path / "ca.pem")) as client:
        np.testing.assert_array_equal(client.infer(MODEL, encoded, package_id="p").logits, expected)
    with TailClient(tls_server.address, timeout_s=2) as plain, pytest.raises(OffloadError, match="UNAVAILABLE"):
        plain.infer(MODEL, encoded, package_id="p")  # plaintext to a TLS server never gets through

    mtls_server = stand_in(
        credentials=grpc.ssl_server_credentials(
            [(key, chain)], root_certificates=ca.cert_pem.bytes(), require_client_auth=True
        )
    )
    mutual = TlsSettings(ca=tmp_path / "ca.pem", cert=tmp_path / "device.pem", key=tmp_path / "device.key")
    with TailClient(mtls_server.address, timeout_s=5, tls=mutual) as client:
        np.testing.assert_array_equal(client.infer(MODEL, encoded, package_id="p").logits, expected)
    server_only = TlsSettings(ca=tmp_path / "ca.pem")
    with TailClient(mtls_server.address, timeout_s=2, tls=server_only) as client, pytest.raises(OffloadError):
        client.infer(MODEL, encoded, package_id="p")  # no client certificate: refused


def test_tls_settings_are_checked_up_front(tmp_path: Path) -> None:
    with pytest.raises(EdgeExitError, match="certificate and key go together"):
        TailClient("127.0.0.1:1", tls=TlsSettings(cert=tmp_path / "c.pem"))
    with pytest.raises(EdgeExitError, match=r"cannot read the TLS CA certificate .*nowhere\.pem"):
        TailClient("127.0.0.1:1", tls=TlsSettings(ca=tmp_path / "nowhere.pem"))


@pytest.mark.parametrize(
    ("addresses", "kwargs", "fragment"),
    [
        ([], {}, "HOST:PORT"),
        (["localhost"], {}, "HOST:PORT"),
        (["host:port"], {}, "HOST:PORT"),
        (["127.0.0.1:1"], {"timeout_s": 0}, "above 0 seconds"),
        (["127.0.0.1:1"], {"token": "a\nb"}, "spans lines"),
    ],
)
def test_bad_client_settings_are_refused(addresses: list[str], kwargs: dict, fragment: str) -> None:
    with pytest.raises(EdgeExitError, match=fragment):
        TailClient(addresses, **kwargs)


def test_addresses_are_deduplicated_and_schemes_accepted() -> None:
    client = TailClient(["127.0.0.1:1", "127.0.0.1:1", "[::1]:2", "unix:/tmp/tail.sock"])
    assert client.addresses == ("127.0.0.1:1", "[::1]:2", "unix:/tmp/tail.sock")
    client.close()
    with pytest.raises(OffloadError, match="closed"):
        client.infer(MODEL, _payload()[0], package_id="p")


@pytest.mark.parametrize("keepalive_s", [30.0, None])
def test_channels_set_keepalive_and_message_limits(stand_in, monkeypatch: pytest.MonkeyPatch,
                                                   keepalive_s: float | None) -> None:  # fmt: skip
    """What the channel is opened with (the server's side is set by edgeexit serve)."""
    opened: list[dict[str, object]] = []
    real = grpc.insecure_channel

    def recording(target: str, options=None, **kwargs):
        opened.append(dict(options or ()))
        return real(target, options=options, **kwargs)

    monkeypatch.setattr(grpc, "insecure_channel", recording)
    server = stand_in()
    with TailClient(server.address, timeout_s=5, max_message_bytes=8 << 20, keepalive_s=keepalive_s) as client:
        client.infer(MODEL, _payload()[0], package_id="p")
    assert len(opened) == 1
    options = opened[0]
    assert options["grpc.max_send_message_length"] == options["grpc.max_receive_message_length"] == 8 << 20
    assert options["grpc.max_reconnect_backoff_ms"] <= 2000  # a breaker's probe is not stuck behind gRPC's backoff
    if keepalive_s is None:
        assert not any(key.startswith("grpc.keepalive") for key in options)
    else:
        assert options["grpc.keepalive_time_ms"] == 30_000
        assert options["grpc.keepalive_timeout_ms"] > 0
        assert options["grpc.keepalive_permit_without_calls"] == 1


def test_keepalive_must_be_positive() -> None:
    with pytest.raises(EdgeExitError, match="keepalive_s is 0"):
        TailClient("127.0.0.1:1", keepalive_s=0)
