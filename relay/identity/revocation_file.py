"""The revocations state file: what is revoked survives a restart of relayd or of a worker.

``STATE_DIR/revocations.json`` holds every revocation not yet lapsed::

    {"format": "relay-revocations", "version": 1,
     "entries": [{"kind": "sub", "value": "wanda", "until": 1767225600.0}]}

One process writes it: relayd itself, or with ``server.workers > 1`` the supervisor; every
process reads it before it accepts its first request (``relay.state_document.StateFile``:
durable replacement; a corrupt file stops relayd from starting, since serving without
knowing what is revoked would let revoked tokens back in).
"""

from __future__ import annotations

import math

from relay.identity.revocation import KINDS, RevocationEntry
from relay.state_document import StateFile

__all__ = ["FILE_NAME", "RevocationFile"]

FILE_NAME = "revocations.json"


class RevocationFile(StateFile[RevocationEntry]):
    def __init__(self, state_dir: str) -> None:
        super().__init__(state_dir, FILE_NAME, "relay-revocations", 1, "entries", _parse,
                         "revocations file", "which tokens are revoked")


def _parse(entries: list[object]) -> list[RevocationEntry]:
    out: list[RevocationEntry] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != {"kind", "value", "until"}:
            raise ValueError(f"entries[{i}] is not an object of kind, value and until")
        kind, value, until = entry["kind"], entry["value"], entry["until"]
        if kind not in KINDS or not isinstance(value, str) or not value:
            raise ValueError(f"entries[{i}]: kind must be one of {', '.join(KINDS)} and value a non-empty string")
        if isinstance(until, bool) or not isinstance(until, (int, float)) or not math.isfinite(until):
            raise ValueError(f"entries[{i}]: until must be a number of seconds since the epoch")
        out.append(RevocationEntry(kind=kind, value=value, until=float(until)))
    return out
