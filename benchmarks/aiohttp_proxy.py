"""The baseline relay is compared with: a minimal reverse proxy in aiohttp + PyJWT.

What a Python team would write in an afternoon instead of relay, written fairly: uvloop,
a pooled keep-alive client session, the public key parsed once, request bodies streamed
to the upstream. With ``--alg`` every request's bearer token is verified by
``jwt.decode`` (signature, exp, iss, aud) and its ``groups`` claim checked.

    python -m benchmarks.aiohttp_proxy --listen 127.0.0.1:8090 --upstream http://127.0.0.1:9000 \\
        [--alg RS256 --key pub.pem --issuer ISS --audience AUD --group GROUP]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import jwt
import uvloop
from aiohttp import ClientSession, TCPConnector, web
from cryptography.hazmat.primitives.serialization import load_pem_public_key

# not forwarded: they describe this hop, not the request
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "upgrade",
                        "proxy-connection", "host"})

Check = Callable[[web.Request], web.Response | None]


def token_check(args: argparse.Namespace) -> Check:
    """A check answering 401/403 for a request without a valid token, None otherwise."""
    with open(args.key, "rb") as pem:
        key: Any = load_pem_public_key(pem.read())

    def check(request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return web.Response(status=401)
        try:
            claims = jwt.decode(header[7:], key, algorithms=[args.alg], audience=args.audience,
                                issuer=args.issuer, options={"require": ["exp", "iss", "aud"]})
        except jwt.InvalidTokenError:
            return web.Response(status=401)
        if args.group not in claims.get("groups", ()):
            return web.Response(status=403)
        return None

    return check


def build_app(upstream: str, check: Check | None) -> web.Application:
    session: dict[str, ClientSession] = {}

    async def open_session(app: web.Application) -> None:
        session["upstream"] = ClientSession(connector=TCPConnector(limit=128), auto_decompress=False)

    async def close_session(app: web.Application) -> None:
        await session["upstream"].close()

    async def forward(request: web.Request) -> web.Response:
        if check is not None:
            refusal = check(request)
            if refusal is not None:
                return refusal
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = request.content if request.body_exists else None
        async with session["upstream"].request(request.method, upstream + request.path_qs,
                                               headers=headers, data=body) as answer:
            payload = await answer.read()
            content_type = answer.headers.get("Content-Type", "application/octet-stream")
        return web.Response(status=answer.status, body=payload,
                            headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--upstream", required=True, help="http://HOST:PORT")
    parser.add_argument("--alg", choices=("RS256", "ES256"))
    parser.add_argument("--key", help="PEM public key the tokens are signed with")
    parser.add_argument("--issuer")
    parser.add_argument("--audience")
    parser.add_argument("--group")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    app = build_app(args.upstream.rstrip("/"), token_check(args) if args.alg else None)
    web.run_app(app, host=host, port=int(port), access_log=None, print=None,
                loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
