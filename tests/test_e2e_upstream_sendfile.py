"""An upstream cannot make the front server answer with a file: relayd drops the
X-Sendfile family and nginx's X-Accel-* from every upstream answer, in any spelling, so
a lighttpd with ``x-sendfile`` enabled never sees them (checked through lighttpd and
directly)."""

from __future__ import annotations

import uuid

import pytest

from support import Stack, exchange, request_bytes
from support.upstream import pattern

FILE_HEADERS = ["X-Sendfile", "x-sendfile2", "X-LIGHTTPD-send-file", "X-Accel-Redirect",
                "X_Sendfile", "X-Accel-Buffering"]


@pytest.mark.parametrize("way", ["lighttpd", "tcp", "unix"])
def test_an_upstreams_sendfile_headers_never_reach_the_front(stack: Stack, way: str) -> None:
    fields = [f"header={name}:/etc/passwd" for name in FILE_HEADERS] + ["header=X-Kept:yes", "body=5"]
    target = f"/data/{uuid.uuid4().hex[:12]}?" + "&".join(fields)
    response = exchange(stack.address(way), request_bytes("GET", target))
    assert response.status == 200, str(response)
    assert response.body == pattern(5)  # the upstream's body, not a file
    assert response.get_all("X-Kept") == ["yes"]  # other headers pass as before
    sent = {name.lower().replace("_", "-") for name, _ in response.headers}
    assert sent.isdisjoint(name.lower().replace("_", "-") for name in FILE_HEADERS), response.headers
