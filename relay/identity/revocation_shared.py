"""Revocations as a table of the shared state (``relay.shared``): field ``KIND:VALUE``.

What another instance revoked is held here as if revoked here, and saved to this
instance's state file too, so a restart while Redis is away still refuses it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from relay.identity.revocation import KINDS, RevocationEntry
from relay.shared import Entries, Table

__all__ = ["TABLE", "field_of", "revocations_table"]

TABLE = "revocations"


def field_of(entry: RevocationEntry) -> str:
    return f"{entry['kind']}:{entry['value']}"


def _entry_of(field: str, until: float) -> RevocationEntry | None:
    kind, _, value = field.partition(":")
    for known in KINDS:
        if kind == known and value:
            return RevocationEntry(kind=known, value=value, until=until)
    return None  # a kind a newer relayd knows: not this one's to enforce


def revocations_table(held: Callable[[], list[RevocationEntry]],
                      restore: Callable[[list[RevocationEntry]], None],
                      save: Callable[[], Awaitable[object]],
                      spawn: Callable[[Awaitable[object]], object]) -> Table:
    def entries() -> Entries:
        return {field_of(entry): entry["until"] for entry in held()}

    def received(changes: Entries) -> None:
        found = [entry for field, until in changes.items() if (entry := _entry_of(field, until)) is not None]
        if found:
            restore(found)
            spawn(save())

    return Table(TABLE, entries, received)
