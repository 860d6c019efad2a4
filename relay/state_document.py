"""relay's small JSON state files (revocations, grants, signing keys): a named format, a
version, and one list of entries, so a file meant for something else or written by a
newer relayd is refused by name instead of half-understood.

:class:`StateFile` is such a document in ``server.state_dir``, kept by one process and
read by every one before it serves. A write replaces the file whole (``relay.durable``:
a private temporary file, fsynced, renamed over the old one, then the directory
fsynced), so a crash at any point leaves the old entries or the new ones, never a torn
file, and what was acknowledged is on disk. A file that cannot be read or understood
stops relayd from starting (:class:`StartupError` naming the file and how to recover):
these files hold security state, and serving without it would let refused callers in.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import orjson

from relay import durable
from relay.errors import StartupError

__all__ = ["StateFile", "dump_document", "parse_document"]

log = logging.getLogger(__name__)

E = TypeVar("E")


def dump_document(form: str, version: int, member: str, entries: list[object]) -> bytes:
    return orjson.dumps({"format": form, "version": version, member: entries})


def parse_document(data: bytes, form: str, version: int, member: str) -> list[object]:
    """The ``member`` list of a ``form`` document. Raises ValueError saying what is wrong."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != form:
        raise ValueError(f"not a {form} document")
    if document.get("version") != version:
        raise ValueError(f"version {document.get('version')!r}, this relayd reads version {version}")
    entries = document.get(member)
    if not isinstance(entries, list):
        raise ValueError(f"'{member}' is not a list")
    return entries


class StateFile(Generic[E]):
    """One state document in ``state_dir``; :meth:`save` calls are taken one at a time.

    ``parse`` turns the document's entries into typed ones (ValueError saying what is
    wrong); ``what`` names the file in errors ("revocations file"), ``losing`` what
    starting without it would give up ("which tokens are revoked")."""

    def __init__(self, state_dir: str, name: str, form: str, version: int, member: str,
                 parse: Callable[[list[object]], list[E]], what: str, losing: str) -> None:  # fmt: skip
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, name)
        self._form, self._version, self._member = form, version, member
        self._parse = parse
        self._what, self._losing = what, losing
        self._lock = asyncio.Lock()

    def open(self) -> list[E]:
        """Create the state directory (0700) if missing, then :meth:`load`. Raises StartupError."""
        try:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
            mode = os.stat(self.state_dir).st_mode
        except OSError as exc:
            raise StartupError(f"state directory {self.state_dir}: {exc.strerror or exc}") from None
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            log.warning("state directory %s is writable by other users (mode %o): chmod 700 it",
                        self.state_dir, stat.S_IMODE(mode))
        try:
            removed = durable.remove_leftovers(self.path)
        except OSError as exc:
            raise StartupError(f"state directory {self.state_dir}: {exc.strerror or exc}") from None
        if removed:
            log.warning("%s %s: removed %s, left by a relayd that died while saving", self._what, self.path,
                        ", ".join(removed))
        return self.load()

    def load(self) -> list[E]:
        """The entries in the file (none when there is no file yet). Raises StartupError."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StartupError(f"{self._what} {self.path}: {exc.strerror or exc}") from None
        try:
            return self._parse(parse_document(data, self._form, self._version, self._member))
        except ValueError as exc:
            raise StartupError(
                f"{self._what} {self.path} is corrupt ({exc}); relayd will not serve without knowing "
                f"{self._losing}: restore it, or move it aside to start without it"
            ) from None

    async def save(self, entries: Callable[[], Sequence[E]]) -> None:
        """Write ``entries()`` durably. It is called once this save's turn comes, so a
        later save never writes an older set. Raises OSError."""
        async with self._lock:
            data = dump_document(self._form, self._version, self._member, list(entries()))
            # fsync takes milliseconds (more on a busy disk): not on the event loop
            await asyncio.to_thread(durable.replace, self.path, data)
