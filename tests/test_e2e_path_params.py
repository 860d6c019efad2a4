"""Path parameters and encodings against a public flow and a private one, end to end.

The policy has a public prefix (/public/), a private one that needs a token
(/private/) and a public catch-all (/), the layout in which a path that relay routes
to a public flow but an upstream reads as a private one is a bypass. Anonymous
requests go directly to relayd and through lighttpd; whatever relayd answers, the
upstream must never receive a path that Tomcat, Jetty or Spring (cutting ";"
parameters off) or an application decoding twice would read as under /private/.

What lighttpd 1.4.69 does first, with the shipped conf/lighttpd.conf: it decodes
escapes of unreserved characters and of ";" (``%2e%2e%3b`` reaches relayd as ``..;``),
resolves plain dot-segments itself, leaves ``..;`` alone, and forwards ``%252e`` and
non-ASCII escapes as they are; relayd then applies its own rules to what it gets.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import Stack, exchange, request_bytes, upstream_gained_nothing
from support.procs import ROOT
from support.readings import double_decoded, servlet_reading

FLOWS = f"""
[[issuer]]
name = "dev"
issuer = "https://idp.example.test/"
audiences = ["relay"]
jwks_file = "{ROOT / 'conf/keys/dev-jwks.json'}"

[[flow]]
name = "public"
path = "/public/"
methods = ["GET"]
auth = "none"
sink = "up"

[[flow]]
name = "private"
path = "/private/"
methods = ["GET"]
sink = "up"

[[flow]]
name = "site"
path = "/"
methods = ["GET"]
auth = "none"
sink = "up"
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("params"), extra=FLOWS)
    yield running
    running.close()


def private(reading: str) -> bool:
    """Whether relay would route ``reading`` to the private flow ("/private" itself is the site's)."""
    return reading.startswith("/private/")


def assert_nothing_private_reached(stack: Stack, via: str, target: bytes) -> int:
    """Send ``target`` anonymously; returns the status after checking the upstream."""
    mark = stack.upstream.mark()
    response = exchange(stack.address(via), b"GET " + target + b" HTTP/1.1\r\nHost: relay.test\r\n\r\n")
    for record in upstream_gained_nothing(stack.upstream, mark, stack.address(via)):
        path = record["target"].encode("latin-1").partition(b"?")[0]
        assert not private(servlet_reading(path)), (target, record["target"])
        assert not private(double_decoded(path)), (target, record["target"])
        assert response.status == 200, (target, str(response))
    return response.status


BYPASSES = [
    b"/public/..;/private/x",
    b"/public/..;x=1/private/x",
    b"/public/.;/../private/x",
    b"/public/%2e%2e;/private/x",
    b"/public/%2E%2e;jsessionid=1/private/x",
    b"/public/..%3b/private/x",
    b"/public/..%3B/private/x",
    b"/public/%2e%2e%3b/private/x",
    b"/public/.%2E%3bx/private/x",
    b"/public/;/../private/x",
    b"/public/a/;x/../../private/x",
    b"/private;x/secret",
    b"/private;/secret",
    b"/private%3bx/secret",
    b"/private/;jsessionid=1",
    b"/private/x;jsessionid=1",
    b"/public/%252e%252e/private/x",
    b"/public/%252E%252E;/private/x",
    b"/public/..%252fprivate/x",
    b"/public/%25252e%25252e/private/x",
    b"/public/%EF%BC%8E%EF%BC%8E/private/x",
    b"/public/..%EF%BC%8Fprivate/x",
    b"/public/%C0%AE%C0%AE/private/x",  # overlong ".."
    b"/public/%E0%80%AE%E0%80%AE/private/x",
    b"/public/..%2fprivate/x",
    b"/public/..%5cprivate/x",
    b"/public/..\\private/x",
]


@pytest.mark.parametrize("via", ["tcp", "lighttpd"])
@pytest.mark.parametrize("target", BYPASSES, ids=lambda t: t.decode("latin-1"))
def test_no_bypass_of_the_private_flow(stack: Stack, via: str, target: bytes) -> None:
    """Directly, relayd refuses each; lighttpd resolves some first ("/public/.;/../x" is
    "/public/x" to it) and relayd may serve what it makes of them."""
    status = assert_nothing_private_reached(stack, via, target)
    if via == "tcp":
        assert status in (400, 401), (target, status)


@pytest.mark.parametrize(("target", "direct", "through_lighttpd"), [
    (b"/public/a;v=1/b", "/public/a;v=1/b", "/public/a;v=1/b"),
    (b"/public/a%3Bv=1", "/public/a%3Bv=1", "/public/a;v=1"),  # lighttpd decodes %3B itself
    (b"/public/a%2541", "/public/a%2541", "/public/a%2541"),
    (b"/public/x/..;/../y", None, "/public/x/y"),  # lighttpd resolves the ".." against "..;"
])
@pytest.mark.parametrize("via", ["tcp", "lighttpd"])
def test_parameters_are_forwarded_as_they_came(stack: Stack, via: str, target: bytes,
                                              direct: str | None, through_lighttpd: str | None) -> None:
    expected = direct if via == "tcp" else through_lighttpd
    mark = stack.upstream.mark()
    response = exchange(stack.address(via), request_bytes("GET", target.decode("latin-1")))
    records = upstream_gained_nothing(stack.upstream, mark, stack.address(via))
    if expected is None:
        assert response.status == 400 and records == [], str(response)
    else:
        assert response.status == 200, str(response)
        assert [r["target"] for r in records] == [expected]


_PIECE = st.sampled_from([".", "..", "%2e", "%2E", ";", "%3b", "%3B", "x=1", "a", "%25", "%252e", "private"])
_SEGMENTS = st.lists(st.lists(_PIECE, min_size=1, max_size=4).map("".join), min_size=1, max_size=4)


@pytest.mark.parametrize("via", ["tcp", "lighttpd"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(segments=_SEGMENTS)
def test_random_parameters_never_reach_the_private_flow(stack: Stack, via: str, segments: list[str]) -> None:
    """Anything between /public/ and /private/x, mixing dots, ";" and their escapes:
    refused, routed to the private flow (401), or forwarded as a path no upstream
    reads as private."""
    target = ("/public/" + "/".join(segments) + "/private/" + uuid.uuid4().hex[:6]).encode()
    assert_nothing_private_reached(stack, via, target)
