"""relay's small JSON state files (revocations, signing keys): a named format, a
version, and one list of entries, so a file meant for something else or written by a
newer relayd is refused by name instead of half-understood."""

from __future__ import annotations

import orjson

__all__ = ["dump_document", "parse_document"]


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
