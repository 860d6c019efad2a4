"""The header rules a policy builds for each flow from the configuration: the server's
strip_headers (names and "x-foo-*" prefixes), the flow's headers.strip (the same forms),
the names the flow sets, Authorization unless forwarded, and server.underscores_in_headers.
Checked by scanning requests with the rules the policy built."""

from __future__ import annotations

import pytest

from relay.config import (DEFAULT_STRIP, AuditConfig, Config, FlowConfig, FlowHeaders, ServerConfig, split_patterns,
                          strips)
from relay.fastpath import scan_headers
from relay.policy import Flow, Policy
from relay.sinks.static import StaticSink

SINK = StaticSink("s", b"", b"text/plain")
SPOOFED = [
    (b"X-Auth-Request-User", b"admin"), (b"x-auth-request-groups", b"admins"), (b"X-Forwarded-User", b"admin"),
    (b"X_Forwarded_User", b"admin"), (b"X-Remote_User", b"admin"), (b"X-Relay_Subject", b"admin"),
    (b"X-Internal-Token", b"t"), (b"X_Internal_Token", b"t"), (b"Cookie", b"c"), (b"X-Flow", b"spoofed"),
    (b"X_Flow", b"spoofed"), (b"Authorization", b"Bearer t"),
]  # fmt: skip
KEPT = [(b"Accept", b"*/*"), (b"X-Request-Tag", b"a")]


def flow(*, server_strip: tuple[str, ...] = (*DEFAULT_STRIP, "x-auth-request-*"), underscores: bool = False,
         strip: tuple[str, ...] = ("cookie", "x-internal-*"), forward_authorization: bool = False) -> Flow:
    server = ServerConfig(listen=(), strip_headers=server_strip, underscores_in_headers=underscores)
    headers = FlowHeaders(set=(("X-Flow", "orders"),), strip=strip, forward_authorization=forward_authorization)
    config = FlowConfig(name="orders", path="/orders/", sink=SINK.name, auth="none", headers=headers)
    return Flow(config, {SINK.name: SINK}, server, None)


@pytest.mark.parametrize("underscores", [False, True])
def test_every_spelling_of_a_configured_name_or_prefix_is_stripped(underscores: bool) -> None:
    built = flow(underscores=underscores)
    result = scan_headers([(b"Host", b"h"), *SPOOFED, *KEPT], built.drop)
    assert result.forward == b"Accept: */*\r\nX-Request-Tag: a\r\n"
    assert result.authorization == b"Bearer t"  # read for the token check, only not forwarded


def test_underscore_names_pass_only_when_the_server_says_so() -> None:
    headers = [(b"Host", b"h"), (b"X_Trace_Id", b"1")]
    assert scan_headers(headers, flow().drop).forward == b""
    assert scan_headers(headers, flow(underscores=True).drop).forward == b"X_Trace_Id: 1\r\n"


def test_forwarded_authorization_passes() -> None:
    result = scan_headers([(b"Authorization", b"Bearer t")], flow(forward_authorization=True).drop)
    assert result.forward == b"Authorization: Bearer t\r\n"


def test_a_server_prefix_applies_to_requests_that_match_no_flow_too() -> None:
    server = ServerConfig(listen=(), strip_headers=("x-auth-request-*",))
    policy = Policy(Config("relay.toml", server, AuditConfig(), (), {}, ()), {}, 1, None)
    result = scan_headers([(b"X-Auth-Request-User", b"a"), (b"X_A", b"1"), (b"Authorization", b"t")],
                          policy.default_drop)
    assert (result.forward, result.authorization) == (b"", b"t")


def test_split_patterns() -> None:
    assert split_patterns(["a", "x-b-*", "c", "d*"]) == (("a", "c"), ("x-b-", "d"))


@pytest.mark.parametrize(("pattern", "name", "expected"), [
    ("authorization", "Authorization", True), ("auth*", "AUTHORIZATION", True), ("x_user", "X-User", True),
    ("x-user", "x_user", True), ("x-user", "x-users", False), ("x-u*", "x_users", True), ("b*", "authorization", False),
])  # fmt: skip
def test_strips(pattern: str, name: str, expected: bool) -> None:
    assert strips(pattern, name) is expected
