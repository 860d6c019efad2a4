"""4. Admission, in plain Python: the readable spec of relay/_fastpath_admission.pxi.

``admit_head`` is the sans-IO core of the request path: a request head httptools has
parsed goes in, and out comes the ``Request`` to relay (with the 401/403/429/503 its
exchange answers instead, when the caller may not use the flow), or the routing error
for a bodiless request that matched no flow. Heads that end the connection (malformed,
too large, framing relay cannot trust) raise a RelayError. Nothing here reads or writes
a socket: the caller passes what it parsed, the connection's peer, and a ``make_body``
that builds the body of a request that has one; tests drive it with no server at all.

The checks, in the order their errors outrank each other: head size, HTTP version, the
request line's spaces (httptools skips runs of them), CONNECT, the path's normalization,
routing, framing (Host, chunked on 1.0, Upgrade, Expect), the flow's body limit; then,
answered by the exchange: overload, shared-state sync, the token, the flow's rules, its
rate limits.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from relay._fastpath_py_headers import HeaderRules, HeaderScan, scan_headers
from relay.errors import (BadRequest, ExpectationFailed, Forbidden, HeadersTooLarge, MethodNotAllowed, NotFound,
                          PayloadTooLarge, RelayError, Unauthorized)
from relay.flowcontrol import NO_BODY, RequestBody
from relay.hosts import check_host
from relay.paths import normalize_path, target_authority, without_params
from relay.request import Request

if TYPE_CHECKING:
    from relay.context import ServerContext
    from relay.identity import Identity
    from relay.policy import Flow
    from relay.routing import FlowTable

__all__ = ["admit_head", "check_request_line"]

#: RFC 6750's query-string token: refused, it ends up in logs and caches
_QUERY_TOKEN = b"access_token="
_NOT_SPACE = re.compile(rb"[^ ]")

#: ``make_body(max_body, expects_continue)``: the body of a request that has one
BodyMaker = Callable[[int, bool], RequestBody]


def admit_head(
    ctx: ServerContext, head_size: int, method: bytes, version: str, url: bytes,
    headers: list[tuple[bytes, bytes]], keep_alive: bool, line: bytes, line_at_start: bool,
    peer: str | None, trusted_peer: bool, make_body: BodyMaker,
) -> tuple[Request, RelayError | None] | RelayError:
    """The request for one parsed head, and the refusal its exchange answers, if any.

    ``head_size`` is the head as relay counts it (target, names and values, 4 more a
    header); ``line`` the bytes the request began in (from its start when
    ``line_at_start``), holding at least its whole request line; ``keep_alive`` what
    httptools made of the version and Connection; ``peer`` the client's address, trusted
    to name another in X-Forwarded-For when ``trusted_peer``.
    """
    if head_size > ctx.max_header_bytes:
        raise HeadersTooLarge("request head too large")
    if version != "1.1" and version != "1.0":
        raise BadRequest(f"unsupported HTTP version {version}")
    check_request_line(line, line_at_start, method, url)
    method_name = method.decode("ascii")
    if method_name == "CONNECT":
        raise BadRequest("CONNECT is not allowed")
    route_path, forward_path, query = normalize_path(url)
    policy = ctx.policy
    try:
        flow = policy.table.match(route_path, method_name)
    except (NotFound, MethodNotAllowed) as exc:
        # framing errors outrank routing ones: after those the connection must close
        unrouted = _scan(headers, policy.default_drop)
        _check_framing(unrouted, version)
        if unrouted.chunked or unrouted.content_length > 0:
            raise  # its body would have to be read and discarded: close instead
        # answered later: without its traceback, whose frames would hold it (and the
        # connection) in a cycle for the garbage collector
        return exc.with_traceback(None)
    if ";" in route_path and not _routes_alike(policy.table, without_params(route_path), method_name, flow):
        # an upstream that cuts ";" parameters off (Tomcat, Jetty, Spring) would serve another flow's path
        raise BadRequest("path parameters would route the request to another flow")
    scan = _scan(headers, flow.drop)
    _check_framing(scan, version)
    host = scan.host
    if url[:1] != b"/":
        # absolute-form: the target's authority is the Host (RFC 9112 3.2.2)
        host = target_authority(url)
        check_host(host)
    if scan.content_length > flow.max_body:
        raise PayloadTooLarge(f"body of {scan.content_length} bytes exceeds the flow's limit")
    identity: Identity | None = None
    refusal: RelayError | None = None
    overload = ctx.overloaded()
    if overload is not None:
        # shed before any token is verified or body read: the cheapest answer there is
        refusal = overload
    elif flow.requires_token and (unshared := ctx.unshared(flow.shared_fail_closed)) is not None:
        refusal = unshared
    elif flow.requires_token:
        try:
            if _QUERY_TOKEN in query:
                raise Unauthorized("send the token in the Authorization header", reason="token_in_query")
            identity = ctx.authenticator.authenticate(scan.authorization, flow.issuers)
            assert flow.authorizer is not None
            flow.authorizer.check(identity)
        except (Unauthorized, Forbidden) as exc:
            # answered by its exchange; the connection carries on if there is no body to skip
            refusal = exc.with_traceback(None)  # as for a routing refusal above
    if trusted_peer:
        client = scan.forwarded_for.decode("latin-1") if scan.forwarded_for else peer
    else:
        client = peer
    if refusal is None and flow.limiter is not None:
        # before the body is read: a refused upload is answered without waiting for it
        refusal = flow.limiter.check(identity, client)
    if scan.chunked or scan.content_length > 0:
        body = make_body(flow.max_body, scan.expect is not None and version == "1.1")
    else:
        body = NO_BODY
    target = forward_path + b"?" + query if query else forward_path
    request = Request(
        ctx.next_request_id(), method_name, version, route_path, target, cast(Any, scan), flow, client,
        body, keep_alive and not ctx.draining, time.monotonic(), identity, host, trusted_peer,
    )
    return request, refusal


def check_request_line(line: bytes, at_start: bool, method: bytes, url: bytes) -> None:
    """Refuse a request line with more than one space between its parts.

    httptools rejects tabs, other whitespace and trailing spaces there, but skips
    runs of spaces. When the request began at the start of a read (every request
    through lighttpd, every one a client sends after the previous answer), two bytes
    tell: the target's first right after the method's space, and the version's "H"
    right where one space after the target puts it. Otherwise (pipelined behind
    another request, after blank lines) its start is not known, so the bytes it came
    in must nowhere hold its method, two spaces or more and its target, nor its
    target, two spaces or more and "HTTP/".
    """
    after_method = len(method)
    version_at = after_method + len(url) + 2
    if at_start and line[0] > 32 and line[after_method + 1] != 32 and line[version_at] == 72:
        return
    if _spaced_out(line, method + b"  ", url) or _spaced_out(line, url + b"  ", b"HTTP/"):
        raise BadRequest("malformed request line")


def _spaced_out(data: bytes, before: bytes, after: bytes) -> bool:
    """Whether ``before`` (ending in two spaces), more spaces and ``after`` follow each
    other somewhere in ``data``."""
    at = data.find(before)
    while at >= 0:
        next_byte = _NOT_SPACE.search(data, at + len(before))
        if next_byte is None:
            return False
        if data.startswith(after, next_byte.start()):
            return True
        at = data.find(before, next_byte.start())
    return False


def _scan(headers: list[tuple[bytes, bytes]], rules: object) -> HeaderScan:
    # relay.fastpath gives everyone one module's classes: while the twin serves, the
    # policy's rules are this module's (typed there as the compiled ones)
    return scan_headers(headers, cast(HeaderRules, rules))


def _check_framing(scan: HeaderScan, version: str) -> None:
    host = scan.host
    if host is None:
        if version == "1.1":
            raise BadRequest("missing Host header")
    else:
        check_host(host)
    if scan.chunked and version == "1.0":
        # RFC 9112 6.1: an HTTP/1.0 recipient may not know chunked; the framing is not to be trusted
        raise BadRequest("chunked transfer coding in an HTTP/1.0 request")
    if scan.upgrade:
        raise BadRequest("protocol upgrade is not allowed")
    if scan.expect is not None and scan.expect != b"100-continue":
        raise ExpectationFailed("unsupported Expect")


def _routes_alike(table: FlowTable[Flow], route_path: str, method: str, flow: Flow) -> bool:
    try:
        return table.match(route_path, method) is flow
    except (NotFound, MethodNotAllowed):
        return False
