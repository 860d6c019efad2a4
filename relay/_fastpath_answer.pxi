# 6. Whole upstream answers: whole_answer. Included by _fastpath.pyx.
#
# The twin, relay/_fastpath_py_answer.py, is the spec (its regular expressions say what the
# form is). Here the answer is walked once in C; only the header names and values become
# objects, and the body is one slice.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_SIZE

cdef Py_ssize_t _MAX_WHOLE_HEADERS = 64  # as the twin's MAX_WHOLE_HEADERS


cdef inline bint _is_plain(unsigned char c) noexcept:
    """Visible ASCII, space or tab: the bytes of a reason phrase or value taken whole."""
    return c == 9 or 32 <= c <= 126


cdef inline Py_ssize_t _plain_until_crlf(const unsigned char* s, Py_ssize_t at, Py_ssize_t end) noexcept:
    """Where the CRLF ending a run of plain bytes from ``at`` is; -1 if another byte comes first."""
    while at < end and _is_plain(s[at]):
        at += 1
    if at + 1 < end and s[at] == 13 and s[at + 1] == 10:
        return at
    return -1


cdef inline bint _all_digits(const unsigned char* s, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        if not (48 <= s[i] <= 57):
            return False
    return True


cdef inline long long _digits_value(const unsigned char* s, Py_ssize_t n) noexcept:
    cdef long long value = 0
    cdef Py_ssize_t i
    for i in range(n):
        value = value * 10 + (s[i] - 48)
    return value


def whole_answer(bytes data):
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t at, name_end, value_at, value_end, digits
    cdef long long length = -1
    cdef int status
    cdef list headers = []
    # the status line: "HTTP/1.1 " three digits, a space, the reason phrase, CRLF
    if end < 13 or memcmp(s, b"HTTP/1.1 ", 9) != 0 or s[12] != 32:
        return None
    if not (50 <= s[9] <= 53 and 48 <= s[10] <= 57 and 48 <= s[11] <= 57):
        return None
    status = (s[9] - 48) * 100 + (s[10] - 48) * 10 + (s[11] - 48)
    if status == 204 or status == 304:
        return None
    at = _plain_until_crlf(s, 13, end)
    if at < 0:
        return None
    at += 2
    while True:
        if at + 1 < end and s[at] == 13 and s[at + 1] == 10:
            break  # the empty line ending the head
        if PyList_GET_SIZE(headers) == _MAX_WHOLE_HEADERS:
            return None
        name_end = at
        while name_end < end and _CHAR_CLASS[s[name_end]] & TCHAR:
            name_end += 1
        if name_end == at or name_end >= end or s[name_end] != 58:  # ':'
            return None
        value_at = name_end + 1
        while value_at < end and _is_ows(s[value_at]):
            value_at += 1
        value_end = _plain_until_crlf(s, value_at, end)
        if value_end < 0:
            return None
        if name_end - at == 17 and _lower_equals(s + at, b"transfer-encoding", 17):
            return None
        if name_end - at == 14 and _lower_equals(s + at, b"content-length", 14):
            digits = value_end - value_at
            if length >= 0 or digits == 0 or digits > 18 or not _all_digits(s + value_at, digits):
                return None  # several, or not plain digits: httptools decides
            length = _digits_value(s + value_at, digits)
        headers.append((PyBytes_FromStringAndSize(<const char*>s + at, name_end - at),
                        PyBytes_FromStringAndSize(<const char*>s + value_at, value_end - value_at)))
        at = value_end + 2
    at += 2
    if length < 0 or end - at != length:
        return None
    return status, headers, PyBytes_FromStringAndSize(<const char*>s + at, end - at)
