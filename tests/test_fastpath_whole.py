"""whole_request and whole_answer: on both implementations, held to httptools.

Whatever they take apart, httptools must parse the same way: one whole message, the same
method and target or status, the same header pairs, the same body, the same reuse of the
connection, nothing left over. They may leave a message to httptools (None) whenever they
like, but must not for what clients, lighttpd and upstreams really send, or they would
never pay.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay import _fastpath_py
from relay._fastpath_py_whole import MAX_WHOLE_HEADERS
from relay.errors import BadRequest
from support.impls import COMPILED

Parsed = tuple[int, list[tuple[bytes, bytes]], bytes]
RULES = _fastpath_py.HeaderRules((), (), underscores=True)


class Collector:
    """What httptools' callbacks deliver of an answer."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.status = 0
        self.messages = 0
        self.in_head = True
        self.keep_alive = False
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.keep_alive = self.parser.should_keep_alive()  # as relay reads it: later it is reset

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.messages += 1


def httptools_parse(data: bytes) -> tuple[Parsed, bool, bool] | None:
    """httptools' reading of ``data``: the answer, whether it was one whole HTTP/1.1
    message, and whether its connection may be reused; None when httptools refuses it."""
    collector = Collector()
    parser = collector.parser
    try:
        parser.feed_data(data)
    except httptools.HttpParserError:
        return None
    if collector.in_head:
        return None
    status = parser.get_status_code()
    whole = collector.messages == 1 and parser.get_http_version() == "1.1"
    return (status, collector.headers, b"".join(collector.body)), whole, collector.keep_alive


LIGHTTPD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nETag: \"3880012345\"\r\n"
            b"Last-Modified: Thu, 03 Dec 2026 10:00:00 GMT\r\nContent-Length: 100\r\nAccept-Ranges: bytes\r\n"
            b"Date: Fri, 04 Dec 2026 19:00:00 GMT\r\nServer: lighttpd/1.4.69\r\n\r\n" + b"x" * 100)
NGINX = (b"HTTP/1.1 404 Not Found\r\nServer: nginx\r\nDate: Fri, 04 Dec 2026 19:00:00 GMT\r\n"
         b"Content-Type: text/html\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nnope\n")
TAKEN_WHOLE = {
    "lighttpd": LIGHTTPD,
    "nginx 404": NGINX,
    "empty body": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "no reason": b"HTTP/1.1 503 \r\nContent-Length: 2\r\nRetry-After: 1\r\n\r\nno",
    "odd spacing": b"HTTP/1.1 201 Created\r\nX-A:  a\t b \t\r\nX-Empty:\r\ncontent-LENGTH:\t3\r\n\r\nabc",
    "close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n!",
    "bad connection option": b"HTTP/1.1 200 OK\r\nConnection: a@b\r\nContent-Length: 1\r\n\r\n!",
}


@pytest.mark.parametrize("answer", list(TAKEN_WHOLE.values()), ids=list(TAKEN_WHOLE))
def test_plain_answers_are_taken_whole_as_httptools_reads_them(impl: ModuleType, answer: bytes) -> None:
    parsed = impl.whole_answer(answer)
    assert parsed is not None
    expected = httptools_parse(answer)
    assert expected is not None
    assert parsed == expected[0]


def test_what_it_gives() -> None:
    assert _fastpath_py.whole_answer(TAKEN_WHOLE["odd spacing"]) == (
        201, [(b"X-A", b"a\t b \t"), (b"X-Empty", b""), (b"content-LENGTH", b"3")], b"abc")


