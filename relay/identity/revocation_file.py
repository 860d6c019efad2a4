"""The revocations state file: what is revoked survives a restart of relayd or of a worker.

``STATE_DIR/revocations.json`` holds every revocation not yet lapsed::

    {"format": "relay-revocations", "version": 1,
     "entries": [{"kind": "sub", "value": "wanda", "until": 1767225600.0}]}

One process writes it: relayd itself, or with ``server.workers > 1`` the supervisor; every
process reads it before it accepts its first request. A write replaces the file whole
(``relay.durable``: a private temporary file, fsynced, renamed over the old one, then the
directory fsynced), so a crash at any point leaves the old set or the new one, never a
torn file, and a revocation acknowledged to the operator is on disk.

A file that cannot be read or understood stops relayd from starting (:class:`StartupError`
naming the file): revocation is a security control, and serving without knowing what is
revoked would let revoked tokens back in. The error says how to recover.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import stat
from collections.abc import Callable


from relay import durable
from relay.errors import StartupError
from relay.identity.revocation import KINDS, RevocationEntry
from relay.state_document import dump_document, parse_document

__all__ = ["FILE_NAME", "RevocationFile"]

log = logging.getLogger(__name__)

FILE_NAME = "revocations.json"
_FORMAT = "relay-revocations"
_VERSION = 1


class RevocationFile:
    """The state file in ``state_dir``; :meth:`save` calls are taken one at a time."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, FILE_NAME)
        self._lock = asyncio.Lock()

    def open(self) -> list[RevocationEntry]:
        """Create the state directory (0700) if missing, then :meth:`load`. Raises StartupError."""
        try:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
            mode = os.stat(self.state_dir).st_mode
        except OSError as exc:
            raise StartupError(f"state directory {self.state_dir}: {exc.strerror or exc}") from None
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            log.warning("state directory %s is writable by other users (mode %o): chmod 700 it",
                        self.state_dir, stat.S_IMODE(mode))
        return self.load()

    def load(self) -> list[RevocationEntry]:
        """The entries in the file (none when there is no file yet). Raises StartupError."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StartupError(f"revocations file {self.path}: {exc.strerror or exc}") from None
        try:
            return _parse(data)
        except ValueError as exc:
            raise StartupError(
                f"revocations file {self.path} is corrupt ({exc}); relayd will not serve without knowing "
                "which tokens are revoked: restore it, or move it aside to start with no revocations"
            ) from None

    async def save(self, entries: Callable[[], list[RevocationEntry]]) -> None:
        """Write ``entries()`` durably. It is called once this save's turn comes, so a
        later save never writes an older set. Raises OSError."""
        async with self._lock:
            data = dump_document(_FORMAT, _VERSION, "entries", list(entries()))
            # fsync takes milliseconds (more on a busy disk): not on the event loop
            await asyncio.to_thread(durable.replace, self.path, data)


def _parse(data: bytes) -> list[RevocationEntry]:
    entries = parse_document(data, _FORMAT, _VERSION, "entries")
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
