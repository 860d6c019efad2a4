# 4. Admission: admit_head, check_request_line. Included by _fastpath.pyx, after the
# header scan, whose HeaderScan and _scan it uses at C level.
#
# The spec, with the order of the checks and why each is there, is
# relay/_fastpath_py_admission.py. Here the header scan's result is read as C fields, the
# framing and request-line checks are byte tests, and the flow's attributes are read once.

import time as _time

from relay.errors import (ExpectationFailed, Forbidden, HeadersTooLarge, MethodNotAllowed, NotFound,
                          PayloadTooLarge, Unauthorized)
from relay.flowcontrol import NO_BODY
from relay.hosts import check_host
from relay.paths import normalize_path, target_authority, without_params
from relay.request import Request

cdef object _monotonic = _time.monotonic
cdef bytes _QUERY_TOKEN = b"access_token="
cdef tuple _UNROUTED = (NotFound, MethodNotAllowed)
cdef tuple _REFUSED = (Unauthorized, Forbidden)


def admit_head(ctx, Py_ssize_t head_size, bytes method not None, str version not None, bytes url not None,
               list headers not None, bint keep_alive, bytes line not None, bint line_at_start, peer,
               bint trusted_peer, make_body):
    """The request for one parsed head, and the refusal its exchange answers, if any; see
    relay/_fastpath_py_admission.py."""
    cdef HeaderScan scan
    cdef bint http10
    if head_size > ctx.max_header_bytes:
        raise HeadersTooLarge("request head too large")
    if version == "1.1":
        http10 = False
    elif version == "1.0":
        http10 = True
    else:
        raise BadRequest(f"unsupported HTTP version {version}")
    _check_request_line(line, line_at_start, method, url)
    cdef str method_name = method.decode("ascii")
    if method_name == "CONNECT":
        raise BadRequest("CONNECT is not allowed")
    route_path, forward_path, query = normalize_path(url)
    policy = ctx.policy
    table = policy.table
    try:
        flow = table.match(route_path, method_name)
    except _UNROUTED as exc:
        scan = _scan_pairs(headers, policy.default_drop)
        _check_framing(scan, http10)
        if scan.chunked or scan.content_length > 0:
            raise
        # answered later: without its traceback, whose frames would hold it (and the
        # connection) in a cycle for the garbage collector
        return exc.with_traceback(None)
    if ";" in <str>route_path and not _routes_alike(table, without_params(route_path), method_name, flow):
        raise BadRequest("path parameters would route the request to another flow")
    scan = _scan_pairs(headers, flow.drop)
    _check_framing(scan, http10)
    host = scan.host
    if url[:1] != b"/":
        host = target_authority(url)
        check_host(host)
    cdef long long max_body = flow.max_body
    if scan.content_length > max_body:
        raise PayloadTooLarge(f"body of {scan.content_length} bytes exceeds the flow's limit")
    identity = None
    refusal = ctx.overloaded()
    cdef bint requires_token = flow.requires_token
    if refusal is None and requires_token:
        refusal = ctx.unshared(flow.shared_fail_closed)
        if refusal is None:
            try:
                if _QUERY_TOKEN in <bytes>query:
                    raise Unauthorized("send the token in the Authorization header", reason="token_in_query")
                identity = ctx.authenticator.authenticate(scan.authorization, flow.issuers)
                flow.authorizer.check(identity)
            except _REFUSED as exc:
                refusal = exc.with_traceback(None)  # as for a routing refusal above
    if trusted_peer:
        client = scan.forwarded_for.decode("latin-1") if scan.forwarded_for else peer
    else:
        client = peer
    if refusal is None:
        limiter = flow.limiter
        if limiter is not None:
            refusal = limiter.check(identity, client)
    if scan.chunked or scan.content_length > 0:
        body = make_body(max_body, scan.expect is not None and not http10)
    else:
        body = NO_BODY
    target = forward_path + b"?" + query if query else forward_path
    request = Request(
        ctx.next_request_id(), method_name, version, route_path, target, scan, flow, client,
        body, keep_alive and not ctx.draining, _monotonic(), identity, host, trusted_peer,
    )
    return request, refusal


def check_request_line(bytes line not None, bint at_start, bytes method not None, bytes url not None):
    """Refuse a request line with more than one space between its parts; see the twin."""
    _check_request_line(line, at_start, method, url)


cdef int _check_request_line(bytes line, bint at_start, bytes method, bytes url) except -1:
    cdef const unsigned char* s = line
    cdef Py_ssize_t n = len(line)
    cdef Py_ssize_t after_method = len(method)
    cdef Py_ssize_t version_at = after_method + len(url) + 2
    if at_start and version_at < n and s[0] > 32 and s[after_method + 1] != 32 and s[version_at] == 72:
        return 0
    if _spaced_out(s, n, method + b"  ", url) or _spaced_out(s, n, url + b"  ", b"HTTP/"):
        raise BadRequest("malformed request line")
    return 0


cdef bint _spaced_out(const unsigned char* data, Py_ssize_t n, bytes before, bytes after) except -1:
    """Whether ``before`` (ending in two spaces), more spaces and ``after`` follow each
    other somewhere in ``data[:n]``."""
    cdef Py_ssize_t before_len = len(before)
    cdef Py_ssize_t after_len = len(after)
    cdef const unsigned char* b = before
    cdef const unsigned char* a = after
    cdef Py_ssize_t at = _find(data, n, b, before_len, 0)
    cdef Py_ssize_t next_byte
    while at >= 0:
        next_byte = at + before_len
        while next_byte < n and data[next_byte] == 32:
            next_byte += 1
        if next_byte == n:
            return False
        if n - next_byte >= after_len and memcmp(data + next_byte, a, after_len) == 0:
            return True
        at = _find(data, n, b, before_len, next_byte)
    return False


cdef inline Py_ssize_t _find(const unsigned char* data, Py_ssize_t n, const unsigned char* needle,
                             Py_ssize_t needle_len, Py_ssize_t start) noexcept:
    """bytes.find for a non-empty needle: its first index at or after start, or -1."""
    cdef const unsigned char* found
    cdef Py_ssize_t i
    if needle_len == 0:
        return start if start <= n else -1
    i = start
    while i + needle_len <= n:
        found = <const unsigned char*>memchr(data + i, needle[0], n - needle_len + 1 - i)
        if found == NULL:
            return -1
        i = found - data
        if memcmp(found, needle, needle_len) == 0:
            return i
        i += 1
    return -1


cdef inline HeaderScan _scan_pairs(list headers, HeaderRules rules):
    cdef HeaderScan scan = _scan(headers, rules)
    if scan is None:
        # a pair that is not two bytes: scan_headers normalises it
        scan = scan_headers(headers, rules)
    return scan


cdef int _check_framing(HeaderScan scan, bint http10) except -1:
    if scan.host is None:
        if not http10:
            raise BadRequest("missing Host header")
    else:
        check_host(scan.host)
    if scan.chunked and http10:
        raise BadRequest("chunked transfer coding in an HTTP/1.0 request")
    if scan.upgrade:
        raise BadRequest("protocol upgrade is not allowed")
    if scan.expect is not None and scan.expect != b"100-continue":
        raise ExpectationFailed("unsupported Expect")
    return 0


cdef bint _routes_alike(table, route_path, str method, flow) except -1:
    try:
        return table.match(route_path, method) is flow
    except _UNROUTED:
        return False
