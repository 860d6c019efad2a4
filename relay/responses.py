"""Turning outcomes into response bytes: the one place errors become HTTP.

Every error response is small JSON, ``{"error": CODE, "request_id": ID}``, plus
``"detail"`` when it tells the caller what to fix (``RelayError.explained``: "line 3: not
valid JSON (...)") and ``"sink"`` when one of the flow's sinks failed; every response
relay writes carries ``X-Relay-Request-Id``.
"""

from __future__ import annotations

from http import HTTPStatus

import orjson

from relay.errors import MethodNotAllowed, RateLimited, RelayError, ServiceUnavailable, SinkError, Unauthorized

#: "HTTP/1.1 200 OK\r\n" for every status Python knows; others get a generic reason.
_STATUS_LINES: dict[int, bytes] = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode("latin-1") for s in HTTPStatus
}


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d Unknown\r\n" % status
    return line


def error_headers(err: RelayError) -> bytes:
    """Headers particular to an error class (the RFC-required ones)."""
    if isinstance(err, Unauthorized):
        return b'WWW-Authenticate: Bearer error="invalid_token"\r\n'
    if isinstance(err, MethodNotAllowed):
        return b"Allow: " + ", ".join(err.allowed).encode("ascii") + b"\r\n"
    if isinstance(err, ServiceUnavailable):
        return b"Retry-After: %d\r\n" % err.retry_after
    if isinstance(err, RateLimited):
        # the structured fields of the IETF httpapi RateLimit header fields draft
        name = err.limit.encode("ascii")
        return b"".join((
            b"Retry-After: %d\r\n" % err.retry_after,
            b"RateLimit-Policy: ", err.policy.encode("ascii"), b"\r\n",
            b'RateLimit: "%s";r=0;t=%d\r\n' % (name, err.retry_after),
        ))
    return b""


def error_response(err: RelayError, request_id: str, keep_alive: bool, head_only: bool = False) -> bytes:
    """The complete response for ``err``; ``keep_alive`` is false when the connection closes after it."""
    fields = {"error": err.code}
    if err.explained:
        fields["detail"] = err.detail
    fields["request_id"] = request_id
    if isinstance(err, SinkError) and err.sink:
        fields["sink"] = err.sink  # which of the flow's sinks failed
    body = orjson.dumps(fields)
    head = b"".join((
        status_line(err.status),
        b"Content-Type: application/json\r\n",
        error_headers(err),
        b"X-Relay-Request-Id: ", request_id.encode("ascii"), b"\r\n",
        b"Content-Length: %d\r\n" % len(body),
        b"" if keep_alive else b"Connection: close\r\n",
        b"\r\n",
    ))
    return head if head_only else head + body
