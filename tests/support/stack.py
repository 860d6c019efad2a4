"""The whole chain the end-to-end tests drive: client → lighttpd → relayd → upstream.

``relay_config`` writes the test policy; ``Stack`` starts the three processes and
names the three ways in: ``via_lighttpd``, ``direct_tcp`` and ``direct_unix``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .procs import Lighttpd, Relayd, Upstream, free_port, poll_until
from .rawhttp import Address, exchange, request_bytes

#: the sink timeout of the /slow/ flow: a slower upstream must give 504 after about this
SLOW_TIMEOUT = 1.0
#: the body limit of the /small/ flow ("1KiB")
SMALL_MAX_BODY = 1024
#: where the requests that order the upstream's log go (see upstream_gained_nothing)
SENTINEL_PREFIX = "/data/sentinel-"


def relay_config(workdir: Path, upstream_url: str, *, tcp_port: int | None = None,
                 extra: str = "", server: str = "") -> str:
    """The test policy. Flows: /data/ (GET/POST/PUT, 128 MiB) and /small/ (POST, 1 KiB)
    to the upstream, /slow/ to the same upstream with a 1 s timeout, /down/ to a port
    nothing listens on. ``extra`` is appended verbatim (more flows, or mistakes);
    ``server`` goes at the end of the [server] table (more keys)."""
    port = tcp_port or free_port()
    return f"""\
[server]
listen = ["127.0.0.1:{port}", "unix:{workdir / 'relay.sock'}"]
header_timeout = "2s"
max_header_bytes = "16KiB"
shutdown_grace = "10s"
admin_socket = "{workdir / 'admin.sock'}"
state_dir = "{workdir / 'state'}"
{server}
[audit]
path = "{workdir / 'audit.jsonl'}"

[sink.up]
type = "http"
url = "{upstream_url}"
timeout = "5s"

[sink.quick]
type = "http"
url = "{upstream_url}"
timeout = "{SLOW_TIMEOUT:g}s"

[sink.nowhere]
type = "http"
url = "http://127.0.0.1:{free_port()}"
timeout = "2s"

[[flow]]
name = "data"
path = "/data/"
methods = ["GET", "POST", "PUT"]
auth = "none"
sink = "up"
max_body = "128MiB"

[[flow]]
name = "small"
path = "/small/"
methods = ["POST"]
auth = "none"
sink = "up"
max_body = "1KiB"

[[flow]]
name = "slow"
path = "/slow/"
methods = ["GET", "POST"]
auth = "none"
sink = "quick"
max_body = "1MiB"

[[flow]]
name = "down"
path = "/down/"
methods = ["GET", "POST"]
auth = "none"
sink = "nowhere"
max_body = "1MiB"
{extra}"""


@dataclass(frozen=True)
class Route:
    """One way for a request to reach an upstream, named for test ids."""

    name: str
    address: Address
    upstream: Upstream


class Control:
    """lighttpd straight to the upstream's Unix socket, no relayd: proves the harness
    (and shows what lighttpd alone does) with the same shipped lighttpd.conf."""

    def __init__(self, workdir: Path) -> None:
        self.upstream = Upstream(workdir, unix=True)
        try:
            self.lighttpd = Lighttpd(workdir, str(self.upstream.address))
        except BaseException:
            self.upstream.stop()
            raise
        self.route = Route("control", self.lighttpd.address, self.upstream)

    def close(self) -> None:
        self.lighttpd.stop()
        self.upstream.stop()


class Stack:
    """Upstream, relayd with the test policy (plus ``extra``, see relay_config), and
    lighttpd in front of relayd's socket."""

    def __init__(self, workdir: Path, *, extra: str = "", server: str = "") -> None:
        """``extra`` and ``server`` add to the test policy, as in ``relay_config``."""
        self.workdir = workdir
        self.upstream = Upstream(workdir)
        try:
            self.relayd = Relayd(workdir, relay_config(workdir, self.upstream.url, extra=extra, server=server))
            self.lighttpd = Lighttpd(workdir, self.relayd.unix)
        except BaseException:
            self.close()
            raise

    @property
    def via_lighttpd(self) -> Address:
        return self.lighttpd.address

    @property
    def direct_tcp(self) -> Address:
        return self.relayd.tcp

    @property
    def direct_unix(self) -> Address:
        return self.relayd.unix

    def address(self, via: str) -> Address:
        """``via`` is "lighttpd", "tcp" or "unix"."""
        return {"lighttpd": self.via_lighttpd, "tcp": self.direct_tcp,
                "unix": self.direct_unix}[via]

    def route(self, via: str) -> Route:
        return Route(via, self.address(via), self.upstream)

    def close(self) -> None:
        for name in ("lighttpd", "relayd", "upstream"):
            if hasattr(self, name):
                getattr(self, name).stop()


def upstream_gained_nothing(upstream: Upstream, mark: int, address: Address) -> list[dict[str, Any]]:
    """What reached the upstream after ``mark`` apart from a fresh sentinel request.

    The sentinel goes through the same way in and is waited for, so anything the
    request under test provoked (it was sent earlier) has had its chance to arrive
    and be logged: no sleeping, no race. An empty list is the passing answer.
    """
    target = f"{SENTINEL_PREFIX}{uuid.uuid4().hex}"
    response = exchange(address, request_bytes("GET", target, [("Connection", "close")]))
    assert response.status == 200, f"sentinel request failed: {response}"
    upstream.wait_for(lambda r: r["target"] == target, mark, what="the sentinel")
    return [r for r in upstream.since(mark) if r["target"] != target]


def upstream_completed(upstream: Upstream, mark: int, address: Address) -> list[dict[str, Any]]:
    """What reached the upstream *complete* after ``mark``, sentinel aside.

    For requests whose head relayd may rightly stream on before the body turns out
    bad (a chunked body over the limit, a client gone mid-body): each must end cut
    off at the upstream, which logs it once the connection drops.
    """
    upstream_gained_nothing(upstream, mark, address)
    poll_until(lambda: all("complete" in r for r in upstream.since(mark)), 10,
               "every request at the upstream to finish")
    return [r for r in upstream.since(mark)
            if r["complete"] and not r["target"].startswith(SENTINEL_PREFIX)]


#: one more public flow for reload tests: appended to ``relay_config``'s text, it serves /extra/
EXTRA_FLOW = """
[[flow]]
name = "extra"
path = "/extra/"
methods = ["GET"]
auth = "none"
sink = "up"
"""



def token_flow(jwks_file: Path, issuer: str = "https://idp.example.test/", audience: str = "relay",
               algorithm: str = "RS256") -> str:
    """One more flow for ``relay_config``'s ``extra``: /secure/ (GET) for tokens of the
    "idp" issuer (keys in ``jwks_file``, signed with ``algorithm``) in group "writers"."""
    return f"""
[[issuer]]
name = "idp"
issuer = "{issuer}"
audiences = ["{audience}"]
jwks_file = "{jwks_file}"
algorithms = ["{algorithm}"]

[[flow]]
name = "secure"
path = "/secure/"
methods = ["GET"]
allow = {{ groups = ["writers"] }}
sink = "up"
"""
