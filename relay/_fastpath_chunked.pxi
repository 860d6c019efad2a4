# 3. The chunked transfer coding (RFC 9112 §7.1), framing side: encode_chunk, LAST_CHUNK.
# Included by _fastpath.pyx.
#
# Decoding is httptools' job on both sides (request bodies, upstream answers); relay only
# frames the bodies it sends upstream in chunks, without copying their payloads.

from cpython.buffer cimport PyBUF_FULL_RO, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_GET_SIZE


cdef enum:
    MAX_SIZE_LINE_DIGITS = 16   # hex digits of the largest Py_ssize_t
    LINE_CACHE_SLOTS = 256      # a power of two

cdef const char* _LOWER_HEX_DIGITS = b"0123456789abcdef"

LAST_CHUNK = b"0\r\n\r\n"
cdef bytes _CRLF = b"\r\n"
# Slot → the size whose line _line_cache holds there. Zero-initialised, which matches no
# size framed (an empty payload is never framed), so an empty slot is never a hit.
cdef Py_ssize_t _line_cache_sizes[LINE_CACHE_SLOTS]
cdef list _line_cache = [None] * LINE_CACHE_SLOTS


def encode_chunk(data):
    """(size line, data, CRLF) for one non-empty payload; see the twin."""
    cdef Py_ssize_t size = _payload_size(data)
    if size == 0:
        raise ValueError("an empty chunk would end the body")
    return _size_line(size), data, _CRLF


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
