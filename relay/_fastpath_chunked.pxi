# 3. The chunked transfer coding (RFC 9112 §7.1): ChunkedDecoder, encode_chunk, encode_chunks,
# LAST_CHUNK. Included by _fastpath.pyx, whose character classes (TCHAR, VALUE_CHAR) it uses.
#
# The decoder is the twin's state machine byte for byte, so both fail at the same byte with
# the same reason wherever the input is split. Chunk data, the bulk of a body, is never
# looked at: a run is one pointer step and one memoryview (or, for writable input, one copy).

cimport cython
from cpython.buffer cimport PyBUF_FULL_RO, PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE


cdef enum ChunkState:
    # In message order, as in the twin's _Chunked, which says what each state expects.
    # Up to EXT_QUOTED_END: a chunk-size line; TRAILER_START to TRAILER_VALUE: a trailer line.
    SIZE_START
    SIZE
    EXT_NAME_START
    EXT_NAME
    EXT_VALUE_START
    EXT_VALUE
    EXT_QUOTED
    EXT_QUOTED_PAIR
    EXT_QUOTED_END
    SIZE_LF
    DATA
    DATA_CR
    DATA_LF
    TRAILER_START
    TRAILER_NAME
    TRAILER_VALUE
    TRAILER_LF
    END_LF
    DONE
    FAILED

cdef enum:
    NOT_HEX = 16                # _HEX_VALUE of a byte that is no hex digit
    MAX_SIZE_LINE_DIGITS = 16   # hex digits of the largest Py_ssize_t
    LINE_CACHE_SLOTS = 256      # a power of two

cdef unsigned char _HEX_VALUE[256]
cdef const char* _LOWER_HEX_DIGITS = b"0123456789abcdef"


cdef void _init_hex_values() noexcept:
    cdef int c
    for c in range(256):
        _HEX_VALUE[c] = NOT_HEX
    for c in range(10):
        _HEX_VALUE[c + 48] = c
    for c in range(6):
        _HEX_VALUE[c + 65] = c + 10  # A-F
        _HEX_VALUE[c + 97] = c + 10  # a-f


_init_hex_values()

LAST_CHUNK = b"0\r\n\r\n"
cdef bytes _CRLF = b"\r\n"
# Slot → the size whose line _line_cache holds there. Zero-initialised, which matches no
# size framed (an empty payload is never framed), so an empty slot is never a hit.
cdef Py_ssize_t _line_cache_sizes[LINE_CACHE_SLOTS]
cdef list _line_cache = [None] * LINE_CACHE_SLOTS
cdef object _LIMIT = 2**63 - 1


