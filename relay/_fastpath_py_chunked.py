"""The fast path in plain Python, part 3: the chunked transfer coding (the twin of
``relay/_fastpath_chunked.pxi``; see ``relay._fastpath_py``).

``ChunkedDecoder`` takes a chunked body apart as it arrives, handing back payload runs
without copying them; ``encode_chunk``, ``encode_chunks`` and ``LAST_CHUNK`` frame outgoing
payloads as pieces for ``transport.writelines``.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum
from typing import NoReturn, TypeVar

from relay._fastpath_py_headers import _FORBIDDEN_IN_VALUE, _TOKEN, BytesLike
from relay.errors import BadRequest

# ---------------------------------------------------------------------------------------
# 3. Chunked transfer coding (RFC 9112 §7.1)
# ---------------------------------------------------------------------------------------

_HEX_VALUES = {c: int(chr(c), 16) for c in b"0123456789abcdefABCDEF"}
_TCHARS = frozenset(c for c in range(256) if _TOKEN.fullmatch(bytes([c])))
#: HTAB, SP, VCHAR and obs-text: a field value's bytes, and a quoted string's besides " and \
_VALUE_CHARS = frozenset(range(256)) - frozenset(_FORBIDDEN_IN_VALUE)
_CR, _LF, _SEMICOLON, _EQUALS, _COLON, _DQUOTE, _BACKSLASH = b'\r\n;=:"\\'
_CRLF = b"\r\n"
_LIMIT = 2**63 - 1  # the compiled decoder counts in signed 64 bits

#: Ends a chunked body: the last chunk and an empty trailer section.
LAST_CHUNK = b"0\r\n\r\n"

_Payload = TypeVar("_Payload", bytes, bytearray, memoryview)


class _Chunked(IntEnum):
    """ChunkedDecoder's states, in message order. Up to EXT_QUOTED_END the decoder is in a
    chunk-size line, from TRAILER_START to TRAILER_VALUE in a trailer field line; both kinds
    of line are capped."""

    SIZE_START = 0  # the first hex digit of a chunk size
    SIZE = 1  # more hex digits, ";" or CR
    EXT_NAME_START = 2  # after ";": an extension name's first tchar
    EXT_NAME = 3  # more tchars, "=", ";" or CR
    EXT_VALUE_START = 4  # after "=": a tchar or the opening quote
    EXT_VALUE = 5  # more tchars, ";" or CR
    EXT_QUOTED = 6  # qdtext, a backslash or the closing quote
    EXT_QUOTED_PAIR = 7  # the byte a backslash escapes
    EXT_QUOTED_END = 8  # ";" or CR after the closing quote
    SIZE_LF = 9  # the LF ending the size line
    DATA = 10  # chunk data, _remaining bytes of it
    DATA_CR = 11  # the CR after chunk data
    DATA_LF = 12  # the LF after chunk data
    TRAILER_START = 13  # a trailer field name's first tchar, or the CR of the empty last line
    TRAILER_NAME = 14  # more tchars or ":"
    TRAILER_VALUE = 15  # field-value bytes or CR
    TRAILER_LF = 16  # the LF ending a trailer field line
    END_LF = 17  # the LF ending the message
    DONE = 18  # the message is complete: later bytes are not the decoder's
    FAILED = 19  # a violation was raised; every later feed raises it again


class ChunkedDecoder:
    """Decodes one chunked message body (RFC 9112 §7.1), fed in pieces split anywhere.

    ``feed(data)`` returns the payload runs found in ``data``, in order: memoryviews into
    ``data`` when it is ``bytes`` (nothing is copied), else ``bytes`` copies, since the
    caller may reuse a writable buffer once ``feed`` returns. ``done`` turns true once the
    last chunk and the trailer section have been consumed; ``tail`` is then the offset in
    the data fed last where the bytes after the message (a pipelined request) begin. While
    the message goes on, ``tail`` is ``len(data)``; once done, ``feed`` consumes nothing: it
    returns [] and sets ``tail`` to 0.

    Strict, because two parsers reading one body differently is request smuggling:

    - a chunk size is 1 or more hex digits, nothing else (no sign, "0x" or whitespace), and
      at most ``max_chunk``;
    - extensions are ``;name`` or ``;name=value``, the value a token or a quoted string, and
      are ignored. The whitespace RFC 9112 tolerates around ";" and "=" is refused: no client
      sends it, and whitespace next to a chunk size is what smuggling probes are made of;
    - the size line, extensions included, holds at most ``max_line`` bytes before its CRLF;
    - every line ends in CRLF: a bare CR or LF is an error, as is chunk data not followed
      by CRLF;
    - the trailer section is read and dropped: lines ``name:value`` (a token name, a field
      value without controls, no obs-fold), each at most ``max_line`` bytes and together at
      most ``max_trailers`` (CRLFs not counted).

    The first violation raises ``BadRequest`` with a short reason, at the first byte that
    makes it certain, wherever the input was split. The decoder then stays failed: every
    later ``feed`` raises the same reason.
    """

    __slots__ = ("_max_chunk", "_max_line", "_max_trailers", "_state", "_remaining", "_line",
                 "_trailer_bytes", "_tail", "_error")  # fmt: skip

    def __init__(self, max_chunk: int = 2**40, max_line: int = 4096, max_trailers: int = 16384) -> None:
        self._max_chunk = _checked_limit("max_chunk", max_chunk, 1)
        self._max_line = _checked_limit("max_line", max_line, 1)
        self._max_trailers = _checked_limit("max_trailers", max_trailers, 0)
        self._state = _Chunked.SIZE_START
        self._remaining = 0  # the chunk size being read, then the data bytes still to come
        self._line = 0  # bytes in the current size or trailer line so far
        self._trailer_bytes = 0
        self._tail = 0
        self._error = ""

    @property
    def done(self) -> bool:
        """The last chunk and the trailer section have been consumed."""
        return self._state is _Chunked.DONE

    @property
    def tail(self) -> int:
        """Where in the data fed last the bytes after the message begin."""
        return self._tail

    def feed(self, data: BytesLike) -> list[memoryview | bytes]:
        """The payload runs in ``data``; raises BadRequest on a framing violation."""
        if self._state is _Chunked.FAILED:
            raise BadRequest(self._error)
        runs: list[memoryview | bytes] = []
        zero_copy = type(data) is bytes
        with memoryview(data).cast("B") as view:
            pos, end = 0, len(view)
            while pos < end and self._state is not _Chunked.DONE:
                if self._state is _Chunked.DATA:
                    stop = min(end, pos + self._remaining)
                    runs.append(view[pos:stop] if zero_copy else bytes(view[pos:stop]))
                    self._remaining -= stop - pos
                    pos = stop
                    if not self._remaining:
                        self._state = _Chunked.DATA_CR
                else:
                    self._state = self._frame_byte(view[pos])
                    pos += 1
        self._tail = pos
        return runs

    def _frame_byte(self, c: int) -> _Chunked:
        """The state after one byte that is not chunk data."""
        state = self._state
        if state <= _Chunked.EXT_QUOTED_END:
            if c == _LF:
                self._fail("bare LF in chunk size line")
            if c != _CR:
                self._line += 1
                if self._line > self._max_line:
                    self._fail("chunk size line too long")
            return self._size_line_byte(state, c)
        if _Chunked.TRAILER_START <= state <= _Chunked.TRAILER_VALUE:
            if c == _LF:
                self._fail("bare LF in trailer section")
            if c != _CR:
                self._line += 1
                self._trailer_bytes += 1
                if self._line > self._max_line:
                    self._fail("trailer line too long")
                if self._trailer_bytes > self._max_trailers:
                    self._fail("trailers too long")
            return self._trailer_byte(state, c)
        # The rest want the CR or LF that ends a line; a line starts after each LF.
        self._line = 0
        if state is _Chunked.SIZE_LF:
            if c != _LF:
                self._fail("bare CR in chunk size line")
            return _Chunked.DATA if self._remaining else _Chunked.TRAILER_START
        if state is _Chunked.DATA_CR:
            if c != _CR:
                self._fail("missing CRLF after chunk data")
            return _Chunked.DATA_LF
        if state is _Chunked.DATA_LF:
            if c != _LF:
                self._fail("missing CRLF after chunk data")
            return _Chunked.SIZE_START
        if c != _LF:  # TRAILER_LF or END_LF
            self._fail("bare CR in trailer section")
        return _Chunked.TRAILER_START if state is _Chunked.TRAILER_LF else _Chunked.DONE

    def _size_line_byte(self, state: _Chunked, c: int) -> _Chunked:
        """The state after one byte of a chunk-size line: size digits, then extensions."""
        if state is _Chunked.SIZE_START or state is _Chunked.SIZE:
            digit = _HEX_VALUES.get(c)
            if digit is not None:
                self._remaining = self._remaining * 16 + digit
                if self._remaining > self._max_chunk:
                    self._fail("chunk too large")
                return _Chunked.SIZE
            if state is _Chunked.SIZE and c == _SEMICOLON:
                return _Chunked.EXT_NAME_START
            if state is _Chunked.SIZE and c == _CR:
                return _Chunked.SIZE_LF
            self._fail("bad chunk size")
        if state is _Chunked.EXT_NAME_START:
            if c in _TCHARS:
                return _Chunked.EXT_NAME
        elif state is _Chunked.EXT_NAME:
            if c in _TCHARS:
                return _Chunked.EXT_NAME
            if c == _EQUALS:
                return _Chunked.EXT_VALUE_START
            if c == _SEMICOLON:
                return _Chunked.EXT_NAME_START
            if c == _CR:
                return _Chunked.SIZE_LF
        elif state is _Chunked.EXT_VALUE_START:
            if c in _TCHARS:
                return _Chunked.EXT_VALUE
            if c == _DQUOTE:
                return _Chunked.EXT_QUOTED
        elif state is _Chunked.EXT_VALUE or state is _Chunked.EXT_QUOTED_END:
            if c in _TCHARS and state is _Chunked.EXT_VALUE:
                return _Chunked.EXT_VALUE
            if c == _SEMICOLON:
                return _Chunked.EXT_NAME_START
            if c == _CR:
                return _Chunked.SIZE_LF
        elif state is _Chunked.EXT_QUOTED:
            if c == _DQUOTE:
                return _Chunked.EXT_QUOTED_END
            if c == _BACKSLASH:
                return _Chunked.EXT_QUOTED_PAIR
            if c in _VALUE_CHARS:
                return _Chunked.EXT_QUOTED
        elif c in _VALUE_CHARS:  # EXT_QUOTED_PAIR
            return _Chunked.EXT_QUOTED
        self._fail("bad chunk extension")

    def _trailer_byte(self, state: _Chunked, c: int) -> _Chunked:
        """The state after one byte of a trailer field line, or of the empty last line."""
        if state is _Chunked.TRAILER_START:
            if c == _CR:
                return _Chunked.END_LF
            if c in _TCHARS:
                return _Chunked.TRAILER_NAME
        elif state is _Chunked.TRAILER_NAME:
            if c in _TCHARS:
                return _Chunked.TRAILER_NAME
            if c == _COLON:
                return _Chunked.TRAILER_VALUE
        else:  # TRAILER_VALUE
            if c == _CR:
                return _Chunked.TRAILER_LF
            if c in _VALUE_CHARS:
                return _Chunked.TRAILER_VALUE
        self._fail("bad trailer")

    def _fail(self, reason: str) -> NoReturn:
        self._state = _Chunked.FAILED
        self._error = reason
        raise BadRequest(reason)


def _checked_limit(name: str, value: int, low: int) -> int:
    if not low <= value <= _LIMIT:
        raise ValueError(f"{name} must be between {low} and 2**63 - 1")
    return value


def encode_chunk(data: _Payload) -> tuple[bytes, _Payload, bytes]:
    """One chunk carrying ``data``, as the pieces ``(size line, data, b"\\r\\n")`` for
    ``transport.writelines``: ``data`` itself is passed through, never copied or joined.

    Raises ValueError for an empty ``data``: a chunk of size 0 would end the body.
    """
    size = memoryview(data).nbytes
    if not size:
        raise ValueError("an empty chunk would end the body")
    return b"%x\r\n" % size, data, _CRLF


def encode_chunks(pieces: Iterable[BytesLike]) -> list[BytesLike]:
    """The pieces of ``encode_chunk`` for every non-empty payload in ``pieces``, in one list,
    so that several payloads go out in one ``transport.writelines`` call."""
    framed: list[BytesLike] = []
    for piece in pieces:
        size = memoryview(piece).nbytes
        if size:
            framed += (b"%x\r\n" % size, piece, _CRLF)
    return framed
