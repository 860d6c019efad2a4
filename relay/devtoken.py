"""Mint a development token signed with the keys in conf/keys/ (never valid in production).

    curl -H "Authorization: Bearer $(relay-devtoken --sub alice --groups ingest-writers)" \
         --data-binary @file http://127.0.0.1:8080/ingest/x

The defaults match the "dev" issuer of conf/relay.toml: iss https://idp.example.test/,
aud relay, kid dev-<alg>. Claims: iss, sub, aud, iat, nbf, exp, jti (random, so one
token can be revoked), groups and scope when given, and any --claim NAME=JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import uuid
from pathlib import Path

import jwt

#: like relayd's default configuration, relative to the directory it runs in
KEYS = Path("conf/keys")
ALGORITHMS = {"RS256": "dev-rs256", "ES256": "dev-es256", "EdDSA": "dev-eddsa"}  # alg → kid and key file
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> int:
    """Seconds from "300", "90s", "10m", "2h" or "1d"; may be negative for expired tokens."""
    m = re.fullmatch(r"(-?\d+)([smhd]?)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"'{text}' is not a duration like 300, 90s, 10m, 2h, 1d")
    return int(m.group(1)) * _UNITS[m.group(2) or "s"]


def claim(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"'{text}' is not NAME=JSON")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value  # a bare word is a string: --claim email=alice@example.test


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="relay-devtoken", description=__doc__.split("\n\n")[0])
    p.add_argument("--sub", default="dev-user", help="subject (default: dev-user)")
    p.add_argument("--groups", action="append", default=[], metavar="G1,G2",
                   help="groups claim, comma-separated; repeatable")  # fmt: skip
    p.add_argument("--scope", action="append", default=[], metavar="S",
                   help="scope claim (space-separated scopes); repeatable")  # fmt: skip
    p.add_argument("--alg", choices=sorted(ALGORITHMS), default="RS256", help="signing algorithm (default: RS256)")
    p.add_argument("--ttl", type=duration, default=3600, help="lifetime: 300, 90s, 10m, 2h, 1d (default: 1h)")
    p.add_argument("--aud", action="append", default=[], help="audience; repeatable (default: relay)")
    p.add_argument("--iss", default="https://idp.example.test/", help="issuer (default: https://idp.example.test/)")
    p.add_argument("--claim", action="append", default=[], type=claim, metavar="NAME=JSON",
                   help="extra claim, e.g. --claim 'scp=[\"a\",\"b\"]'; repeatable")  # fmt: skip
    p.add_argument("--keys", type=Path, default=KEYS, help=f"key directory (default: {KEYS})")
    args = p.parse_args(argv)

    kid = ALGORITHMS[args.alg]
    try:
        key = (args.keys / f"{kid}.pem").read_bytes()
    except OSError as e:
        print(f"devtoken: cannot read the {args.alg} key: {e}", file=sys.stderr)
        return 1
    now = int(time.time())
    audiences = args.aud or ["relay"]
    payload: dict[str, object] = {
        "iss": args.iss,
        "sub": args.sub,
        "aud": audiences[0] if len(audiences) == 1 else audiences,
        "iat": now,
        "nbf": now,
        "exp": now + args.ttl,
        "jti": uuid.uuid4().hex,
    }
    groups = [g for item in args.groups for g in item.split(",") if g]
    if groups:
        payload["groups"] = groups
    if args.scope:
        payload["scope"] = " ".join(args.scope)
    payload.update(args.claim)
    print(jwt.encode(payload, key, algorithm=args.alg, headers={"kid": kid}))
    return 0