@cython.final
cdef class ChunkedDecoder:
    """Decodes one chunked message body as it arrives; see the twin for the contract."""

    cdef long long _max_chunk
    cdef long long _max_line
    cdef long long _max_trailers
    cdef ChunkState _state
    cdef long long _remaining
    cdef long long _line
    cdef long long _trailer_bytes
    cdef Py_ssize_t _tail
    cdef str _error

    def __init__(self, max_chunk=2**40, max_line=4096, max_trailers=16384):
        self._max_chunk = _checked_limit("max_chunk", max_chunk, 1)
        self._max_line = _checked_limit("max_line", max_line, 1)
        self._max_trailers = _checked_limit("max_trailers", max_trailers, 0)
        self._state = SIZE_START
        self._error = ""

    @property
    def done(self):
        return self._state == DONE

    @property
    def tail(self):
        return self._tail

    def feed(self, data):
        cdef Py_buffer buffer
        if self._state == FAILED:
            raise BadRequest(self._error)
        if type(data) is bytes:
            return self._feed(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), data)
        PyObject_GetBuffer(data, &buffer, PyBUF_SIMPLE)
        try:
            return self._feed(<const unsigned char*>buffer.buf, buffer.len, None)
        finally:
            PyBuffer_Release(&buffer)

    cdef list _feed(self, const unsigned char* p, Py_ssize_t n, object source):
        """The runs in p[:n]; they are views into source when given (bytes), else copies."""
        cdef list runs = []
        cdef object view = None
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t take
        while pos < n:
            if self._state == DATA:
                take = n - pos if self._remaining > n - pos else <Py_ssize_t>self._remaining
                if source is None:
                    runs.append(PyBytes_FromStringAndSize(<const char*>p + pos, take))
                else:
                    if view is None:
                        view = memoryview(source)
                    # a run that is all of data (the usual read inside a large chunk) is the
                    # view itself: no slice object, no second memoryview
                    runs.append(view if take == n else view[pos:pos + take])
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = DATA_CR
            elif self._state == DONE:
                break
            else:
                self._state = self._frame_byte(p[pos])
                pos += 1
        self._tail = pos
        return runs

    cdef inline ChunkState _frame_byte(self, unsigned char c) except FAILED:
        cdef ChunkState state = self._state
        if state <= EXT_QUOTED_END:
            if c == b'\n':
                self._fail("bare LF in chunk size line")
            if c != b'\r':
                self._line += 1
                if self._line > self._max_line:
                    self._fail("chunk size line too long")
            return self._size_line_byte(state, c)
        if TRAILER_START <= state <= TRAILER_VALUE:
            if c == b'\n':
                self._fail("bare LF in trailer section")
            if c != b'\r':
                self._line += 1
                self._trailer_bytes += 1
                if self._line > self._max_line:
                    self._fail("trailer line too long")
                if self._trailer_bytes > self._max_trailers:
                    self._fail("trailers too long")
            return self._trailer_byte(state, c)
        self._line = 0
        if state == SIZE_LF:
            if c != b'\n':
                self._fail("bare CR in chunk size line")
            return DATA if self._remaining else TRAILER_START
        if state == DATA_CR:
            if c != b'\r':
                self._fail("missing CRLF after chunk data")
            return DATA_LF
        if state == DATA_LF:
            if c != b'\n':
                self._fail("missing CRLF after chunk data")
            return SIZE_START
        if c != b'\n':
            self._fail("bare CR in trailer section")
        return TRAILER_START if state == TRAILER_LF else DONE

    cdef inline ChunkState _size_line_byte(self, ChunkState state, unsigned char c) except FAILED:
        cdef unsigned char digit
        if state == SIZE_START or state == SIZE:
            digit = _HEX_VALUE[c]
            if digit != NOT_HEX:
                # checked before the multiplication too, which therefore cannot overflow
                if self._remaining > (self._max_chunk >> 4):
                    self._fail("chunk too large")
                self._remaining = self._remaining * 16 + digit
                if self._remaining > self._max_chunk:
                    self._fail("chunk too large")
                return SIZE
            if state == SIZE and c == b';':
                return EXT_NAME_START
            if state == SIZE and c == b'\r':
                return SIZE_LF
            self._fail("bad chunk size")
        if state == EXT_NAME_START:
            if _CHAR_CLASS[c] & TCHAR:
                return EXT_NAME
        elif state == EXT_NAME:
            if _CHAR_CLASS[c] & TCHAR:
                return EXT_NAME
            if c == b'=':
                return EXT_VALUE_START
            if c == b';':
                return EXT_NAME_START
            if c == b'\r':
                return SIZE_LF
        elif state == EXT_VALUE_START:
            if _CHAR_CLASS[c] & TCHAR:
                return EXT_VALUE
            if c == b'"':
                return EXT_QUOTED
        elif state == EXT_VALUE or state == EXT_QUOTED_END:
            if _CHAR_CLASS[c] & TCHAR and state == EXT_VALUE:
                return EXT_VALUE
            if c == b';':
                return EXT_NAME_START
            if c == b'\r':
                return SIZE_LF
        elif state == EXT_QUOTED:
            if c == b'"':
                return EXT_QUOTED_END
            if c == b'\\':
                return EXT_QUOTED_PAIR
            if _CHAR_CLASS[c] & VALUE_CHAR:
                return EXT_QUOTED
        elif _CHAR_CLASS[c] & VALUE_CHAR:  # EXT_QUOTED_PAIR
            return EXT_QUOTED
        self._fail("bad chunk extension")

    cdef inline ChunkState _trailer_byte(self, ChunkState state, unsigned char c) except FAILED:
        if state == TRAILER_START:
            if c == b'\r':
                return END_LF
            if _CHAR_CLASS[c] & TCHAR:
                return TRAILER_NAME
        elif state == TRAILER_NAME:
            if _CHAR_CLASS[c] & TCHAR:
                return TRAILER_NAME
            if c == b':':
                return TRAILER_VALUE
        else:  # TRAILER_VALUE
            if c == b'\r':
                return TRAILER_LF
            if _CHAR_CLASS[c] & VALUE_CHAR:
                return TRAILER_VALUE
        self._fail("bad trailer")

    cdef int _fail(self, str reason) except -1:
        self._state = FAILED
        self._error = reason
        raise BadRequest(reason)


