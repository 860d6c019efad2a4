"""The upstreams and every system under test: configuration and start-up.

Each start function takes the run's ``Context``, starts its processes through
``Context.start`` (so the runner can stop them whatever happens) and returns a
``System``: the URL wrk loads and the processes whose CPU time is reported.

Upstreams, started once per invocation on the load CPU, each listening on TCP (for
relayd, HAProxy and aiohttp, which keep connections to it alive) and on a Unix socket
(for the lighttpd-in-front chain, as relayd's socket is):
  * lighttpd serving ``HELLO``, a 100-byte file;
  * ``discard.py`` taking the POSTs to ``UPLOAD``: it reads each body and drops it,
    at several GB/s, and answers 200.
The files the files sink serves (``DOWNLOAD``, 1 GiB; ``SMALL_FILE``, 4 KiB) are in
``htdocs/files``, which is also the upstream lighttpd's ``/files-http/``: the same file
through an HTTP sink.
"""

from __future__ import annotations

import os
import random
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from benchmarks.procs import Address, Cores, Proc
from benchmarks.tokens import AUDIENCE, GROUP, ISSUER, KeyFiles

ROOT = Path(__file__).resolve().parent.parent
LIGHTTPD_CONF = ROOT / "conf" / "lighttpd.conf"
SOCKPROXY_CONF = ROOT / "conf" / "lighttpd-sockproxy.conf"
HELLO = "/bench/hello.txt"
UPLOAD = "/upload/64MiB"
DOWNLOAD = "/files/1GiB.bin"
DOWNLOAD_BYTES = 1024**3
SMALL_FILE = "/files/4KiB.txt"
#: the same 4 KiB file through an HTTP sink to the upstream lighttpd
SMALL_FILE_HTTP = "/files-http/4KiB.txt"

Auth = Literal["none", "RS256", "ES256"]
#: relayd's audit.commit
Commit = Literal["before-answer", "batched"]
#: the bench flow's rate limit: none, counted in relayd ("local"), or in a redis-server of
#: the run's own ("shared"); generous enough that every request is admitted
Limit = Literal["none", "local", "shared"]


@dataclass
class System:
    """A started system under test: where to send load, and whose CPU to count
    (role → process, e.g. {"relayd": ..., "lighttpd": ...} for a chain)."""

    url: str
    measured: dict[str, Proc]


@dataclass
class Context:
    """What every start function needs: a scratch directory, the CPU layout, the keys,
    the upstreams' addresses, and the list of processes to stop after each run."""

    workdir: Path
    cores: Cores
    keys: KeyFiles
    running: list[Proc] = field(default_factory=list)
    upstream_port: int = 0
    upstream_socket: str = ""
    discard_port: int = 0
    discard_socket: str = ""

    def port(self) -> int:
        """A free loopback port below the kernel's range for outgoing connections, so
        that none of the thousands of connections a run opens can take it first."""
        start = random.randrange(20000, 30000)
        for port in range(start, start + 1000):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
        raise RuntimeError("no free port between 20000 and 31000")

    def path(self, name: str) -> Path:
        return self.workdir / name

    def start(self, name: str, argv: list[str], ready: list[Address],
              env: dict[str, str] | None = None) -> Proc:
        """Start a process under test, on the CPU set aside for it."""
        proc = Proc(name, argv, self.path(f"{name}.log"), cpus=self.cores.sut, env=env, cwd=ROOT)
        self.running.append(proc)
        proc.wait_ready(ready)
        return proc

    def stop_all(self) -> None:
        while self.running:
            self.running.pop().stop()


StartFn = Callable[[Context], System]


# --- upstreams --------------------------------------------------------------------------