LEFT_TO_HTTPTOOLS = {
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
    "no length": b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nto the close",
    "two lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n!",
    "short body": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc",
    "longer than its length": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab",
    "two answers": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n!HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n!",
    "head only": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
    "head unended": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r",
    "204": b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    "304": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\n\r\n",
    "interim first": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "HTTP/1.0": b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n!",
    "no space after status": b"HTTP/1.1 200\r\nContent-Length: 1\r\n\r\n!",
    "four-digit status": b"HTTP/1.1 2000 OK\r\nContent-Length: 1\r\n\r\n!",
    "status 600": b"HTTP/1.1 600 OK\r\nContent-Length: 1\r\n\r\n!",
    "bare LF": b"HTTP/1.1 200 OK\nContent-Length: 1\n\n!",
    "bare LF in a header": b"HTTP/1.1 200 OK\r\nX-A: 1\nContent-Length: 1\r\n\r\n!",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 1\r\n\r\n!",
    "space before colon": b"HTTP/1.1 200 OK\r\nX-A : 1\r\nContent-Length: 1\r\n\r\n!",
    "obs-text": b"HTTP/1.1 200 OK\r\nX-A: caf\xc3\xa9\r\nContent-Length: 1\r\n\r\n!",
    "NUL in a value": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 1\r\n\r\n!",
    "length with a sign": b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n!",
    "length with a space": b"HTTP/1.1 200 OK\r\nContent-Length: 1 \r\n\r\n!",
    "length of 19 digits": b"HTTP/1.1 200 OK\r\nContent-Length: 0000000000000000001\r\n\r\n!",
    "empty length": b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
    "too many headers": b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 64 + b"Content-Length: 0\r\n\r\n",
    "not HTTP": b"\x00\x01 this is not HTTP \xff\r\n\r\n",
    "empty": b"",
}


@pytest.mark.parametrize("answer", list(LEFT_TO_HTTPTOOLS.values()), ids=list(LEFT_TO_HTTPTOOLS))
def test_anything_else_is_left_to_httptools(impl: ModuleType, answer: bytes) -> None:
    assert impl.whole_answer(answer) is None


def test_up_to_the_header_limit_is_taken() -> None:
    answer = b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 63 + b"Content-Length: 0\r\n\r\n"
    for impl in _impls():
        parsed = impl.whole_answer(answer)
        assert parsed is not None and len(parsed[1]) == 64 == MAX_WHOLE_HEADERS


def _impls() -> list[ModuleType]:
    return [_fastpath_py] if COMPILED is None else [_fastpath_py, COMPILED]


def _agreed(function: str, data: bytes) -> Any:
    """What ``function`` makes of ``data``: the same on the twin and compiled, always."""
    results = [getattr(impl, function)(data) for impl in _impls()]
    assert all(result == results[0] for result in results)
    return results[0]


# Answers built from pieces that are mostly right and sometimes subtly not.
_NAMES = st.sampled_from([b"Content-Type", b"Content-Length", b"content-length", b"Transfer-Encoding",
                          b"Connection", b"X-A", b"ETag", b"X A", b"X-\xc3", b"", b"X:A"])
_VALUES = st.one_of(
    st.sampled_from([b"1", b"0", b"3", b" 3", b"3 ", b"close", b"keep-alive", b"chunked", b"", b"a\tb",
                     b"keep-alive, close", b"Close", b"close, x", b"x,close", b"upgrade",
                     b"x\x00", b"\xff", b"1\r\n 2", b"1\n", b"a,b"]),
    st.binary(max_size=6),
)
_STATUS_LINES = st.sampled_from([b"HTTP/1.1 200 OK"] * 6 + [b"HTTP/1.1 404 Not Found", b"HTTP/1.1 204 No Content",
                                 b"HTTP/1.1 100 Continue", b"HTTP/1.0 200 OK", b"HTTP/1.1 200", b"HTTP/1.1 299 \t",
                                 b"HTTP/1.1 599 x", b"HTTP/1.1 20 OK", b"http/1.1 200 OK", b"HTTP/1.1 200 \x7f"])
_ENDS = st.sampled_from([b"\r\n"] * 12 + [b"\n", b"\r", b" \r\n"])  # mostly right


