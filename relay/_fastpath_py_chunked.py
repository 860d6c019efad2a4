"""The fast path in plain Python, part 3: the chunked transfer coding's framing (the twin
of ``relay/_fastpath_chunked.pxi``; see ``relay._fastpath_py``).

``encode_chunk`` and ``LAST_CHUNK`` frame the payloads of a body relay sends upstream in
chunks, as pieces for ``transport.writelines``. Decoding chunked bodies is httptools' job,
on both sides (request bodies and upstream answers).
"""

from __future__ import annotations

from typing import TypeVar

__all__ = ["LAST_CHUNK", "encode_chunk"]

_CRLF = b"\r\n"

#: Ends a chunked body: the last chunk and an empty trailer section.
LAST_CHUNK = b"0\r\n\r\n"

_Payload = TypeVar("_Payload", bytes, bytearray, memoryview)


def encode_chunk(data: _Payload) -> tuple[bytes, _Payload, bytes]:
    """One chunk carrying ``data``, as the pieces ``(size line, data, b"\\r\\n")`` for
    ``transport.writelines``: ``data`` itself is passed through, never copied or joined.

    Raises ValueError for an empty ``data``: a chunk of size 0 would end the body.
    """
    size = memoryview(data).nbytes
    if not size:
        raise ValueError("an empty chunk would end the body")
    return b"%x\r\n" % size, data, _CRLF
