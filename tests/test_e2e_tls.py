"""HTTPS at the door: both shipped lighttpd pairings serve TLS when RELAY_TLS_CERT is set
(conf/lighttpd-tls.sh), with a self-signed certificate here, and relayd behind them works
as over plain HTTP: public and token flows, bodies, keep-alive through mod_sockproxy."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support import ConnectionClosed, Lighttpd, Relayd, Upstream, exchange, pattern, relay_config, request_bytes
from support.stack import token_flow
from support.procs import LIGHTTPD_CONF, SOCKPROXY_CONF
from test_identity_support import Key, good_claims, jwks, rsa_key

def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class TlsStack:
    def __init__(self, workdir: Path, key: Key, conf: Path) -> None:
        self.cert, tls_key = self_signed(workdir)
        (workdir / "jwks.json").write_bytes(jwks(key))
        self.upstream = Upstream(workdir)
        config = relay_config(workdir, self.upstream.url, extra=token_flow(workdir / "jwks.json"))
        if conf == SOCKPROXY_CONF:
            config = config.replace("[server]\n", "[server]\ntrusted_proxies = []\n", 1)
        try:
            self.relayd = Relayd(workdir, config)
            self.lighttpd = Lighttpd(workdir, self.relayd.unix, conf,
                                     extra_env={"RELAY_TLS_CERT": str(self.cert), "RELAY_TLS_KEY": str(tls_key)})
        except BaseException:
            self.close()
            raise

    def connection(self) -> http.client.HTTPSConnection:
        context = ssl.create_default_context(cafile=str(self.cert))
        host, port = self.lighttpd.address
        return http.client.HTTPSConnection(host, port, context=context, timeout=10)

    def close(self) -> None:
        for part in ("lighttpd", "relayd", "upstream"):
            if hasattr(self, part):
                getattr(self, part).stop()


@pytest.fixture(scope="module")
def key() -> Key:
    return rsa_key("rsa-tls")


@pytest.fixture(scope="module", params=[LIGHTTPD_CONF, SOCKPROXY_CONF], ids=["mod_proxy", "mod_sockproxy"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, key: Key) -> Iterator[TlsStack]:
    running = TlsStack(tmp_path_factory.mktemp("tls"), key, request.param)
    yield running
    running.close()


def test_requests_over_https_reach_the_upstream(stack: TlsStack) -> None:
    conn = stack.connection()
    body = pattern(256 * 1024)
    conn.request("POST", "/data/over-tls?body=echo", body=body)
    answer = conn.getresponse()
    assert answer.status == 200
    assert answer.read() == body
    # the same TLS connection carries on
    conn.request("GET", "/data/again")
    again = conn.getresponse()
    assert again.status == 200 and again.getheader("X-Relay-Request-Id")
    again.read()
    conn.close()


def test_tokens_are_checked_over_https(stack: TlsStack, key: Key) -> None:
    token = key.token(good_claims(groups=["writers"])).decode()
    conn = stack.connection()
    conn.request("GET", "/secure/tls", headers={"Authorization": f"Bearer {token}"})
    ok = conn.getresponse()
    assert ok.status == 200
    ok.read()
    conn.request("GET", "/secure/tls-no-token")
    refused = conn.getresponse()
    assert refused.status == 401
    assert json.loads(refused.read())["error"] == "invalid_token"
    conn.close()


def test_plain_http_on_the_tls_port_reaches_nothing(stack: TlsStack) -> None:
    mark = stack.upstream.mark()
    with pytest.raises((ConnectionClosed, OSError, AssertionError)):  # closed, or TLS bytes back
        exchange(stack.lighttpd.address, request_bytes("GET", "/data/plaintext"))
    conn = stack.connection()  # a sentinel over TLS orders the upstream's log
    conn.request("GET", "/data/sentinel-after-plaintext")
    assert conn.getresponse().status == 200
    conn.close()
    assert [r["target"] for r in stack.upstream.since(mark)] == ["/data/sentinel-after-plaintext"]