_PLAIN_FIELDS = st.sampled_from([b"Connection: close", b"Connection: keep-alive", b"connection:CLOSE",
                                 b"Connection: keep-alive, close", b"Connection: x, close", b"Server: s",
                                 b"X-Relay-Request-Id: 1", b"Keep-Alive: timeout=5", b"Upgrade: h2c"])


_COLONS = st.sampled_from([b":", b": ", b":\t", b" :"])


def _field_lines(draw: Any, plain: st.SearchStrategy[bytes]) -> bytes:
    """Up to five header lines, each a plain one from ``plain`` or one made of pieces."""
    return b"".join(
        draw(plain) + b"\r\n" if draw(st.booleans()) else draw(_NAMES) + draw(_COLONS) + draw(_VALUES) + draw(_ENDS)
        for _ in range(draw(st.integers(0, 5))))


@st.composite
def answers(draw: Any) -> bytes:
    status = draw(_STATUS_LINES) + draw(_ENDS)
    fields = _field_lines(draw, _PLAIN_FIELDS)
    body = draw(st.binary(max_size=8))
    if draw(st.booleans()):  # most answers carry their true length
        fields += b"Content-Length: %d\r\n" % len(body)
    return status + fields + draw(_ENDS) + body


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=answers())
def test_whatever_is_taken_whole_httptools_reads_the_same(answer: bytes) -> None:
    taken = _agreed("whole_answer", answer)
    if taken is not None:
        expected = httptools_parse(answer)
        assert expected is not None, "taken whole, but httptools refuses it"
        parsed, whole, keep_alive = expected
        assert whole, "taken whole, but httptools sees more or less than one HTTP/1.1 answer"
        assert taken == parsed
        # relay takes the connection's reuse from the scan's Connection: close alone
        try:
            scan = _fastpath_py.scan_headers(parsed[1], RULES)
        except BadRequest:
            return  # the exchange fails on the headers: the connection is not reused either
        assert keep_alive == (not scan.close)


@settings(max_examples=500, deadline=None)
@given(answer=answers(), cut=st.integers(1, 200))
def test_a_piece_of_an_answer_is_never_taken_whole(answer: bytes, cut: int) -> None:
    if cut < len(answer):
        for impl in _impls():
            assert impl.whole_answer(answer[:cut]) is None or impl.whole_answer(answer) is None


# ---------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------


class RequestCollector:
    """What httptools' callbacks deliver of a request head, as relay's connection reads them."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.in_head = True
        self.keep_alive = False
        self.method = b""
        self.version = ""
        self.body = False
        self.messages = 0
        self.parser = httptools.HttpRequestParser(self)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.keep_alive = self.parser.should_keep_alive()
        self.method = self.parser.get_method()
        self.version = self.parser.get_http_version()

    def on_body(self, body: bytes) -> None:
        self.body = True

    def on_message_complete(self) -> None:
        self.messages += 1


RequestParsed = tuple[bytes, bytes, list[tuple[bytes, bytes]], int, bool]


def httptools_request(data: bytes) -> RequestParsed | None:
    """httptools' reading of ``data`` when it is one whole bodiless HTTP/1.1 request,
    ``head_size`` counted as relay's connection counts it; else None."""
    collector = RequestCollector()
    try:
        collector.parser.feed_data(data)
    except httptools.HttpParserError:
        return None
    if collector.messages != 1 or collector.body or collector.version != "1.1":
        return None
    head_size = len(collector.url) + sum(len(name) + len(value) + 4 for name, value in collector.headers)
    return collector.method, collector.url, collector.headers, head_size, collector.keep_alive


WRK = b"GET /bench/hello HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: Bearer eyJ.eyJ.sig\r\n\r\n"
LIGHTTPD_PROXIED = (b"GET /bench/hello?a=1&b=%20 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
                    b"Authorization: Bearer eyJ.eyJ.sig\r\nX-Forwarded-For: 127.0.0.1\r\n"
                    b"X-Host: 127.0.0.1:8080\r\nX-Forwarded-Host: 127.0.0.1:8080\r\n"
                    b"X-Forwarded-Proto: http\r\nConnection: close\r\n\r\n")
