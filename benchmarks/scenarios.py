"""What is measured: one line per scenario, and the comparisons drawn from them.

A scenario is a start function (systems.py), a request target and a wrk load
(loadgen.Load: a script in benchmarks/wrk and its arguments). Adding one is a line in
``SCENARIOS``; a comparison (a ratio, or a figure, with the product's target if it has
one) is a line in ``COMPARISONS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

from benchmarks import systems
from benchmarks.loadgen import Load
from benchmarks.systems import (DOWNLOAD, DOWNLOAD_BYTES, HELLO, SMALL_FILE, SMALL_FILE_HTTP, UPLOAD, Auth,
                                StartFn)
from benchmarks.tokens import COUNT, KeyFiles, files

UPLOAD_BYTES = 64 * 1024 * 1024
_keys: KeyFiles = files()


@dataclass(frozen=True)
class Scenario:
    name: str  # what --only matches, and the key in the JSON
    label: str  # the table's row title
    start: StartFn
    path: str
    load: Load
    auth: Auth = "none"  # the algorithm of the tokens sent; probes check one is required
    relay: bool = False  # relayd is under test
    upload: bool = False  # a 64 MiB POST each: report MB/s and peak RSS rather than request rates
    download: int = 0  # bytes of each answer, when that is what is measured (MB/s, peak RSS)

    @property
    def transfer(self) -> int:
        """Bytes moved per request when MB/s is the figure, else 0."""
        return UPLOAD_BYTES if self.upload else self.download


PLAIN = Load("plain.lua")
# one upload at a time: the throughput of a single stream, and relayd's memory for it
UPLOADS = Load("upload.lua", (str(UPLOAD_BYTES),), threads=1, connections=1)


def one_token(alg: str) -> Load:
    return Load("token.lua", (str(_keys.tokens[alg]),))


# one download at a time, as the uploads: a single stream's throughput
DOWNLOADS = Load("plain.lua", threads=1, connections=1)
DOWNLOADS_RS256 = Load("token.lua", (str(_keys.tokens["RS256"]),), threads=1, connections=1)


def many_tokens(alg: str) -> Load:
    return Load("tokens.lua", (str(_keys.tokens[alg]), "2"), threads=2)


def _token_scenarios(alg: Auth) -> list[Scenario]:
    n = f"{COUNT // 1000}k"
    return [
        Scenario(f"relay-chain-{alg}", f"lighttpd → relayd, one {alg} token",
                 partial(systems.relay_chain, auth=alg), HELLO, one_token(alg), alg, relay=True),
        Scenario(f"sockproxy-{alg}", f"lighttpd sockproxy → relayd, one {alg} token",
                 partial(systems.sockproxy_chain, auth=alg), HELLO, one_token(alg), alg, relay=True),
        Scenario(f"relayd-{alg}", f"relayd, one {alg} token",
                 partial(systems.relayd_direct, auth=alg), HELLO, one_token(alg), alg, relay=True),
        Scenario(f"relayd-{alg}-{n}", f"relayd, {n} {alg} tokens",
                 partial(systems.relayd_direct, auth=alg), HELLO, many_tokens(alg), alg, relay=True),
        Scenario(f"haproxy-{alg}", f"HAProxy jwt_verify, one {alg} token",
                 partial(systems.haproxy, auth=alg), HELLO, one_token(alg), alg),
        Scenario(f"haproxy-{alg}-{n}", f"HAProxy jwt_verify, {n} {alg} tokens",
                 partial(systems.haproxy, auth=alg), HELLO, many_tokens(alg), alg),
        Scenario(f"aiohttp-{alg}", f"aiohttp + PyJWT, one {alg} token",
                 partial(systems.aiohttp_proxy, auth=alg), HELLO, one_token(alg), alg),
    ]


SCENARIOS: list[Scenario] = [
    Scenario("lighttpd-chain", "lighttpd → upstream (no relay)", systems.lighttpd_chain, HELLO, PLAIN),
    Scenario("relay-chain", "lighttpd → relayd → upstream", systems.relay_chain, HELLO, PLAIN,
             relay=True),
    Scenario("relayd", "relayd (TCP, keep-alive)", systems.relayd_direct, HELLO, PLAIN, relay=True),
    Scenario("haproxy", "HAProxy plain", systems.haproxy, HELLO, PLAIN),
    Scenario("aiohttp", "aiohttp proxy", systems.aiohttp_proxy, HELLO, PLAIN),
    Scenario("floor", "uvloop + httptools floor proxy", systems.floor_proxy, HELLO, PLAIN),
    Scenario("floor-chain", "lighttpd → floor proxy (Unix) → upstream", systems.floor_chain, HELLO, PLAIN),
    *_token_scenarios("RS256"),
    # what writing each record before its answer costs: the same loads, records written after
    Scenario("relayd-RS256-batched", "relayd, one RS256 token, audit batched",
             partial(systems.relayd_direct, auth="RS256", commit="batched"), HELLO, one_token("RS256"), "RS256",
             relay=True),
    Scenario("relay-chain-RS256-batched", "lighttpd → relayd, one RS256 token, audit batched",
             partial(systems.relay_chain, auth="RS256", commit="batched"), HELLO, one_token("RS256"), "RS256",
             relay=True),
    # the same flow with its response cache: after the first request, every one is a hit
    Scenario("relayd-RS256-cached", "relayd, one RS256 token, cache hits",
             partial(systems.relayd_direct, auth="RS256", cache=True), HELLO, one_token("RS256"), "RS256",
             relay=True),
    Scenario("relay-chain-RS256-cached", "lighttpd → relayd, one RS256 token, cache hits",
             partial(systems.relay_chain, auth="RS256", cache=True), HELLO, one_token("RS256"), "RS256",
             relay=True),
    # what a rate limit per subject costs: the same flow and load, no limit / local / in Redis
    *(Scenario(f"relayd-RS256-limit-{limit}", f"relayd, one RS256 token, rate limit {limit}",
               partial(systems.relayd_limited, auth="RS256", limit=limit), HELLO, one_token("RS256"), "RS256",
               relay=True) for limit in ("local", "shared")),
    *_token_scenarios("ES256"),
    Scenario("upload-lighttpd-chain", "64 MiB POST: lighttpd → upstream",
             partial(systems.lighttpd_chain, uploads=True), UPLOAD, UPLOADS, upload=True),
    Scenario("upload-relay-chain", "64 MiB POST: lighttpd → relayd → upstream", systems.relay_chain,
             UPLOAD, UPLOADS, relay=True, upload=True),
    # the files sink: relay decides (token, policy, the file), lighttpd sends the bytes
    Scenario("download-lighttpd", "1 GiB GET: lighttpd static file", systems.lighttpd_static, DOWNLOAD,
             DOWNLOADS, download=DOWNLOAD_BYTES),
    Scenario("download-relay-chain-RS256", "1 GiB GET: lighttpd → relayd files sink (X-Sendfile), RS256",
             partial(systems.relay_chain, auth="RS256"), DOWNLOAD, DOWNLOADS_RS256, "RS256", relay=True,
             download=DOWNLOAD_BYTES),
    Scenario("download-relayd-RS256", "1 GiB GET: relayd files sink (its own sendfile), RS256",
             partial(systems.relayd_direct, auth="RS256"), DOWNLOAD, DOWNLOADS_RS256, "RS256", relay=True,
             download=DOWNLOAD_BYTES),
    Scenario("files-lighttpd", "4 KiB GET: lighttpd static file", systems.lighttpd_static, SMALL_FILE, PLAIN),
    Scenario("files-relay-chain-RS256", "4 KiB GET: lighttpd → relayd files sink (X-Sendfile), RS256",
             partial(systems.relay_chain, auth="RS256"), SMALL_FILE, one_token("RS256"), "RS256", relay=True),
    Scenario("files-http-relay-chain-RS256", "4 KiB GET: lighttpd → relayd → HTTP sink → lighttpd, RS256",
             partial(systems.relay_chain, auth="RS256"), SMALL_FILE_HTTP, one_token("RS256"), "RS256",
             relay=True),
    Scenario("files-relayd-RS256", "4 KiB GET: relayd files sink (TCP, keep-alive), RS256",
             partial(systems.relayd_direct, auth="RS256"), SMALL_FILE, one_token("RS256"), "RS256", relay=True),
]

#: "cpu_us": CPU µs per request summed over the scenario's measured processes
Metric = Literal["rate", "mb_s", "cpu_us", "relayd_cpu_us", "relayd_rss_mib"]


@dataclass(frozen=True)
class Comparison:
    """``metric`` of ``subject``, divided by that of ``baseline`` when there is one,
    held against ``target`` (``op`` is ">=" or "<=") when the product sets one."""

    label: str
    subject: str
    baseline: str | None
    metric: Metric = "rate"
    op: Literal[">=", "<=", "<"] = ">="
    target: float | None = None


_K = f"{COUNT // 1000}k"
COMPARISONS: list[Comparison] = [
    Comparison("relayd CPU µs/request vs the floor's, one RS256 token (keep-alive)", "relayd-RS256",
               "floor", "cpu_us", "<=", 1.5),
    Comparison("relayd vs HAProxy jwt_verify, one RS256 token", "relayd-RS256", "haproxy-RS256",
               target=2.5),
    Comparison("lighttpd → relayd (one RS256 token) vs lighttpd → floor proxy", "relay-chain-RS256",
               "floor-chain", target=0.8),
    Comparison("lighttpd sockproxy → relayd (one RS256 token) vs lighttpd → upstream", "sockproxy-RS256",
               "lighttpd-chain", target=0.5),
    Comparison(f"relayd vs HAProxy, {_K} RS256 tokens", f"relayd-RS256-{_K}",
               f"haproxy-RS256-{_K}", target=0.9),
    Comparison(f"relayd vs HAProxy, {_K} ES256 tokens", f"relayd-ES256-{_K}",
               f"haproxy-ES256-{_K}", target=1.0),
    # like for like: the aiohttp proxy takes wrk's connections itself, and so does relayd here
    Comparison("relayd vs aiohttp + PyJWT, one RS256 token", "relayd-RS256", "aiohttp-RS256",
               target=10.0),
    Comparison("64 MiB POST MB/s: relay chain vs lighttpd chain", "upload-relay-chain",
               "upload-lighttpd-chain", "mb_s", target=0.9),
    Comparison("relayd peak RSS MiB, 64 MiB POSTs", "upload-relay-chain", None, "relayd_rss_mib",
               "<", 100.0),
    Comparison("1 GiB GET MB/s: lighttpd → relayd files sink (RS256) vs lighttpd static", "download-relay-chain-RS256",
               "download-lighttpd", "mb_s", target=0.9),
    Comparison("relayd peak RSS MiB, 1 GiB GETs through lighttpd", "download-relay-chain-RS256", None,
               "relayd_rss_mib", "<", 100.0),
    # no target: context for the ones above
    Comparison("4 KiB GET: lighttpd → relayd files sink (RS256) vs lighttpd static", "files-relay-chain-RS256",
               "files-lighttpd"),
    Comparison("4 KiB GET through lighttpd: relayd files sink vs relayd HTTP sink → lighttpd",
               "files-relay-chain-RS256", "files-http-relay-chain-RS256"),
    Comparison("1 GiB GET MB/s: relayd's own sendfile (RS256) vs lighttpd static", "download-relayd-RS256",
               "download-lighttpd", "mb_s"),
    Comparison("relayd CPU µs/request, one RS256 token", "relayd-RS256", None, "relayd_cpu_us"),
    Comparison("relayd one RS256 token vs HAProxy plain", "relayd-RS256", "haproxy"),
    Comparison("relay chain (one RS256 token) vs lighttpd chain", "relay-chain-RS256", "lighttpd-chain"),
    Comparison("lighttpd sockproxy vs mod_proxy → relayd, one RS256 token", "sockproxy-RS256",
               "relay-chain-RS256"),
    Comparison("lighttpd → floor proxy vs lighttpd → upstream", "floor-chain", "lighttpd-chain"),
    Comparison("relayd vs HAProxy jwt_verify, one ES256 token", "relayd-ES256", "haproxy-ES256"),
    Comparison("relayd vs HAProxy plain, no token", "relayd", "haproxy"),
    Comparison("relay chain vs aiohttp + PyJWT, one RS256 token", "relay-chain-RS256",
               "aiohttp-RS256"),
    Comparison("relayd vs aiohttp proxy, no token", "relayd", "aiohttp"),
    Comparison("relay chain vs lighttpd chain, no token", "relay-chain", "lighttpd-chain"),
    Comparison("relayd vs the uvloop + httptools floor, no token", "relayd", "floor"),
    Comparison("relayd one RS256 token: audit before answer vs batched", "relayd-RS256", "relayd-RS256-batched"),
    Comparison("relayd CPU µs/request, one RS256 token, audit batched", "relayd-RS256-batched", None,
               "relayd_cpu_us", "<="),
    Comparison("relay chain one RS256 token: audit before answer vs batched", "relay-chain-RS256",
               "relay-chain-RS256-batched"),
    Comparison("relayd one RS256 token: cache hits vs the same flow uncached", "relayd-RS256-cached",
               "relayd-RS256"),
    Comparison("relayd CPU µs/request, one RS256 token, cache hits", "relayd-RS256-cached", None,
               "relayd_cpu_us"),
    Comparison("relayd CPU µs/request, one RS256 token: cache hits vs uncached", "relayd-RS256-cached",
               "relayd-RS256", "relayd_cpu_us", "<="),
    Comparison("relay chain one RS256 token: cache hits vs the same flow uncached", "relay-chain-RS256-cached",
               "relay-chain-RS256"),
    Comparison("relay chain relayd CPU µs/request, one RS256 token: cache hits vs uncached",
               "relay-chain-RS256-cached", "relay-chain-RS256", "relayd_cpu_us", "<="),
    Comparison("relayd one RS256 token: rate limit local vs none", "relayd-RS256-limit-local", "relayd-RS256"),
    Comparison("relayd one RS256 token: rate limit shared (Redis) vs none", "relayd-RS256-limit-shared",
               "relayd-RS256"),
    Comparison("relayd CPU µs/request, one RS256 token, rate limit local", "relayd-RS256-limit-local", None,
               "relayd_cpu_us"),
    Comparison("relayd CPU µs/request, one RS256 token, rate limit shared", "relayd-RS256-limit-shared", None,
               "relayd_cpu_us"),
    Comparison("relayd + Redis CPU µs/request, one RS256 token, rate limit shared", "relayd-RS256-limit-shared",
               None, "cpu_us"),
]
