"""Reading and editing ``Name: value\\r\\n`` header blocks, as scan_headers builds them.

The response cache keeps an answer's head as such a block and, off the hot path, reads
fields from it, picks the ones a 304 carries, and merges a 304's fields into it
(RFC 9111 §4.3.4). Names compare in any case; values are returned without surrounding
whitespace.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator


def _fields(block: bytes) -> Iterator[tuple[bytes, bytes, bytes]]:
    """(lowercase name, value, the whole line with its CRLF) for every field of ``block``."""
    for line in block.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if colon:
            yield name.strip().lower(), value.strip(), line + b"\r\n"


def header_values(block: bytes, name: bytes) -> list[bytes]:
    """Every value of header ``name`` (lowercase) in ``block``."""
    return [value for lname, value, _ in _fields(block) if lname == name]


def list_items(values: list[bytes]) -> list[bytes]:
    """The comma-separated items of a list field's values (``Vary``, ``If-None-Match``)."""
    return [item.strip() for value in values for item in value.split(b",") if item.strip()]


def only_fields(block: bytes, names: Collection[bytes]) -> bytes:
    """The lines of ``block`` whose (lowercase) name is in ``names``."""
    return b"".join(line for lname, _, line in _fields(block) if lname in names)


def without_fields(block: bytes, names: Collection[bytes]) -> bytes:
    """``block`` less the lines whose (lowercase) name is in ``names``."""
    return b"".join(line for lname, _, line in _fields(block) if lname not in names)


def updated_with(stored: bytes, update: bytes) -> bytes:
    """``stored`` with every field ``update`` carries replaced by ``update``'s lines of
    that name (how a 304 refreshes a stored answer's head)."""
    names = {lname for lname, _, _ in _fields(update)}
    return without_fields(stored, names) + update
