"""Micro-benchmark: each fast-path function, compiled vs its pure-Python twin.

    python -m benchmarks.micro_fastpath [--repeat N] [--json]

For every case, prints the median ns per call of ``relay._fastpath`` and of
``relay._fastpath_py`` side by side, with their ratio. Build the extension first
(``python setup.py build_ext --inplace``); without it only the twin is timed. Adding a
case is one line in ``CASES``.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import statistics
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from relay import _fastpath_py
from relay.config import DEFAULT_STRIP


@dataclass(frozen=True)
class Case:
    name: str
    function: str  # the name of the function in both modules
    args: tuple[object, ...]
    #: for methods: builds, per module, the callable to time from the module (else getattr)
    prepare: Callable[[ModuleType], Callable[..., object]] | None = None


# --- inputs -----------------------------------------------------------------------------

# What lighttpd hands relay for an API call: a bearer token of ~800 bytes, the client's
# headers, and the ones mod_proxy adds.
PROXIED_HEADERS = [
    (b"Host", b"api.example.com"),
    (b"User-Agent", b"orders-client/2.4 python-httpx/0.27"),
    (b"Accept", b"application/json"),
    (b"Accept-Encoding", b"gzip, deflate"),
    (b"Authorization", b"Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6ImRldi0xIn0." + b"Q" * 700 + b".c2ln"),
    (b"Content-Type", b"application/json"),
    (b"Content-Length", b"1432"),
    (b"Idempotency-Key", b"8e3b0a52-7c1f-4a55-9d0e-2f6d1b7c9a11"),
    (b"X-Forwarded-For", b"203.0.113.7"),
    (b"X-Host", b"api.example.com"),
    (b"X-Forwarded-Proto", b"https"),
    (b"Connection", b"close"),
]
# A flow that neither forwards the token nor the cookies, and strips a spoofable header.
PROXIED_DROP = (b"authorization", b"cookie", b"x-forwarded-user")
# A flow under the default strip list plus the prefix conf/relay.toml suggests; and the same
# request carrying three names with `_` (ignored, as by default).
DEFAULT_DROP = (*(name.encode() for name in DEFAULT_STRIP), b"authorization")
UNDERSCORED_HEADERS = [*PROXIED_HEADERS, (b"X_Forwarded_User", b"admin"), (b"X-Relay_Subject", b"admin"),
                       (b"X_Trace", b"1")]
SMALL_HEADERS = [(b"Host", b"127.0.0.1:8081"), (b"User-Agent", b"wrk"), (b"Accept", b"*/*")]

BEARER = dict(PROXIED_HEADERS)[b"Authorization"]


def scanning(names: tuple[bytes, ...], prefixes: tuple[bytes, ...] = ()) -> Callable[[ModuleType], Callable[..., object]]:
    """scan_headers with rules built once, as a flow's are."""

    def prepare(module: ModuleType) -> Callable[..., object]:
        rules = module.HeaderRules(names, prefixes, underscores=False)
        scan = module.scan_headers
        return lambda headers: scan(headers, rules)

    return prepare


def token_cache_hit(module: ModuleType) -> Callable[..., object]:
    """TokenCache.get of a cached token, sliced from its header value on every call as the
    request path does: a new bytes object each time, so its hash is computed each time."""
    cache = module.TokenCache(10_000)
    cache.put(BEARER[7:], 1, object(), 2e9)
    get = cache.get
    return lambda header, generation, now: get(header[7:], generation, now)