REQUESTS_TAKEN_WHOLE = {
    "wrk": WRK,
    "lighttpd proxied": LIGHTTPD_PROXIED,
    "HEAD": b"HEAD /a HTTP/1.1\r\nHost: h\r\n\r\n",
    "no headers": b"GET / HTTP/1.1\r\n\r\n",
    "absolute form": b"GET http://h/a HTTP/1.1\r\nHost: h\r\n\r\n",
    "keep-alive": b"GET /a HTTP/1.1\r\nHost: h\r\nconnection: Keep-Alive\r\n\r\n",
    "odd spacing": b"GET /a HTTP/1.1\r\nHost:h\r\nX-A: \t a b  \r\nX-Empty:\r\n\r\n",
    "odd target": b"GET /a/../b;c=d?e=f#g%zz HTTP/1.1\r\nHost: h\r\n\r\n",
    "close then keep-alive": b"GET / HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
    "duplicate Host": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # admission refuses it
}


@pytest.mark.parametrize("head", list(REQUESTS_TAKEN_WHOLE.values()), ids=list(REQUESTS_TAKEN_WHOLE))
def test_plain_heads_are_taken_whole_as_httptools_reads_them(impl: ModuleType, head: bytes) -> None:
    parsed = impl.whole_request(head)
    assert parsed is not None
    assert parsed == httptools_request(head)


def test_what_a_head_gives() -> None:
    method, url, headers, head_size, keep_alive = _fastpath_py.whole_request(LIGHTTPD_PROXIED[:-2] + b"X-A:  b \r\n\r\n")
    assert (method, url, keep_alive) == (b"GET", b"/bench/hello?a=1&b=%20", False)
    assert headers[0] == (b"Host", b"127.0.0.1:8080") and headers[-2:] == [(b"Connection", b"close"), (b"X-A", b"b ")]
    assert head_size == len(url) + sum(len(name) + len(value) + 4 for name, value in headers)


HEADS_LEFT_TO_HTTPTOOLS = {
    "POST": b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
    "GET with a length": b"GET /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    "GET with a body": b"GET /a HTTP/1.1\r\nContent-Length: 1\r\n\r\n!",
    "chunked": b"GET /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "upgrade": b"GET /a HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    "an upgrade offer": b"GET /a HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
    "connection list": b"GET /a HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n",
    "connection option": b"GET /a HTTP/1.1\r\nConnection: X-Hop\r\nX-Hop: 1\r\n\r\n",
    "connection with a space": b"GET /a HTTP/1.1\r\nConnection: close \r\n\r\n",
    "pipelined": WRK + WRK,
    "a piece": WRK[:-1],
    "HTTP/1.0": b"GET /a HTTP/1.0\r\nHost: h\r\n\r\n",
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "lowercase method": b"get /a HTTP/1.1\r\n\r\n",
    "DELETE": b"DELETE /a HTTP/1.1\r\n\r\n",
    "CONNECT": b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
    "two spaces": b"GET  /a HTTP/1.1\r\n\r\n",
    "space in the target": b"GET /a b HTTP/1.1\r\n\r\n",
    "tab after the target": b"GET /a\tHTTP/1.1\r\n\r\n",
    "obs-text in the target": b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n",
    "empty target": b"GET  HTTP/1.1\r\n\r\n",
    "no version": b"GET /a\r\n\r\n",
    "bare LF": b"GET /a HTTP/1.1\nHost: h\n\n",
    "obs-fold": b"GET /a HTTP/1.1\r\nX-A: 1\r\n 2\r\n\r\n",
    "space before colon": b"GET /a HTTP/1.1\r\nHost : h\r\n\r\n",
    "NUL in a value": b"GET /a HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
    "obs-text in a value": b"GET /a HTTP/1.1\r\nX-A: caf\xc3\xa9\r\n\r\n",
    "too many headers": b"GET /a HTTP/1.1\r\n" + b"X-A: 1\r\n" * 65 + b"\r\n",
    "empty": b"",
}


