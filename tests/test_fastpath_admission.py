"""admit_head, the sans-IO admission core, on both implementations: parsed heads in, the
request or the refusal out, with no socket anywhere. Each case is checked on its own,
then a differential property test feeds both implementations the same heads (hostile
ones included), parsed by httptools as relayd parses them, and holds their outcomes equal.

The heads are routed through a real Policy and a real Authenticator reading a JWKS file;
``Server`` stands in for the connection-wide ServerContext, of which admission reads only
the limits, the policy, the shed decision and the request ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httptools
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from relay.config import AuditConfig, Config, FlowConfig, Rule, ServerConfig
from relay.errors import Overloaded, RelayError
from relay.flowcontrol import NO_BODY
from relay.identity import Authenticator
from relay.policy import Policy
from relay.sinks.static import StaticSink
from support.impls import COMPILED, IMPLS, NOT_BUILT, TWIN
from test_identity_support import bearer, good_claims, issuer, jwks, rsa_key

KEY = rsa_key("rsa-admission")
SINK = StaticSink("s", b"", b"text/plain")
GOOD = bearer(KEY.token())
NOT_A_WRITER = bearer(KEY.token(good_claims(groups=["readers"])))
FLOWS = (
    FlowConfig(name="public", path="/public/", sink="s", methods=("GET", "POST"), auth="none", max_body=1000),
    FlowConfig(name="orders", path="/orders/", sink="s", methods=("GET", "POST", "PUT"),
               allow=Rule(groups=("ingest-writers",))),
    FlowConfig(name="admin", path="/orders/admin", sink="s", methods=("GET",), allow=Rule(groups=("admins",))),
    FlowConfig(name="plain", path="/public/a", sink="s", methods=("GET",), auth="none"),
)  # fmt: skip


class Server:
    """What admission reads of the ServerContext."""

    def __init__(self, policy: Policy, authenticator: Authenticator) -> None:
        self.policy = policy
        self.authenticator = authenticator
        self.max_header_bytes = 4096
        self.draining = False
        self.shed: RelayError | None = None
        self.ids = 0

    def overloaded(self) -> RelayError | None:
        return self.shed

    def unshared(self, fail_closed: bool) -> None:
        return None

    def next_request_id(self) -> str:
        self.ids += 1
        return f"r-{self.ids}"


def policy_for(impl: ModuleType) -> Policy:
    """The test policy with its header rules made by ``impl`` (each scans with its own)."""
    policy = Policy(Config("relay.toml", ServerConfig(listen=()), AuditConfig(), (), {}, FLOWS), {"s": SINK}, 1, None)

    def rules(built: Any) -> Any:
        return impl.HeaderRules(built.names, built.prefixes, underscores=built.underscores)

    for flow in policy.table.flows:
        flow.drop = rules(flow.drop)
    policy.default_drop = rules(policy.default_drop)
    return policy


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[ModuleType, Server]]:
    """A Server per implementation, sharing one Authenticator."""
    path = tmp_path_factory.mktemp("admission") / "jwks.json"
    path.write_bytes(jwks(KEY))
    loop = asyncio.new_event_loop()
    authenticator = Authenticator((issuer(jwks_file=str(path)),))
    loop.run_until_complete(authenticator.start())
    try:
        yield {impl: Server(policy_for(impl), authenticator) for impl in IMPLS}
    finally:
        loop.run_until_complete(authenticator.close())
        loop.close()


@pytest.fixture
def server(servers: dict[ModuleType, Server], impl: ModuleType) -> Server:
    return servers[impl]


class Head(httptools.HttpRequestParser):  # type: ignore[misc]
    """One request head parsed by httptools, collected as ClientConnection collects it."""

    def __init__(self, raw: bytes) -> None:
        super().__init__(self)
        self.raw = raw
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.size = 0
        self.complete = False
        self.keep_alive = False
        try:
            self.feed_data(raw)
        except httptools.HttpParserUpgrade:
            pass  # the head is complete; relay refuses the upgrade itself

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.complete:
            self.headers.append((name, value))
            self.size += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.should_keep_alive()  # as relayd reads it: llhttp forgets it by the message's end


def admit(impl: ModuleType, server: Server, raw: bytes, *, at_start: bool = True, peer: str | None = "192.0.2.1",
          trusted: bool = False) -> tuple[Any, ...]:
    """The outcome of admitting ``raw``, comparable across implementations."""
    head = Head(raw)
    assert head.complete
    bodies: list[tuple[int, bool]] = []

    def make_body(max_body: int, expects_continue: bool) -> Any:
        bodies.append((max_body, expects_continue))
        return ("body", max_body)

    server.ids = 0
    try:
        outcome = impl.admit_head(server, head.size, head.get_method(), head.get_http_version(), head.url,
                                  head.headers, head.keep_alive, raw, at_start, peer, trusted, make_body)
    except RelayError as err:
        return ("raised", type(err).__name__, str(err), err.status)
    if isinstance(outcome, RelayError):
        return ("unrouted", type(outcome).__name__, str(outcome), getattr(outcome, "allowed", None))
    request, refusal = outcome
    identity = request.identity
    return (
        "admitted", request.request_id, request.method, request.version, request.route_path,
        request.forward_target, request.flow.name, request.client, request.keep_alive, request.host,
        request.headers.forward, request.body is NO_BODY, tuple(bodies),
        None if identity is None else (identity.subject, identity.groups),
        None if refusal is None else (type(refusal).__name__, refusal.status, refusal.reason),
    )


def get(target: bytes, *headers: bytes, method: bytes = b"GET", version: bytes = b"1.1") -> bytes:
    host = () if any(h.lower().startswith(b"host:") for h in headers) else (b"Host: relay.test",)
    return b"\r\n".join((method + b" " + target + b" HTTP/" + version, *host, *headers, b"", b""))


def token(value: bytes) -> bytes:
    return b"Authorization: " + value


@pytest.mark.parametrize("impl", IMPLS, ids=lambda m: m.__name__)
class TestAdmission:
    def test_a_public_request_is_admitted_with_its_parts(self, impl: ModuleType, server: Server) -> None:
        outcome = admit(impl, server, get(b"/public/x?q=1", b"Accept: */*"))
        assert outcome == ("admitted", "r-1", "GET", "1.1", "/public/x", b"/public/x?q=1", "public", "192.0.2.1",
                           True, b"relay.test", b"Accept: */*\r\n", True, (), None, None)  # fmt: skip

    def test_a_token_flow_admits_its_caller_and_refuses_others(self, impl: ModuleType, server: Server) -> None:
        assert admit(impl, server, get(b"/orders/1", token(GOOD)))[-2:] == (("alice", ("ingest-writers",)), None)
        assert admit(impl, server, get(b"/orders/1", token(NOT_A_WRITER)))[-1] == ("PolicyDenied", 403,
                                                                                  "denied_by_policy")
        assert admit(impl, server, get(b"/orders/1"))[-1] == ("Unauthorized", 401, "missing")
        assert admit(impl, server, get(b"/orders/1?access_token=x", token(GOOD)))[-1] == (
            "Unauthorized", 401, "token_in_query")

    def test_a_shed_request_is_refused_before_its_token_is_read(self, impl: ModuleType, server: Server) -> None:
        server.shed = Overloaded("busy", retry_after=1)
        try:
            outcome = admit(impl, server, get(b"/orders/1", token(b"Bearer not-a-token")))
        finally:
            server.shed = None
        assert outcome[-2:] == (None, ("Overloaded", 503, ""))

    def test_a_body_is_made_only_for_a_request_that_has_one(self, impl: ModuleType, server: Server) -> None:
        with_length = admit(impl, server, get(b"/public/x", b"Content-Length: 5", method=b"POST"))
        assert with_length[11:13] == (False, ((1000, False),))
        expecting = admit(impl, server, get(b"/public/x", b"Transfer-Encoding: chunked", b"Expect: 100-continue",
                                            method=b"POST"))
        assert expecting[11:13] == (False, ((1000, True),))
        assert admit(impl, server, get(b"/public/x", b"Content-Length: 1001", method=b"POST"))[:3] == (
            "raised", "PayloadTooLarge", "body of 1001 bytes exceeds the flow's limit")

    def test_no_flow_is_answered_unless_a_body_follows(self, impl: ModuleType, server: Server) -> None:
        assert admit(impl, server, get(b"/nowhere"))[:2] == ("unrouted", "NotFound")
        assert admit(impl, server, get(b"/public/x", method=b"DELETE"))[::3] == ("unrouted", ("GET", "HEAD", "POST"))
        assert admit(impl, server, get(b"/nowhere", b"Content-Length: 3", method=b"POST"))[:2] == ("raised",
                                                                                                  "NotFound")
        assert admit(impl, server, get(b"/nowhere", b"Host: a", b"Host: b"))[:3] == ("raised", "BadRequest",
                                                                                   "duplicate Host")

    @pytest.mark.parametrize(("raw", "error"), [
        (get(b"/public/x", b"Host: a b"), "invalid Host"),
        (b"GET /public/x HTTP/1.1\r\n\r\n", "missing Host header"),
        (get(b"/public/x", b"Transfer-Encoding: chunked", method=b"POST", version=b"1.0"),
         "chunked transfer coding in an HTTP/1.0 request"),
        (get(b"/public/x", b"Connection: upgrade", b"Upgrade: h2c"), "protocol upgrade is not allowed"),
        (b"GET  /public/x HTTP/1.1\r\nHost: a\r\n\r\n", "malformed request line"),
        (b"GET /public/x  HTTP/1.1\r\nHost: a\r\n\r\n", "malformed request line"),
        (get(b"relay.test:443", method=b"CONNECT"), "CONNECT is not allowed"),
        (get(b"/%2e%2e/public/x"), "climbs above the root"),
        (get(b"/public/a;x=1"), "path parameters would route the request to another flow"),
        (get(b"/public/x", b"Expect: 200-ok"), "unsupported Expect"),
        (get(b"/public/x", b"X-Long: " + b"v" * 5000), "request head too large"),
    ])  # fmt: skip
    def test_heads_that_end_the_connection(self, impl: ModuleType, server: Server, raw: bytes, error: str) -> None:
        outcome = admit(impl, server, raw)
        assert outcome[0] == "raised" and error in outcome[2]

    def test_the_host_of_an_absolute_target_wins(self, impl: ModuleType, server: Server) -> None:
        outcome = admit(impl, server, get(b"http://other.test:8080/public/x"))
        assert (outcome[5], outcome[9]) == (b"/public/x", b"other.test:8080")

    def test_the_client_is_the_peer_unless_the_peer_is_trusted(self, impl: ModuleType, server: Server) -> None:
        raw = get(b"/public/x", b"X-Forwarded-For: 198.51.100.1, 203.0.113.9")
        assert admit(impl, server, raw)[7] == "192.0.2.1"
        assert admit(impl, server, raw, trusted=True)[7] == "203.0.113.9"
        assert admit(impl, server, get(b"/public/x"), peer=None, trusted=True)[7] is None

    def test_a_pipelined_head_is_checked_wherever_it_starts(self, impl: ModuleType, server: Server) -> None:
        assert admit(impl, server, b"\r\n" + get(b"/public/x"), at_start=False)[0] == "admitted"
        assert admit(impl, server, b"GET  /public/x HTTP/1.1\r\nHost: a\r\n\r\n", at_start=False)[2] == (
            "malformed request line")

    def test_http10_closes_unless_asked_to_keep_alive(self, impl: ModuleType, server: Server) -> None:
        assert admit(impl, server, get(b"/public/x", version=b"1.0"))[8] is False
        assert admit(impl, server, get(b"/public/x", b"Connection: keep-alive", version=b"1.0"))[8] is True


def test_both_implementations_are_present() -> None:
    assert COMPILED is not None, NOT_BUILT


# weighted towards what the flows take, so that most heads get as far as the token
METHODS = st.sampled_from([b"GET"] * 5 + [b"POST"] * 2 + [b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"CONNECT"])
TARGETS = st.sampled_from([b"/public/x", b"/public/a", b"/orders/1", b"/orders/admin"]) | st.sampled_from([
    b"/public/", b"/public/a;x", b"/public/a;x=1/b", b"/orders/1", b"/orders/admin",
    b"/orders/admin;p", b"/orders/%61dmin", b"/orders/./1", b"/orders/../public/a", b"/public/%2e%2e/orders/1",
    b"/public/%2F", b"/public/%252e", b"/public/%EF%BC%8E", b"/public//x", b"/nowhere", b"*",
    b"http://relay.test/public/x", b"http://a@b/public/x", b"http://[::1]:80/orders/1", b"/public/x?access_token=1",
    b"/orders/1?access_token=1", b"/public/\xc3\xa9", b"/public/%C3%A9", b"/public/x?a#b", b"relay.test:443",
])  # fmt: skip
HEADERS = st.sampled_from([
    b"Host: relay.test", b"Host: a b", b"Host: [::1]:8080", b"Host: h:99999", b"Host:",
    token(GOOD), token(GOOD), token(NOT_A_WRITER), token(b"Bearer x.y.z"), token(b"bearer"), token(b"Basic dTpw"),
    b"Content-Length: 0", b"Content-Length: 12", b"Content-Length: 5000", b"Content-Length: 1, 2",
    b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip", b"Expect: 100-continue", b"Expect: nothing",
    b"Connection: close", b"Connection: keep-alive", b"Connection: upgrade", b"Upgrade: websocket",
    b"X-Forwarded-For: 198.51.100.1", b"X-Forwarded-For: 198.51.100.1, bogus", b"Idempotency-Key: k1",
    b"X-Relay-Subject: admin", b"X_Forwarded_User: admin", b"Cookie: c=1", b"Accept: */*", b"X-Long: " + b"v" * 1500,
])  # fmt: skip


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(method=METHODS, target=TARGETS, version=st.sampled_from([b"1.1"] * 8 + [b"1.0", b"2.0"]),
       host=st.sampled_from([b"Host: relay.test"] * 3 + [b""]), headers=st.lists(HEADERS, max_size=4),
       spaces=st.sampled_from([(1, 1)] * 8 + [(2, 1), (1, 3)]),
       blank_lines=st.integers(0, 2), trusted=st.booleans(), shed=st.sampled_from([False] * 4 + [True]))
def test_both_implementations_admit_alike(servers: dict[ModuleType, Server], method: bytes, target: bytes, version: bytes,
                                          host: bytes, headers: list[bytes], spaces: tuple[int, int], blank_lines: int,
                                          trusted: bool, shed: bool) -> None:
    line = method + b" " * spaces[0] + target + b" " * spaces[1] + b"HTTP/" + version
    raw = b"\r\n" * blank_lines + b"\r\n".join((line, *filter(None, [host, *headers]), b"", b""))
    try:
        head = Head(raw)
    except httptools.HttpParserError:
        return  # httptools refuses it: it never reaches admission
    if not head.complete:
        return
    assert COMPILED is not None, NOT_BUILT
    results = []
    for impl in (TWIN, COMPILED):
        server = servers[impl]
        server.shed = Overloaded("busy", retry_after=1) if shed else None
        try:
            results.append(admit(impl, server, raw, at_start=blank_lines == 0, trusted=trusted))
        finally:
            server.shed = None
    event(" ".join(map(str, results[0][-1:] if results[0][0] == "admitted" else results[0][:3])))  # what was covered
    assert results[0] == results[1]