# A new RS256 token as an identity provider issues it: header, ~200 B of claims, and a
# 256-byte signature, each base64url.
NEW_TOKEN = b".".join((
    base64.urlsafe_b64encode(b'{"alg":"RS256","kid":"idp-2026-12","typ":"JWT"}').rstrip(b"="),
    base64.urlsafe_b64encode(b'{"iss":"https://idp.example.com/","aud":"relay","sub":"user-000042",'
                             b'"groups":["orders-readers"],"scope":"orders:read","iat":1796311480,'
                             b'"exp":1798903480,"jti":"a1b2c3d4"}').rstrip(b"="),
    base64.urlsafe_b64encode(bytes(range(256))).rstrip(b"="),
))  # fmt: skip
# a body's 64 KiB piece, framed as one chunk
PIECE = bytes(65536)
# NEW_TOKEN's claims, as orjson gives them once its signature verified
NEW_CLAIMS = {"iss": "https://idp.example.com/", "aud": "relay", "sub": "user-000042", "groups": ["orders-readers"],
              "scope": "orders:read", "iat": 1796311480, "exp": 1798903480, "jti": "a1b2c3d4"}


def claim_rules(module: ModuleType) -> Callable[..., object]:
    """ClaimRules.check with the issuer's rules built once, as relay builds them."""
    rules = module.ClaimRules(("relay",), 30.0, audience="aud", subject="sub", groups="groups", scopes="scope")
    return rules.check


CASES = [
    Case("scan_headers proxied (12 headers, 800 B token)", "scan_headers", (PROXIED_HEADERS,), scanning(PROXIED_DROP)),
    Case("scan_headers proxied, default strip list + prefix", "scan_headers", (PROXIED_HEADERS,),
         scanning(DEFAULT_DROP, (b"x-auth-request-",))),
    Case("scan_headers proxied + 3 names with _", "scan_headers", (UNDERSCORED_HEADERS,), scanning(DEFAULT_DROP)),
    Case("scan_headers small (3 headers)", "scan_headers", (SMALL_HEADERS,), scanning(())),
    Case("TokenCache.get hit (800 B token)", "TokenCache", (BEARER, 1, 1e9), token_cache_hit),
    Case("parse_compact, a new RS256 token", "parse_compact", (NEW_TOKEN,)),
    Case("ClaimRules.check, its claims", "ClaimRules", (NEW_CLAIMS, 1796311500.0), claim_rules),
    Case("identity_block, its identity headers", "identity_block", ("user-000042", "idp", ("orders-readers",))),
    Case("encode_chunk one piece", "encode_chunk", (PIECE,)),
]


# --- timing -----------------------------------------------------------------------------


def median_ns(module: ModuleType, case: Case, repeat: int) -> float:
    """Median over ``repeat`` runs of the time per call, each run lasting ~0.2 s."""
    names = {f"a{i}": arg for i, arg in enumerate(case.args)}
    function = case.prepare(module) if case.prepare else getattr(module, case.function)
    timer = timeit.Timer(f"f({', '.join(names)})", globals={"f": function, **names})
    number, _ = timer.autorange()
    number *= 2
    runs = timer.repeat(repeat=repeat, number=number)
    return statistics.median(runs) / number * 1e9


def compiled_module() -> ModuleType | None:
    try:
        return importlib.import_module("relay._fastpath")
    except ImportError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per measurement (median)")
    parser.add_argument("--json", action="store_true", help="one JSON object per case")
    options = parser.parse_args()
    compiled = compiled_module()
    if compiled is None and not options.json:
        print("relay._fastpath is not built: timing the twin only\n")
    width = max(len(case.name) for case in CASES)
    if not options.json:
        print(f"{'case':<{width}}  {'compiled ns':>11}  {'twin ns':>9}  {'ratio':>6}")
    for case in CASES:
        twin = median_ns(_fastpath_py, case, options.repeat)
        fast = median_ns(compiled, case, options.repeat) if compiled is not None else None
        ratio = twin / fast if fast else None
        if options.json:
            print(json.dumps({"case": case.name, "compiled_ns": fast, "twin_ns": twin, "ratio": ratio}))
        else:
            fast_text = f"{fast:11.0f}" if fast is not None else f"{'-':>11}"
            ratio_text = f"{ratio:5.1f}x" if ratio is not None else f"{'-':>6}"
            print(f"{case.name:<{width}}  {fast_text}  {twin:9.0f}  {ratio_text}")


if __name__ == "__main__":
    main()