@pytest.mark.parametrize("head", list(HEADS_LEFT_TO_HTTPTOOLS.values()), ids=list(HEADS_LEFT_TO_HTTPTOOLS))
def test_any_other_head_is_left_to_httptools(impl: ModuleType, head: bytes) -> None:
    assert impl.whole_request(head) is None


_REQUEST_LINES = st.sampled_from(
    [b"GET /a HTTP/1.1"] * 6 + [b"HEAD /b?c HTTP/1.1", b"GET http://h/ HTTP/1.1", b"GET * HTTP/1.1",
                                b"GET /a HTTP/1.0", b"GET /a HTTP/1.2", b"GET /a%00 HTTP/1.1", b"GET /\x7f HTTP/1.1",
                                b"GET /<>\"{}|\\^` HTTP/1.1", b"GET /a HTTP/1.1 ", b"POST /a HTTP/1.1",
                                b"OPTIONS * HTTP/1.1", b"GET /a?b=%zz#f HTTP/1.1"])
_REQUEST_FIELDS = st.sampled_from([b"Host: h", b"Host: h:1", b"host:h", b"Connection: close", b"Connection: keep-alive",
                                   b"Connection: Close", b"Connection: upgrade", b"Connection: close, x",
                                   b"Authorization: Bearer a.b.c", b"X-Forwarded-For: 1.2.3.4", b"Expect: 100-continue",
                                   b"Content-Length: 0", b"Transfer-Encoding: chunked", b"Upgrade: h2c",
                                   b"Proxy-Connection: keep-alive", b"Keep-Alive: 5", b"X_A: 1"])


@st.composite
def request_heads(draw: Any) -> bytes:
    fields = _field_lines(draw, _REQUEST_FIELDS)
    tail = draw(st.sampled_from([b""] * 8 + [b"!", b"GET / HTTP/1.1\r\n\r\n", b"\r\n"]))
    return draw(_REQUEST_LINES) + draw(_ENDS) + fields + draw(_ENDS) + tail


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(head=request_heads())
def test_whatever_head_is_taken_whole_httptools_reads_the_same(head: bytes) -> None:
    taken = _agreed("whole_request", head)
    if taken is not None:
        assert taken == httptools_request(head)


@pytest.mark.parametrize("bad", [b"\x00", b"\x1f", b"\x7f", b"\x80", b"\xff", b"\n", b"\r"])
def test_one_bad_byte_anywhere_in_a_long_value_leaves_it_to_httptools(impl: ModuleType, bad: bytes) -> None:
    token = b"Bearer " + b"e" * 40  # long enough for the eight-bytes-at-a-time check
    for at in range(len(token)):
        value = token[:at] + bad + token[at + 1:]
        assert impl.whole_request(b"GET / HTTP/1.1\r\nAuthorization: " + value + b"\r\n\r\n") is None, at
        assert impl.whole_answer(b"HTTP/1.1 200 OK\r\nX-A: " + value + b"\r\nContent-Length: 0\r\n\r\n") is None, at


def test_tabs_and_the_edges_of_plain_pass_anywhere_in_a_long_value(impl: ModuleType) -> None:
    for good in (b"\t", b" ", b"~", b"!"):
        for at in range(1, 40):
            value = b"e" * at + good + b"e" * (39 - at)
            head = b"GET / HTTP/1.1\r\nAuthorization: " + value + b"\r\n\r\n"
            parsed = impl.whole_request(head)
            assert parsed is not None and parsed[2] == [(b"Authorization", value)], (good, at)
            assert parsed == httptools_request(head)