def start_upstreams(ctx: Context) -> list[Proc]:
    """lighttpd for the GETs, discard.py for the POSTs; the caller stops them."""
    docroot = ctx.path("htdocs/bench")
    docroot.mkdir(parents=True, exist_ok=True)
    (docroot / "hello.txt").write_bytes(b"relay benchmark: a small static answer from the "
                                        b"upstream, exactly one hundred bytes long.......\n")
    _write_files(ctx)
    ctx.upstream_port = ctx.port()
    ctx.upstream_socket = str(ctx.path("upstream.sock"))
    conf = ctx.path("upstream.conf")
    conf.write_text(f"""\
server.modules = ()
server.document-root = "{ctx.path('htdocs')}"
server.bind = "127.0.0.1"
server.port = {ctx.upstream_port}
$SERVER["socket"] == "{ctx.upstream_socket}" {{ }}
# keep-alive clients (relayd, HAProxy, aiohttp) are never asked to reconnect mid-run
server.max-keep-alive-requests = 1000000
server.max-connections = 1024
""")
    started = []
    try:
        lighttpd = Proc("upstream", ["lighttpd", "-D", "-f", str(conf)], ctx.path("upstream.log"),
                        cpus=ctx.cores.load, cwd=ROOT)
        started.append(lighttpd)
        lighttpd.wait_ready([("127.0.0.1", ctx.upstream_port), ctx.upstream_socket])
        ctx.discard_port = ctx.port()
        ctx.discard_socket = str(ctx.path("discard.sock"))
        discard = Proc("discard", [sys.executable, "-m", "benchmarks.discard",
                                   "--tcp", f"127.0.0.1:{ctx.discard_port}",
                                   "--unix", ctx.discard_socket],
                       ctx.path("discard.log"), cpus=ctx.cores.load, cwd=ROOT)
        started.append(discard)
        discard.wait_ready([("127.0.0.1", ctx.discard_port), ctx.discard_socket])
    except BaseException:
        for proc in reversed(started):
            proc.stop()
        raise
    return started


