"""Revoked token ids, subjects and keys, each for a limited time.

Revocation names what the operator knows: a ``jti``, a subject (the mapped one relay
shows downstream) or a ``kid``. Never a token hash: ECDSA signatures are malleable, so
one token has several valid spellings. Entries lapse after their ttl; a ``jti`` needs
no longer than the token's own lifetime, a subject or kid as long as the incident does.
"""

from __future__ import annotations

from typing import Literal, TypedDict, get_args

from relay.identity.claims import Identity

__all__ = ["RevocationEntry", "RevocationKind", "Revocations"]

RevocationKind = Literal["jti", "sub", "kid"]
KINDS: tuple[RevocationKind, ...] = get_args(RevocationKind)


class RevocationEntry(TypedDict):
    kind: RevocationKind
    value: str
    until: float  # wall-clock time the entry lapses


class Revocations:
    """The live revocation entries. None in normal operation, so a check costs one attribute test."""

    __slots__ = ("_entries", "active")

    def __init__(self) -> None:
        self._entries: dict[RevocationKind, dict[str, float]] = {kind: {} for kind in KINDS}
        #: some entry is held (it may have lapsed since): requests must be matched against them
        self.active = False

    def add(self, kind: RevocationKind, value: str, ttl: float, now: float) -> None:
        """Revoke ``value`` for ``ttl`` seconds from ``now``; raises ValueError on a bad kind, value or ttl."""
        if kind not in self._entries:
            raise ValueError(f"cannot revoke by {kind!r}: use one of {', '.join(KINDS)}")
        if not value:
            raise ValueError("an empty value revokes nothing")
        if not ttl > 0:
            raise ValueError("ttl must be a positive number of seconds")
        self._prune(now)
        entries = self._entries[kind]
        entries[value] = max(entries.get(value, 0.0), now + ttl)
        self.active = True

    def match(self, identity: Identity, now: float) -> RevocationKind | None:
        """Which entry, if any, revokes ``identity`` at ``now``."""
        checks: tuple[tuple[RevocationKind, str | None], ...] = (
            ("jti", identity.jti), ("sub", identity.subject), ("kid", identity.kid),
        )  # fmt: skip
        for kind, value in checks:
            if value is not None and self._entries[kind].get(value, 0.0) > now:
                return kind
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
