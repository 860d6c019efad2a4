"""The files sink end to end: relay decides, lighttpd delivers.

Through the shipped lighttpd.conf relayd answers with X-Sendfile and lighttpd sends the
file; to a direct client (TCP or Unix) relayd sends it itself. Either way the client sees
what lighttpd serving the same root statically would send it: status, length, range,
validators and body, for plain, HEAD, ranged and conditional requests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import RawConnection, Response, exchange, poll_until, request_bytes
from support.procs import SOCKPROXY_CONF
from support.files import MEDIUM, SMALL, FilesStack
from test_identity_support import good_claims, jwks, rsa_key

KEY = rsa_key()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FilesStack]:
    running = FilesStack(tmp_path_factory.mktemp("files"), jwks(KEY))
    yield running
    running.close()


def _ask(files: FilesStack, way: str, method: str, target: str, headers: list[tuple[str, str]] = ()) -> Response:
    address = {"lighttpd": files.lighttpd.address, "tcp": files.relayd.tcp, "unix": files.relayd.unix,
               "static": files.static_address}[way]
    if way == "static":
        target = "/" + target.split("/", 2)[2]  # the static server's paths are the root's
    return exchange(address, request_bytes(method, target, list(headers)))


def _record(files: FilesStack, request_id: str | None) -> dict[str, object]:
    return poll_until(lambda: next((r for r in files.audit() if r.get("request_id") == request_id), None),
                      5, f"the audit record of {request_id}")


@pytest.mark.parametrize("way, delivery", [("lighttpd", "x-sendfile"), ("tcp", "relay"), ("unix", "relay")])
@pytest.mark.parametrize("name, content", [("small.txt", SMALL), ("medium.bin", MEDIUM), ("empty.txt", b"")])
def test_a_file_is_served_whole_and_audited_with_who_sent_it(files: FilesStack, way: str, delivery: str,
                                                             name: str, content: bytes) -> None:
    # a TCP client's own X-Sendfile-Type is not believed (Unix peers are trusted proxies by default)
    asks = [("X-Sendfile-Type", "X-Sendfile")] if way == "tcp" else []
    response = _ask(files, way, "GET", f"/files/{name}", asks)
    assert response.status == 200, str(response)
    assert response.body == content
    assert response.get("Content-Length") == str(len(content))
    assert response.get("X-Sendfile") is None
    record = _record(files, response.get("X-Relay-Request-Id"))
    assert (record["decision"], record["file"], record["file_size"], record["delivery"]) == (
        "allow", name, len(content), delivery)
    if delivery == "x-sendfile":
        assert record["bytes_out"] == 0
    elif len(content) > 64 * 1024:  # sent with sendfile: recorded as its head went, as any streamed answer
        assert (record["bytes_out"], record["streamed"]) == (None, True)
    else:
        assert record["bytes_out"] == len(content)


def test_types_come_from_the_extension(files: FilesStack) -> None:
    for way in ("lighttpd", "tcp"):
        assert _ask(files, way, "GET", "/files/small.txt").get("Content-Type") == "text/plain; charset=utf-8"
        assert _ask(files, way, "GET", "/files/medium.bin").get("Content-Type") == "application/octet-stream"


def test_names_with_spaces_and_utf8_and_symlinks_inside_the_root_are_served(files: FilesStack) -> None:
    for way in ("lighttpd", "tcp"):
        assert _ask(files, way, "GET", "/files/with%20space%20%C3%A9.txt").body == b"spaced\n"
        assert _ask(files, way, "GET", "/files/link-in").body == SMALL
        assert _ask(files, way, "GET", "/files/sub/inner.txt").body == b"inner\n"


def _validators(files: FilesStack) -> tuple[str, str]:
    plain = _ask(files, "static", "GET", "/files/medium.bin")
    etag, modified = plain.get("ETag"), plain.get("Last-Modified")
    assert etag and modified
    return etag, modified


#: (method, headers) of the requests compared; {etag} and {modified} are the file's own
VARIANTS = [
    ("GET", []),
    ("HEAD", []),
    ("GET", [("Range", "bytes=0-99")]),
    ("GET", [("Range", "bytes=300000-")]),
    ("GET", [("Range", "bytes=-100")]),
    ("GET", [("Range", "bytes=0-0")]),
    ("GET", [("Range", "bytes=319990-400000")]),
    ("GET", [("Range", "bytes=5-1,10-20")]),          # the first spec unsatisfiable: the second alone
    ("GET", [("Range", "bytes=0-9,5-30")]),           # overlapping: merged into one
    ("GET", [("Range", "bytes=999999-")]),            # 416
    ("GET", [("Range", "bytes=-0")]),                 # 416
    ("GET", [("Range", "lines=1-2")]),                # not bytes: ignored
    ("GET", [("Range", "bytes=abc")]),                # unreadable: 416, as lighttpd
    ("HEAD", [("Range", "bytes=0-99")]),              # Range only applies to GET
    ("GET", [("If-None-Match", "{etag}")]),
    ("HEAD", [("If-None-Match", "{etag}")]),
    ("GET", [("If-None-Match", 'W/{etag}')]),
    ("GET", [("If-None-Match", '"other", {etag}')]),
    ("GET", [("If-None-Match", "*")]),
    ("GET", [("If-None-Match", '"other"')]),
    ("GET", [("If-None-Match", '"other"'), ("If-Modified-Since", "{modified}")]),  # INM decides
    ("GET", [("If-Modified-Since", "{modified}")]),
    ("GET", [("If-Modified-Since", "Thu, 01 Jan 1970 00:00:01 GMT")]),
    ("GET", [("If-Modified-Since", "Fri, 01 Jan 2100 00:00:00 GMT")]),
    ("GET", [("If-Modified-Since", "not a date")]),
    ("GET", [("If-Range", "{etag}"), ("Range", "bytes=10-19")]),
    ("GET", [("If-Range", '"stale"'), ("Range", "bytes=10-19")]),
    ("GET", [("If-Range", "{modified}"), ("Range", "bytes=10-19")]),
    ("GET", [("If-None-Match", "W/{etag}"), ("Range", "bytes=10-19")]),  # weak: no 304 under Range
]


def _shape(response: Response) -> tuple[object, ...]:
    if response.status == 416:
        # lighttpd's error page drops Content-Range: bytes */SIZE, which relay sends (RFC 9110 §15.5.17)
        return (416,)
    body = response.body if response.status in (200, 206) else None  # error pages differ
    return (response.status, response.get("Content-Range"), response.get("ETag"), response.get("Last-Modified"),
            response.get("Accept-Ranges") if response.status in (200, 206) else None,
            response.get("Content-Length") if response.status in (200, 206) else None, body)


@pytest.mark.parametrize("way", ["lighttpd", "tcp", "streamed"])
def test_ranges_conditionals_and_head_answer_as_lighttpd_static_files_do(files: FilesStack, way: str) -> None:
    etag, modified = _validators(files)
    for method, headers in VARIANTS:
        filled = [(name, value.format(etag=etag, modified=modified)) for name, value in headers]
        static = _ask(files, "static", method, "/files/medium.bin", filled)
        if way == "streamed":  # relayd sends it itself, behind lighttpd
            ours = _ask(files, "lighttpd", method, "/streamed/medium.bin", filled)
        else:
            ours = _ask(files, way, method, "/files/medium.bin", filled)
        assert _shape(ours) == _shape(static), f"{method} {filled}: {ours} vs lighttpd {static}"


def test_several_ranges_that_stay_apart_get_the_whole_file_from_relay(files: FilesStack) -> None:
    # lighttpd sends multipart/byteranges; relay sends the whole file, which RFC 9110 allows
    response = _ask(files, "tcp", "GET", "/files/medium.bin", [("Range", "bytes=0-9,1000-1009")])
    assert (response.status, response.body) == (200, MEDIUM)


def test_only_get_and_head_are_taken(files: FilesStack) -> None:
    for way in ("lighttpd", "tcp"):
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            response = exchange(files.lighttpd.address if way == "lighttpd" else files.relayd.tcp,
                                request_bytes(method, "/files/small.txt", body=b"x"))
            assert response.status == 405, str(response)
            assert response.get("Allow") == "GET, HEAD"


def test_a_token_flow_serves_only_callers_it_allows(files: FilesStack) -> None:
    reader = KEY.token(good_claims(groups=["readers"])).decode()
    other = KEY.token(good_claims(groups=["others"])).decode()
    for way in ("lighttpd", "tcp"):
        assert _ask(files, way, "GET", "/secure-files/small.txt").status == 401
        assert _ask(files, way, "GET", "/secure-files/small.txt", [("Authorization", f"Bearer {other}")]).status == 403
        allowed = _ask(files, way, "GET", "/secure-files/small.txt", [("Authorization", f"Bearer {reader}")])
        assert (allowed.status, allowed.body) == (200, SMALL)
        record = _record(files, allowed.get("X-Relay-Request-Id"))
        assert (record["subject"], record["file"], record["file_size"]) == ("alice", "small.txt", len(SMALL))


def test_keep_alive_and_pipelined_downloads_stay_in_order(files: FilesStack) -> None:
    with RawConnection(files.relayd.tcp) as conn:
        conn.send(b"".join(request_bytes("GET", f"/files/{name}") for name in ("medium.bin", "small.txt", "medium.bin")))
        for expected in (MEDIUM, SMALL, MEDIUM):
            response = conn.read_response()
            assert (response.status, response.body) == (200, expected)


def _io(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/io", encoding="ascii") as io:
        return {key: int(value) for key, value in (line.split(": ") for line in io)}


def test_lighttpd_not_relayd_sends_the_bytes_of_a_large_download(files: FilesStack, tmp_path: Path) -> None:
    size = 256 * 1024 * 1024
    with open(files.root / "large.bin", "wb") as large:
        large.truncate(size)  # sparse: nothing is written to the disk
    try:
        pid = files.relayd.service.pid
        for way, most in (("lighttpd", 64 * 1024), ("tcp", None)):
            before = _io(pid)
            with RawConnection(files.lighttpd.address if way == "lighttpd" else files.relayd.tcp, 60) as conn:
                conn.send(request_bytes("GET", "/files/large.bin"))
                response = conn.read_response()
            assert response.status == 200 and len(response.body) == size
            written = _io(pid)["wchar"] - before["wchar"]
            if most is not None:
                assert written < most, f"relayd wrote {written} bytes of a {size}-byte download"
            else:
                assert written >= size  # relayd itself sent it (sendfile counts as written)
    finally:
        os.unlink(files.root / "large.bin")


def test_behind_sockproxy_relayd_sends_the_file_itself(tmp_path_factory: pytest.TempPathFactory) -> None:
    # mod_sockproxy does no HTTP: whatever X-Sendfile-Type arrives is the client's own
    running = FilesStack(tmp_path_factory.mktemp("sockproxy"), jwks(KEY), server="trusted_proxies = []",
                         conf=SOCKPROXY_CONF)
    try:
        with RawConnection(running.lighttpd.address) as conn:
            for name, content in (("medium.bin", MEDIUM), ("small.txt", SMALL)):
                conn.send(request_bytes("GET", f"/files/{name}", [("X-Sendfile-Type", "X-Sendfile")]))
                response = conn.read_response()
                assert (response.status, response.body, response.get("X-Sendfile")) == (200, content, None)
                assert _record(running, response.get("X-Relay-Request-Id"))["delivery"] == "relay"
    finally:
        running.close()
