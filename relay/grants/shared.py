"""Grants as a table of the shared state (``relay.shared``): field = grant id, data = the grant.

The rank of an entry is the grant's (pending 1, decided 2, ended 3), so Redis takes a
change only over an earlier state, and tells the writer whether its change won.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson

from relay.grants.model import Grant
from relay.shared import Entries, SharedEntry, Table

__all__ = ["TABLE", "entry_of", "grants_table"]

log = logging.getLogger(__name__)

TABLE = "grants"


def entry_of(grant: Grant) -> SharedEntry:
    return SharedEntry(float(grant.rank), grant.until, orjson.dumps(grant.as_json()).decode())


def grants_table(held: Callable[[], list[Grant]], received: Callable[[list[Grant]], None]) -> Table:
    def entries() -> Entries:
        return {grant.id: entry_of(grant) for grant in held()}

    def receive(changes: Entries) -> None:
        grants = []
        for field, entry in changes.items():
            try:
                grants.append(Grant.from_json(orjson.loads(entry.data)))
            except (orjson.JSONDecodeError, ValueError) as exc:
                log.warning("shared state: ignored grant %r that is not relay's: %s", field[:80], exc)
        if grants:
            received(grants)

    return Table(TABLE, entries, receive)
