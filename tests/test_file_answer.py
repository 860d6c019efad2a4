"""The answer a file gets, from its stat and the request's headers (no sockets): ranges,
conditionals and validators. tests/test_e2e_files.py holds the same answers against
lighttpd's own static files."""

from __future__ import annotations

import os

import pytest

from relay.sinks._file_answer import Asked, decide, etag, http_date, media_type, read_asked

SIZE = 1000


def _stat(size: int) -> os.stat_result:
    return os.stat_result((0o100644, 12345, 0, 1, 0, 0, size, 0, 1_700_000_000, 0, 0.0, 1_700_000_000.0, 0.0,
                           1_700_000_000_123_456_789, 0))


INFO = _stat(SIZE)
TAG = etag(INFO)
MODIFIED = http_date(1_700_000_000)


def _decide(method: str = "GET", http10: bool = False, **asked: bytes) -> tuple[int, int, int, bytes]:
    answer = decide(Asked(**asked), INFO, TAG, MODIFIED, method, http10)
    return answer.status, answer.offset, answer.length, answer.headers


@pytest.mark.parametrize("header, expected", [
    (b"bytes=0-99", (206, 0, 100)),
    (b"bytes=900-", (206, 900, 100)),
    (b"bytes=-10", (206, 990, 10)),
    (b"bytes=-5000", (206, 0, 1000)),
    (b"bytes=990-5000", (206, 990, 10)),
    (b"BYTES= 5 - 9 ", (206, 5, 5)),
    (b"bytes=0-9,20-29", (206, 0, 30)),        # within 80 bytes: merged
    (b"bytes=0-9,500-509", (200, 0, SIZE)),    # apart: the whole file
    (b"bytes=9-0", (416, 0, 0)),
    (b"bytes=1000-", (416, 0, 0)),
    (b"bytes=-0", (416, 0, 0)),
    (b"bytes=x-1,1000-2000", (416, 0, 0)),
    (b"bytes=x-1,10-19", (206, 10, 10)),       # the unreadable spec is ignored
    (b"items=0-9", (200, 0, SIZE)),
])
def test_ranges(header: bytes, expected: tuple[int, int, int]) -> None:
    assert _decide(range=header)[:3] == expected


def test_a_range_is_ignored_on_head_over_http10_and_when_if_range_does_not_hold() -> None:
    assert _decide("HEAD", range=b"bytes=0-9")[:3] == (200, 0, SIZE)
    assert _decide(http10=True, range=b"bytes=0-9")[:3] == (200, 0, SIZE)
    assert _decide(range=b"bytes=0-9", if_range=b'"stale"')[:3] == (200, 0, SIZE)
    assert _decide(range=b"bytes=0-9", if_range=TAG)[:3] == (206, 0, 10)
    assert _decide(range=b"bytes=0-9", if_range=MODIFIED)[:3] == (206, 0, 10)


def test_conditionals() -> None:
    assert _decide(if_none_match=TAG)[0] == 304
    assert _decide(if_none_match=b'"a", W/' + TAG)[0] == 304
    assert _decide(if_none_match=b"W/" + TAG, range=b"bytes=0-1")[0] == 206  # weak never matches under Range
    assert _decide(if_none_match=b'"a"', if_modified_since=MODIFIED)[0] == 200  # If-None-Match decides
    assert _decide(if_modified_since=MODIFIED)[0] == 304
    assert _decide(if_modified_since=b"Tue, 14 Nov 2023 22:13:21 GMT")[0] == 304  # later than the mtime
    assert _decide(if_modified_since=b"Tue, 14 Nov 2023 22:13:19 GMT")[0] == 200
    assert _decide(if_modified_since=b"yesterday")[0] == 200
    status, _, _, headers = _decide(if_none_match=b"*")
    assert status == 304 and b"ETag: " + TAG in headers and b"Last-Modified: " + MODIFIED in headers


def test_validators_and_types() -> None:
    assert TAG.startswith(b'"') and TAG.endswith(b'"') and TAG[1:-1].isdigit()
    assert etag(_stat(SIZE + 1)) != TAG  # the size is in it
    assert MODIFIED == b"Tue, 14 Nov 2023 22:13:20 GMT"
    assert media_type("a/report.txt") == b"text/plain; charset=utf-8"
    assert media_type("photo.JPG") == b"image/jpeg"
    assert media_type("no-extension") == b"application/octet-stream"


def test_the_headers_are_read_from_the_forwarded_block() -> None:
    block = b"Accept: */*\r\nrange: bytes=1-2\r\nIf-None-Match: \"a\"\r\nIf-None-Match: \"b\"\r\nX-Sendfile-Type: X-Sendfile\r\n"
    asked = read_asked(block)
    assert (asked.range, asked.if_none_match, asked.sendfile_type) == (b"bytes=1-2", b'"a", "b"', b"X-Sendfile")
    assert read_asked(b"") == Asked()
