"""Nothing outside a files root, and nothing but a regular file, is ever served.

Every way out is tried through lighttpd and directly (TCP and Unix): dot segments plain,
percent-encoded and double-encoded, encoded slashes and backslashes, NUL, full-width
dots, empty segments, symlinks leaving the root (relative, absolute, through a
directory, a loop), a directory, the root itself, a FIFO (which must not hang the
open), a Unix socket and a link to a device. Each gets a 4xx, never the secret, and the
audit record names no file served.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support import exchange, request_bytes
from support.files import SECRET, SMALL, FilesStack
from test_identity_support import jwks, rsa_key

ESCAPES = [
    "/files/../outside/secret.txt",
    "/files/sub/../../outside/secret.txt",
    "/files/%2e%2e/outside/secret.txt",
    "/files/%2E%2E/outside/secret.txt",
    "/files/.%2e/outside/secret.txt",
    "/files/%2e%2e%2foutside%2fsecret.txt",
    "/files/..%2foutside%2fsecret.txt",
    "/files/sub%2f..%2f..%2foutside%2fsecret.txt",
    "/files/%252e%252e/outside/secret.txt",
    "/files/%252e%252e%252foutside%252fsecret.txt",
    "/files/..%5coutside%5csecret.txt",
    "/files/..\\outside\\secret.txt",
    "/files/%c0%ae%c0%ae/outside/secret.txt",
    "/files/%ef%bc%8e%ef%bc%8e/outside/secret.txt",
    "/files/..;/outside/secret.txt",
    "/files//outside/secret.txt",
    "/files/%2foutside/secret.txt",
    "/files/small.txt%00.png",
    "/files/link-out",
    "/files/link-abs",
    "/files/link-dir-out/secret.txt",
    "/files/sub/link-up",
    "/files/link-loop",
    "/files/link-dev",
    "/files/sub",
    "/files/sub/",
    "/files/",
    "/files/pipe",
    "/files/sock",
    "/files/zero",
    "/files/missing.txt",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FilesStack]:
    running = FilesStack(tmp_path_factory.mktemp("confine"), jwks(rsa_key()))
    yield running
    running.close()


@pytest.mark.parametrize("way", ["lighttpd", "tcp", "unix"])
@pytest.mark.parametrize("target", ESCAPES)
def test_no_way_out_of_the_root(files: FilesStack, way: str, target: str) -> None:
    address = {"lighttpd": files.lighttpd.address, "tcp": files.relayd.tcp, "unix": files.relayd.unix}[way]
    for method in ("GET", "HEAD"):
        response = exchange(address, request_bytes(method, target, [("Range", "bytes=0-")]), timeout=5)
        assert 400 <= response.status < 500, f"{method} {target}: {response}"
        assert SECRET not in response.body and response.get("X-Sendfile") is None
        request_id = response.get("X-Relay-Request-Id")
        if request_id is not None:  # else lighttpd refused it at the door
            record = next(r for r in files.audit() if r.get("request_id") == request_id)
            assert "file" not in record and record["decision"] != "allow", record


def test_the_same_server_still_serves_what_is_inside(files: FilesStack) -> None:
    for address in (files.lighttpd.address, files.relayd.tcp):
        response = exchange(address, request_bytes("GET", "/files/small.txt"))
        assert (response.status, response.body) == (200, SMALL)
