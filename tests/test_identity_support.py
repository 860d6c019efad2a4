"""Helpers for the identity tests: signing keys, good and forged tokens, a real JWKS server.

Tokens are minted with PyJWT (an implementation independent of relay's verifier), or
assembled segment by segment when a test needs a token no library would produce. The
JWKS server is a real HTTP server on 127.0.0.1 in a thread; a test changes what it
serves and waits for requests on a condition, never by sleeping. The few tests at the
bottom check the helpers themselves.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import http.server
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from relay.config import ClaimsMapping, IssuerConfig
from relay.identity.key_ring import KeyRing
from relay.identity.key_rotation import first_key
from relay.identity.signing import IdentitySigner

ISS = "https://idp.example.test/"
AUD = "relay"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(n: int) -> str:
    return b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


@functools.cache
def _rsa(seed: str, bits: int = 2048) -> rsa.RSAPrivateKey:
    """RSA generation is slow: one key per name for the whole session."""
    return rsa.generate_private_key(65537, bits)


class Key:
    """A test signing key with its kid and algorithm."""

    def __init__(self, kid: str, alg: str, private: PrivateKey, publish_alg: bool = True) -> None:
        self.kid = kid
        self.alg = alg
        self.private = private
        self.publish_alg = publish_alg

    def jwk(self, **extra: Any) -> dict[str, Any]:
        """The public JWK (with ``alg`` and ``use`` unless told otherwise)."""
        public = self.private.public_key()
        out: dict[str, Any]
        if isinstance(public, rsa.RSAPublicKey):
            numbers = public.public_numbers()
            out = {"kty": "RSA", "n": _uint(numbers.n), "e": _uint(numbers.e)}
        elif isinstance(public, ec.EllipticCurvePublicKey):
            size = (public.curve.key_size + 7) // 8
            point = public.public_numbers()
            crv = {"secp256r1": "P-256", "secp384r1": "P-384"}[public.curve.name]
            out = {"kty": "EC", "crv": crv, "x": b64(point.x.to_bytes(size, "big")),
                   "y": b64(point.y.to_bytes(size, "big"))}  # fmt: skip
        else:
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            out = {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}
        out["kid"] = self.kid
        if self.publish_alg:
            out["alg"] = self.alg
        out["use"] = "sig"
        out.update(extra)
        return out

    def pem(self) -> bytes:
        return self.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())  # fmt: skip

    def token(self, claims: dict[str, Any] | None = None, alg: str | None = None, **header: Any) -> bytes:
        """A token signed by PyJWT; ``header`` entries are added (kid=None removes the kid)."""
        fields = {"kid": self.kid, **header}
        fields = {k: v for k, v in fields.items() if v is not None}
        return jwt.encode(claims if claims is not None else good_claims(), self.pem(), algorithm=alg or self.alg,
                          headers=fields).encode("ascii")  # fmt: skip


def rsa_key(kid: str = "rsa-1", alg: str = "RS256", bits: int = 2048) -> Key:
    return Key(kid, alg, _rsa(kid, bits))


def ec_key(kid: str = "ec-1", alg: str = "ES256") -> Key:
    curve = ec.SECP384R1() if alg == "ES384" else ec.SECP256R1()
    return Key(kid, alg, ec.generate_private_key(curve))


def ed_key(kid: str = "ed-1") -> Key:
    return Key(kid, "EdDSA", ed25519.Ed25519PrivateKey.generate())


def good_claims(**overrides: Any) -> dict[str, Any]:
    """Claims that pass every check for ISS/AUD; ``name=None`` removes a claim."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISS, "sub": "alice", "aud": AUD, "iat": now, "nbf": now, "exp": now + 600, "jti": "jti-1",
        "groups": ["ingest-writers"], "scope": "orders:write orders:read",
    }  # fmt: skip
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def segment(value: dict[str, Any] | bytes) -> bytes:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return b64(raw).encode("ascii")


def forge(header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes, signature: bytes = b"") -> bytes:
    """A compact token from raw parts, for tokens no library would produce."""
    return segment(header) + b"." + segment(payload) + b"." + b64(signature).encode("ascii")


