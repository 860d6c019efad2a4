"""Revoked token ids, subjects and keys, each for a limited time.

Revocation names what the operator knows: a ``jti``, a subject (the mapped one relay
shows downstream) or a ``kid``. Never a token hash: ECDSA signatures are malleable, so
one token has several valid spellings. Entries lapse after their ttl; a ``jti`` needs
no longer than the token's own lifetime, a subject or kid as long as the incident does,
and no entry longer than :data:`MAX_TTL` (a ttl of years is a typo, not a policy: a
subject to refuse for good belongs in the flows' ``deny`` rules). ``relay.identity.revocation_file`` keeps them
across restarts.
"""

from __future__ import annotations

from typing import Literal, TypedDict, get_args

from relay.identity.claims import Identity

__all__ = ["KINDS", "MAX_TTL", "RevocationEntry", "RevocationKind", "Revocations"]

RevocationKind = Literal["jti", "sub", "kid"]
KINDS: tuple[RevocationKind, ...] = get_args(RevocationKind)
#: the longest a revocation is held: 366 days
MAX_TTL = 366 * 86400.0


class RevocationEntry(TypedDict):
    kind: RevocationKind
    value: str
    until: float  # wall-clock time the entry lapses


class Revocations:
    """The live revocation entries. None in normal operation, so a check costs one attribute test."""

    __slots__ = ("_entries", "_jti", "_sub", "_kid", "active")

    def __init__(self) -> None:
        self._entries: dict[RevocationKind, dict[str, float]] = {kind: {} for kind in KINDS}
        # the same dicts, named for match(): while any entry is held every request pays for it
        self._jti, self._sub, self._kid = self._entries["jti"], self._entries["sub"], self._entries["kid"]
        #: some entry is held (it may have lapsed since): requests must be matched against them
        self.active = False

    def add(self, kind: RevocationKind, value: str, ttl: float, now: float) -> float:
        """Revoke ``value`` for ``ttl`` seconds from ``now``; when it now lapses (a longer
        revocation already held is kept). Raises ValueError on a bad kind, value or ttl."""
        if kind not in self._entries:
            raise ValueError(f"cannot revoke by {kind!r}: use one of {', '.join(KINDS)}")
        if not value:
            raise ValueError("an empty value revokes nothing")
        if not ttl > 0:
            raise ValueError("ttl must be a positive number of seconds")
        if ttl > MAX_TTL:
            raise ValueError(f"ttl of {ttl / 86400:.4g} days is over the longest a revocation is held "
                             f"({MAX_TTL / 86400:g} days)")
        self._prune(now)
        return self._hold(kind, value, now + ttl)

    def restore(self, entries: list[RevocationEntry], now: float) -> None:
        """Hold ``entries`` (as :meth:`entries` returned them, e.g. from the state file) too."""
        for entry in entries:
            if entry["until"] > now:
                self._hold(entry["kind"], entry["value"], entry["until"])

    def _hold(self, kind: RevocationKind, value: str, until: float) -> float:
        entries = self._entries[kind]
        entries[value] = until = max(entries.get(value, 0.0), until)
        self.active = True
        return until

    def match(self, identity: Identity, now: float) -> RevocationKind | None:
        """Which entry, if any, revokes ``identity`` at ``now``."""
        jti = identity.jti
        if jti is not None and self._jti.get(jti, 0.0) > now:
            return "jti"
        if self._sub.get(identity.subject, 0.0) > now:
            return "sub"
        if self._kid.get(identity.kid, 0.0) > now:
            return "kid"
        return None

    def entries(self, now: float) -> list[RevocationEntry]:
        self._prune(now)
        return [RevocationEntry(kind=kind, value=value, until=until)
                for kind, values in self._entries.items() for value, until in values.items()]  # fmt: skip

    def _prune(self, now: float) -> None:
        for values in self._entries.values():
            for value in [v for v, until in values.items() if until <= now]:
                del values[value]
        self.active = any(self._entries.values())