cdef long long _checked_limit(str name, object value, long long low) except? -1:
    if not low <= value <= _LIMIT:
        raise ValueError(f"{name} must be between {low} and 2**63 - 1")
    return value


def encode_chunk(data):
    """(size line, data, CRLF) for one non-empty payload; see the twin."""
    cdef Py_ssize_t size = _payload_size(data)
    if size == 0:
        raise ValueError("an empty chunk would end the body")
    return _size_line(size), data, _CRLF


def encode_chunks(pieces):
    """encode_chunk's pieces for every non-empty payload, in one list; see the twin."""
    cdef list framed
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t size
    if type(pieces) is not list and type(pieces) is not tuple:
        pieces = list(pieces)
    framed = [None] * (3 * len(pieces))  # the one allocation; trimmed if some were empty
    for piece in pieces:
        size = _payload_size(piece)
        if size:
            framed[i] = _size_line(size)
            framed[i + 1] = piece
            framed[i + 2] = _CRLF
            i += 3
    if i < len(framed):
        del framed[i:]
    return framed


cdef inline Py_ssize_t _payload_size(object data) except -1:
    """Bytes in data (a memoryview's nbytes, not its len)."""
    cdef Py_buffer buffer
    cdef Py_ssize_t size
    if type(data) is bytes:
        return PyBytes_GET_SIZE(data)
    if type(data) is bytearray:
        return PyByteArray_GET_SIZE(data)
    PyObject_GetBuffer(data, &buffer, PyBUF_FULL_RO)
    size = buffer.len
    PyBuffer_Release(&buffer)
    return size


cdef inline bytes _size_line(Py_ssize_t size):
    """b"%x\r\n" % size. Bodies stream in reads of a few recurring sizes (full buffers), so
    a small direct-mapped cache of lines spares most framings their allocation."""
    cdef Py_ssize_t slot = (size ^ (size >> 8) ^ (size >> 16)) & (LINE_CACHE_SLOTS - 1)
    cdef bytes line
    if _line_cache_sizes[slot] == size:
        return <bytes>_line_cache[slot]
    line = _format_size_line(size)
    _line_cache[slot] = line
    _line_cache_sizes[slot] = size
    return line


cdef bytes _format_size_line(Py_ssize_t size):
    """b"%x\r\n" % size, written backwards into a stack buffer and copied once."""
    cdef char line[MAX_SIZE_LINE_DIGITS + 2]
    cdef Py_ssize_t start = MAX_SIZE_LINE_DIGITS
    line[MAX_SIZE_LINE_DIGITS] = b'\r'
    line[MAX_SIZE_LINE_DIGITS + 1] = b'\n'
    while True:
        start -= 1
        line[start] = _LOWER_HEX_DIGITS[size & 15]
        size >>= 4
        if size == 0:
            return PyBytes_FromStringAndSize(line + start, MAX_SIZE_LINE_DIGITS + 2 - start)
