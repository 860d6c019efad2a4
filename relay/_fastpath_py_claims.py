"""7. A new identity, in plain Python: the readable spec of relay/_fastpath_claims.pxi.

What a token nobody has seen costs after its signature verified: its claims checked and
read as the issuer's mapping says (``ClaimRules.check``), and, on its first request, the
block of identity headers sent downstream (``identity_block``). ``ClaimPath`` resolves
one claim name or dotted path, for the mapping here and for the allow/deny rules of
relay.identity.authz.

The checks, in order, each failure with its audit reason: ``exp`` required and an integer
(``malformed``), not past beyond the leeway (``expired``; an ``exp`` beyond 2**53 seconds,
some 285 million years, is taken as 2**53: "never" spelled as the largest integer a
system has); ``nbf`` and ``iat``, when present, numbers (``malformed``) not in the
future beyond the leeway (``not_yet_valid``); the audience claim a string, or an array
holding a string, among the issuer's audiences (``audience``); then the mapping: the
subject a non-empty string, groups and scopes a string or an array of strings
(``malformed``). Issuers put the same facts under different names (Okta ``scp``, Cognito
``cognito:groups``, Azure ``roles``, Keycloak ``realm_access.roles``); a path is tried
first as one claim name (Auth0 namespaces claims with URLs full of dots), then as dotted
steps into nested objects. A scope string is split on whitespace (RFC 6749 §3.3), a
group string is one group.

Claim values come from the identity provider and may hold anything, so a header value
that is not plain printable ASCII, or holds ``%`` or ``,`` (the groups separator), is
sent percent-encoded UTF-8 (RFC 3986 §2.1): a CR, LF or NUL can never reach the header
block, and a receiver that percent-decodes every value reads the original text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn
from urllib.parse import quote

from relay.errors import Unauthorized

__all__ = ["ClaimPath", "ClaimRules", "identity_block"]

#: |exp| is held to this: the seconds a double holds exactly, later than any clock reads
MAX_EXP = 2**53
#: what ClaimRules.check reads of a verified payload: subject, groups, scopes, jti, exp
Caller = tuple[str, tuple[str, ...], tuple[str, ...], str | None, int]


def _fail(reason: str, detail: str) -> NoReturn:
    raise Unauthorized(detail, reason=reason)


class ClaimPath:
    """A claim name or dotted path, resolved against a payload."""

    __slots__ = ("name", "steps")

    def __init__(self, name: str) -> None:
        self.name = name
        self.steps = tuple(name.split("."))

    def find(self, claims: Mapping[str, Any]) -> Any:
        """The value at this path, or None when absent."""
        value = claims.get(self.name)
        if value is not None or len(self.steps) == 1:
            return value
        node = claims.get(self.steps[0])
        for step in self.steps[1:]:
            if not isinstance(node, dict):
                return None
            node = node.get(step)
        return node


class ClaimRules:
    """One issuer's claim checks and mapping; built once per issuer."""

    __slots__ = ("_audiences", "_audience", "_leeway", "_subject", "_groups", "_scopes")

    def __init__(self, audiences: Iterable[str], leeway: float, *, audience: str, subject: str, groups: str,
                 scopes: str) -> None:  # fmt: skip
        self._audiences = frozenset(audiences)
        self._leeway = leeway
        self._audience = ClaimPath(audience)
        self._subject = ClaimPath(subject)
        self._groups = ClaimPath(groups)
        self._scopes = ClaimPath(scopes)

    def check(self, payload: dict[str, Any], now: float) -> Caller:
        """The caller ``payload`` speaks for at ``now``: subject, groups, scopes, jti (None
        unless a string) and exp (held to ±``MAX_EXP``). Raises Unauthorized with the
        reason of the first check that fails (see the module's text)."""
        exp = payload.get("exp")
        if type(exp) is not int:  # not bool, float or a numeric string: integers only
            _fail("malformed", "'exp' is missing or not an integer")
        if not -MAX_EXP <= exp <= MAX_EXP:
            exp = MAX_EXP if exp > 0 else -MAX_EXP
        leeway = self._leeway
        if now > exp + leeway:
            _fail("expired", "token has expired")
        for name in ("nbf", "iat"):
            moment = payload.get(name)
            if moment is None:
                continue
            if type(moment) is not int and type(moment) is not float:  # NumericDate (RFC 7519 §2)
                _fail("malformed", f"'{name}' is not a number")
            if moment > now + leeway:
                _fail("not_yet_valid", f"token '{name}' is in the future")
        aud = self._audience.find(payload)
        if not (isinstance(aud, str) and aud in self._audiences
                or isinstance(aud, list) and any(isinstance(a, str) and a in self._audiences for a in aud)):
            _fail("audience", f"token is not for this audience ({', '.join(sorted(self._audiences))})")
        subject = self._subject.find(payload)
        if not isinstance(subject, str) or not subject:
            _fail("malformed", f"token has no subject claim '{self._subject.name}'")
        groups = _strings(self._groups, payload, split=False)
        scopes = _strings(self._scopes, payload, split=True)
        jti = payload.get("jti")
        return subject, groups, scopes, jti if isinstance(jti, str) else None, exp


def _strings(path: ClaimPath, claims: dict[str, Any], split: bool) -> tuple[str, ...]:
    value = path.find(claims)
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.split()) if split else (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    # refusing beats ignoring: a deny rule must not miss a group spelled as a number
    _fail("malformed", f"claim '{path.name}' is not a string or an array of strings")


# printable ASCII except "%" and ",", single spaces inside (edge spaces would be trimmed)
_PLAIN = re.compile(r"[!-$&-+\--~]+(?: [!-$&-+\--~]+)*")
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "%,")


def _header_value(text: str) -> bytes:
    """``text`` as a safe header value: itself when plain, else percent-encoded UTF-8."""
    if _PLAIN.fullmatch(text):
        return text.encode("ascii")
    return quote(text, safe=_SAFE).encode("ascii")


def identity_block(subject: str, issuer: str, groups: tuple[str, ...]) -> bytes:
    """The ``X-Relay-Subject``, ``X-Relay-Issuer`` and ``X-Relay-Groups`` (comma-joined) lines."""
    return b"".join((
        b"X-Relay-Subject: ", _header_value(subject), b"\r\n",
        b"X-Relay-Issuer: ", _header_value(issuer), b"\r\n",
        b"X-Relay-Groups: ", b",".join(_header_value(g) for g in groups), b"\r\n",
    ))  # fmt: skip