def split(token: bytes) -> tuple[bytes, bytes, bytes]:
    head, body, sig = token.split(b".")
    return head, body, sig


def jwks(*keys: Key | dict[str, Any]) -> bytes:
    return json.dumps({"keys": [k if isinstance(k, dict) else k.jwk() for k in keys]}).encode()


def issuer(**fields: Any) -> IssuerConfig:
    """An issuer config for ISS/AUD; pass a key source (jwks_file=..., jwks_url=..., ...)."""
    base = IssuerConfig(name="test", issuer=ISS, audiences=(AUD,), algorithms=("RS256", "ES256", "EdDSA"),
                        claims=ClaimsMapping())  # fmt: skip
    return replace(base, **fields)


def bearer(token: bytes) -> bytes:
    return b"Bearer " + token


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Yield to the event loop until ``condition()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


class JwksServer:
    """A real HTTP server on 127.0.0.1 serving a JWKS and an OIDC discovery document.

    ``/jwks.json`` answers ``document`` with ``status``; ``/.well-known/openid-configuration``
    points at it (``discovery`` overrides the document). While ``hold`` is set, answers
    wait for ``release`` (to test fetch timeouts without sleeping). ``paths`` records
    every request; ``wait_for_requests`` blocks on a condition until enough arrived.
    """

    def __init__(self) -> None:
        self.document = b'{"keys": []}'
        self.status = 200
        self.discovery: dict[str, Any] | None = None
        self.redirect_to: str | None = None
        self.hold = False
        self.release = threading.Event()
        self.paths: list[str] = []
        self._arrived = threading.Condition()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._arrived:
                    server.paths.append(self.path)
                    server._arrived.notify_all()
                if server.hold:
                    server.release.wait(10)
                if server.redirect_to is not None:
                    self.send_response(302)
                    self.send_header("Location", server.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path == "/.well-known/openid-configuration":
                    doc = server.discovery or {"issuer": ISS, "jwks_uri": server.url("/jwks.json")}
                    body, status = json.dumps(doc).encode(), 200
                elif self.path == "/jwks.json":
                    body, status = server.document, server.status
                else:
                    body, status = b"not here", 404
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        # a short poll interval makes shutdown() quick at the end of each test
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)

    def url(self, path: str = "/jwks.json") -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def serve(self, *keys: Key | dict[str, Any]) -> None:
        self.document = jwks(*keys)
        self.status = 200

    def requests(self, path: str = "/jwks.json") -> int:
        with self._arrived:
            return self.paths.count(path)

    def wait_for_requests(self, count: int, path: str = "/jwks.json", timeout: float = 5.0) -> None:
        with self._arrived:
            if not self._arrived.wait_for(lambda: self.paths.count(path) >= count, timeout):
                raise AssertionError(f"{path}: {self.paths.count(path)} requests, expected {count}")

    def __enter__(self) -> JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()


@contextmanager
def jwks_server(*keys: Key) -> Iterator[JwksServer]:
    with JwksServer() as server:
        server.serve(*keys)
        yield server


# -- the helpers themselves ----------------------------------------------------------------


def test_server_serves_the_current_document_and_counts_requests() -> None:
    key = ec_key()
    with jwks_server(key) as server:
        with urllib.request.urlopen(server.url(), timeout=5) as answer:
            assert json.loads(answer.read())["keys"][0]["kid"] == key.kid
        server.serve()
        with urllib.request.urlopen(server.url(), timeout=5) as answer:
            assert json.loads(answer.read()) == {"keys": []}
        server.wait_for_requests(2)
        assert server.requests() == 2


def test_minted_tokens_verify_with_pyjwt_and_the_published_jwk() -> None:
    for key in (rsa_key(), ec_key(), ed_key()):
        token = key.token()
        public = jwt.PyJWK(key.jwk()).key
        claims = jwt.decode(token, public, algorithms=[key.alg], audience=AUD, issuer=ISS)
        assert claims["sub"] == "alice"
        assert jwt.get_unverified_header(token)["kid"] == key.kid


def relay_signer(path: str) -> IdentitySigner:
    """relay's signer over a key set holding the one key in ``path`` (made when absent)."""
    return IdentitySigner(KeyRing((first_key(path, time.time()),)))