def _write_files(ctx: Context) -> None:
    """The files sink's root (real bytes, on the run's tmpfs when there is one), and the
    upstream's view of it for the HTTP-sink comparison."""
    files = ctx.path("htdocs/files")
    files.mkdir(parents=True, exist_ok=True)
    (files / "4KiB.txt").write_bytes(b"relay files sink: four KiB of text.\n" * 113 + b"." * 28)
    big = files / "1GiB.bin"
    if not big.exists():
        block = bytes(range(256)) * 4096  # 1 MiB
        with open(big, "wb") as out:
            for _ in range(DOWNLOAD_BYTES // len(block)):
                out.write(block)
    link = ctx.path("htdocs/files-http")
    if not link.exists():
        link.symlink_to("files")


def lighttpd_static(ctx: Context) -> System:
    """lighttpd serving the files statically, on the CPU under test: the baseline of the
    files sink (the same lighttpd binary, as it serves files when nobody asks relay)."""
    port = ctx.port()
    conf = ctx.path("static.conf")
    conf.write_text(f"""\
server.document-root = "{ctx.path('htdocs')}"
server.bind = "127.0.0.1"
server.port = {port}
server.max-keep-alive-requests = 1000000
mimetype.assign = ( ".txt" => "text/plain; charset=utf-8", ".bin" => "application/octet-stream" )
""")
    proc = ctx.start("lighttpd", ["lighttpd", "-D", "-f", str(conf)], [("127.0.0.1", port)])
    return System(f"http://127.0.0.1:{port}", {"lighttpd": proc})


# --- lighttpd in front (the shipped conf/lighttpd.conf) ----------------------------------

def _front_lighttpd(ctx: Context, backend_socket: str, conf: Path = LIGHTTPD_CONF) -> tuple[Proc, str]:
    state = ctx.path("front-lighttpd")
    (state / "uploads").mkdir(parents=True, exist_ok=True)
    port = ctx.port()
    env = dict(os.environ) | {"RELAY_HTTP_ADDR": "127.0.0.1", "RELAY_HTTP_PORT": str(port),
                              "RELAY_SOCKET": backend_socket, "RELAY_LIGHTTPD_DIR": str(state),
                              "RELAY_FILES_ROOTS": str(ctx.path("htdocs/files"))}
    proc = ctx.start("lighttpd", ["lighttpd", "-D", "-f", str(conf)],
                     [("127.0.0.1", port)], env=env)
    return proc, f"http://127.0.0.1:{port}"


def lighttpd_chain(ctx: Context, uploads: bool = False) -> System:
    """lighttpd (shipped conf) → an upstream's Unix socket: the chain without relay.
    It proxies every path to one socket, hence ``uploads`` to pick discard.py's."""
    front, url = _front_lighttpd(ctx, ctx.discard_socket if uploads else ctx.upstream_socket)
    return System(url, {"lighttpd": front})


# --- relayd -----------------------------------------------------------------------------

def relay_config(ctx: Context, port: int, sock: str, auth: Auth, commit: Commit = "before-answer",
                 cache: bool = False, limit: Limit = "none", redis_url: str = "") -> str:
    """GETs under /bench/ and /files-http/ to lighttpd, POSTs under /upload/ to discard.py,
    GETs under /files/ from the files sink; a token
    required when ``auth`` names an algorithm (the issuer then accepts only that one,
    as HAProxy's rules do); audit records written as ``commit`` says; with ``cache`` the
    GET flow keeps lighttpd's answers (per subject, or for everyone without a token) for
    longer than a run lasts, so every request after the first is a cache hit; /bench/ rate
    limited per subject (per client without tokens) when ``limit`` says so."""
    rules = 'auth = "none"'
    if auth != "none":
        rules = f'auth = "jwt"\nissuers = ["bench"]\nallow = {{ groups = ["{GROUP}"] }}'
    kept = f'cache = {{ scope = "{"public" if auth == "none" else "subject"}", ttl = "1h" }}' if cache else ""
    limited, shared = "", ""
    if limit != "none":
        per = "client" if auth == "none" else "subject"
        limited = f'rate_limit = {{ per = "{per}", rate = "1000000000/s", burst = 1000000000, mode = "{limit}" }}'
    if limit == "shared":
        shared = f'\n[shared]\nredis = "{redis_url}"\n'
    return f"""\
[server]
listen = ["127.0.0.1:{port}", "unix:{sock}"]
socket_mode = "0600"

[audit]
path = "{ctx.path('audit.jsonl')}"
commit = "{commit}"

[[issuer]]
name = "bench"
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
jwks_file = "{ctx.keys.jwks}"
algorithms = ["{auth if auth != 'none' else 'RS256'}"]

[sink.upstream]
type = "http"
url = "http://127.0.0.1:{ctx.upstream_port}"
timeout = "30s"
pool_size = 128

[sink.discard]
type = "http"
url = "http://127.0.0.1:{ctx.discard_port}"
timeout = "30s"

[[flow]]
name = "bench"
path = "/bench/"
methods = ["GET"]
{rules}
sink = "upstream"
{kept}
{limited}

[[flow]]
name = "upload"
path = "/upload/"
methods = ["POST"]
{rules}
sink = "discard"
max_body = "128MiB"

[sink.files]
type = "files"
root = "{ctx.path('htdocs/files')}"

[[flow]]
name = "files"
path = "/files/"
{rules}
sink = "files"

[[flow]]
name = "files-http"
path = "/files-http/"
methods = ["GET"]
{rules}
sink = "upstream"
{shared}"""


def _redis(ctx: Context) -> tuple[Proc, str]:
    """A redis-server of the run's own on the relayd's CPU (it works for relayd), saving nothing."""
    port = ctx.port()
    proc = ctx.start("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                               "--appendonly", "no", "--dir", str(ctx.workdir)], [("127.0.0.1", port)])
    return proc, f"redis://127.0.0.1:{port}/0"


def _relayd(ctx: Context, auth: Auth, commit: Commit = "before-answer", cache: bool = False,
            limit: Limit = "none", redis_url: str = "") -> tuple[Proc, int, str]:
    port, sock = ctx.port(), str(ctx.path("relay.sock"))
    config = ctx.path("relay.toml")
    config.write_text(relay_config(ctx, port, sock, auth, commit, cache, limit, redis_url))
    ctx.path("audit.jsonl").unlink(missing_ok=True)  # each run's audit starts empty
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = ctx.start("relayd", [sys.executable, "-m", "relay", "-c", str(config)],
                     [("127.0.0.1", port), sock], env=env)
    return proc, port, sock


def relayd_direct(ctx: Context, auth: Auth = "none", commit: Commit = "before-answer",
                  cache: bool = False) -> System:
    """wrk → relayd over TCP with keep-alive → upstream (or relayd's response cache)."""
    relayd, port, _ = _relayd(ctx, auth, commit, cache)
    return System(f"http://127.0.0.1:{port}", {"relayd": relayd})


def relayd_limited(ctx: Context, auth: Auth, limit: Limit) -> System:
    """``relayd_direct`` with the flow rate limited; a "shared" limit's Redis is measured too."""
    measured: dict[str, Proc] = {}
    redis_url = ""
    if limit == "shared":
        measured["redis"], redis_url = _redis(ctx)
    relayd, port, _ = _relayd(ctx, auth, limit=limit, redis_url=redis_url)
    measured["relayd"] = relayd
    return System(f"http://127.0.0.1:{port}", measured)


def relay_chain(ctx: Context, auth: Auth = "none", commit: Commit = "before-answer",
                cache: bool = False) -> System:
    """wrk → lighttpd (shipped conf) → relayd's Unix socket → upstream (or its cache)."""
    relayd, _, sock = _relayd(ctx, auth, commit, cache)
    front, url = _front_lighttpd(ctx, sock)
    return System(url, {"relayd": relayd, "lighttpd": front})


def sockproxy_chain(ctx: Context, auth: Auth = "none") -> System:
    """wrk → lighttpd mod_sockproxy (conf/lighttpd-sockproxy.conf) → relayd's Unix socket →
    upstream: lighttpd hands each client connection over whole, so keep-alive reaches relayd."""
    relayd, _, sock = _relayd(ctx, auth)
    front, url = _front_lighttpd(ctx, sock, SOCKPROXY_CONF)
    return System(url, {"relayd": relayd, "lighttpd": front})


# --- HAProxy 2.6 ------------------------------------------------------------------------

def _jwt_rules(ctx: Context, alg: str) -> str:
    """Token checks as an HAProxy operator writes them: the algorithm pinned, the
    signature, then exp, iss, aud and the group, each failure answered 401/403.
    HAProxy 2.6's JSON queries return nothing for an array, so the group check can
    only look at one position (relay accepts the group anywhere in the list)."""
    pem = ctx.keys.pem[alg]
    return f"""\
    http-request deny deny_status 401 unless {{ req.hdr(authorization) -m beg "Bearer " }}
    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
    http-request deny deny_status 401 unless {{ var(txn.alg) -m str {alg} }}
    http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_verify(txn.alg,"{pem}") -m int 1 }}
    http-request set-var(txn.now) date()
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
    http-request deny deny_status 401 unless {{ var(txn.exp),sub(txn.now) -m int gt 0 }}
    http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_payload_query('$.iss') -m str {ISSUER} }}
    http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_payload_query('$.aud') -m str {AUDIENCE} }}
    http-request deny deny_status 403 unless {{ var(txn.bearer),jwt_payload_query('$.groups[0]') -m str {GROUP} }}
"""


def haproxy(ctx: Context, auth: Auth = "none") -> System:
    """wrk → HAProxy (one thread; with ``auth``, jwt_verify on every request) → upstream."""
    port = ctx.port()
    config = ctx.path("haproxy.cfg")
    config.write_text(f"""\
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend bench
    bind 127.0.0.1:{port}
{_jwt_rules(ctx, auth) if auth != "none" else ""}\
    default_backend upstream

backend upstream
    http-reuse always
    server lighttpd 127.0.0.1:{ctx.upstream_port}
""")
    proc = ctx.start("haproxy", ["haproxy", "-db", "-f", str(config)], [("127.0.0.1", port)])
    return System(f"http://127.0.0.1:{port}", {"haproxy": proc})


# --- aiohttp + PyJWT --------------------------------------------------------------------

def aiohttp_proxy(ctx: Context, auth: Auth = "none") -> System:
    """wrk → the minimal aiohttp reverse proxy (benchmarks/aiohttp_proxy.py) → upstream."""
    port = ctx.port()
    argv = [sys.executable, "-m", "benchmarks.aiohttp_proxy", "--listen", f"127.0.0.1:{port}",
            "--upstream", f"http://127.0.0.1:{ctx.upstream_port}"]
    if auth != "none":
        argv += ["--alg", auth, "--key", str(ctx.keys.pem[auth]), "--issuer", ISSUER,
                 "--audience", AUDIENCE, "--group", GROUP]
    proc = ctx.start("aiohttp", argv, [("127.0.0.1", port)])
    return System(f"http://127.0.0.1:{port}", {"aiohttp": proc})


# --- the floor: uvloop + httptools and nothing else -------------------------------------

def _floor(ctx: Context, listen: str, ready: Address) -> Proc:
    argv = [sys.executable, "-m", "benchmarks.floor_proxy", "--listen", listen,
            "--upstream", f"127.0.0.1:{ctx.upstream_port}"]
    return ctx.start("floor", argv, [ready])


def floor_proxy(ctx: Context) -> System:
    """wrk → benchmarks/floor_proxy.py (keep-alive, no checks) → upstream: what Python,
    uvloop and the kernel cost a proxy per request before relay does any work of its own."""
    port = ctx.port()
    proc = _floor(ctx, f"127.0.0.1:{port}", ("127.0.0.1", port))
    return System(f"http://127.0.0.1:{port}", {"floor": proc})


def floor_chain(ctx: Context) -> System:
    """wrk → lighttpd (shipped conf) → the floor proxy's Unix socket → upstream: the best
    any uvloop + httptools backend does behind mod_proxy (a new connection per request)."""
    sock = str(ctx.path("floor.sock"))
    proc = _floor(ctx, f"unix:{sock}", sock)
    front, url = _front_lighttpd(ctx, sock)
    return System(url, {"floor": proc, "lighttpd": front})
