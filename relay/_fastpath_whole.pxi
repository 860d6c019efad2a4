# 6. Whole heads: whole_request and whole_answer. Included by _fastpath.pyx.
#
# The twin, relay/_fastpath_py_whole.py, is the spec (its regular expressions say what the
# forms are). Here each message is walked once in C; only the target, the header names
# and values become objects, and an answer's body is one slice.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_SIZE

cdef Py_ssize_t _MAX_WHOLE_HEADERS = 64  # as the twin's MAX_WHOLE_HEADERS


cdef inline bint _is_crlf(const unsigned char* s, Py_ssize_t at, Py_ssize_t end) noexcept:
    return at + 1 < end and s[at] == 13 and s[at + 1] == 10


cdef inline Py_ssize_t _plain_until_crlf(const unsigned char* s, Py_ssize_t at, Py_ssize_t end) noexcept:
    """Where the CRLF ending a run of plain bytes (HTAB, SP..~) from ``at`` is; -1 if
    another byte comes first."""
    cdef const unsigned char* cr = <const unsigned char*>memchr(s + at, 13, end - at)
    cdef Py_ssize_t cr_at
    if cr == NULL:
        return -1
    cr_at = cr - s
    return cr_at if _is_crlf(s, cr_at, end) and _is_plain_value(s + at, cr_at - at) else -1


cdef struct WholeFields:
    # what the header lines told, beyond the pairs
    Py_ssize_t head_size     # names and values, 4 more a header
    long long content_length  # -1: none; -2: several, or not plain digits
    bint transfer_encoding
    bint upgrade
    int connection           # 0: none; 1: keep-alive; 2: close; -1: anything else


cdef Py_ssize_t _read_fields(const unsigned char* s, Py_ssize_t at, Py_ssize_t end, list headers,
                             WholeFields* seen) except -2:
    """Append the header lines from ``at`` to ``headers`` up to the empty line, and return
    where the head ends; -1 when a line is not of the plain form."""
    cdef Py_ssize_t name_end, value_at, value_end, name_len, value_len
    cdef long long length
    while not _is_crlf(s, at, end):
        if PyList_GET_SIZE(headers) == _MAX_WHOLE_HEADERS:
            return -1
        name_end = at
        while name_end < end and _CHAR_CLASS[s[name_end]] & TCHAR:
            name_end += 1
        if name_end == at or name_end >= end or s[name_end] != 58:  # ':'
            return -1
        value_at = name_end + 1
        while value_at < end and _is_ows(s[value_at]):
            value_at += 1
        value_end = _plain_until_crlf(s, value_at, end)
        if value_end < 0:
            return -1
        name_len = name_end - at
        value_len = value_end - value_at
        if name_len == 14 and _lower_equals(s + at, b"content-length", 14):
            length = _digits_value(s + value_at, value_len)
            # several, or not plain digits: httptools decides
            seen.content_length = length if seen.content_length == -1 and length >= 0 else -2
        elif name_len == 17 and _lower_equals(s + at, b"transfer-encoding", 17):
            seen.transfer_encoding = True
        elif name_len == 7 and _lower_equals(s + at, b"upgrade", 7):
            seen.upgrade = True
        elif name_len == 10 and _lower_equals(s + at, b"connection", 10):
            if value_len == 5 and _lower_equals(s + value_at, b"close", 5):
                seen.connection = 2 if seen.connection >= 0 else -1
            elif value_len == 10 and _lower_equals(s + value_at, b"keep-alive", 10):
                if seen.connection == 0:
                    seen.connection = 1
            else:
                seen.connection = -1
        seen.head_size += name_len + value_len + 4
        headers.append((PyBytes_FromStringAndSize(<const char*>s + at, name_len),
                        PyBytes_FromStringAndSize(<const char*>s + value_at, value_len)))
        at = value_end + 2
    return at + 2


def whole_request(bytes data):
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t url_at, url_end, head_end
    cdef WholeFields seen = WholeFields(0, -1, False, False, 0)
    cdef list headers = []
    cdef object method
    # the request line: "GET " or "HEAD ", the target, " HTTP/1.1" CRLF
    if end >= 4 and memcmp(s, b"GET ", 4) == 0:
        method, url_at = b"GET", 4
    elif end >= 5 and memcmp(s, b"HEAD ", 5) == 0:
        method, url_at = b"HEAD", 5
    else:
        return None
    url_end = url_at
    while url_end < end and 0x21 <= s[url_end] <= 0x7e:
        url_end += 1
    if url_end == url_at or end - url_end < 11 or memcmp(s + url_end, b" HTTP/1.1\r\n", 11) != 0:
        return None
    head_end = _read_fields(s, url_end + 11, end, headers, &seen)
    if (head_end != end or seen.content_length != -1 or seen.transfer_encoding or seen.upgrade
            or seen.connection < 0):
        return None  # a body, a pipelined request or a reading of its own: httptools
    return (method, PyBytes_FromStringAndSize(<const char*>s + url_at, url_end - url_at), headers,
            seen.head_size + url_end - url_at, seen.connection != 2)


def whole_answer(bytes data):
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t at
    cdef WholeFields seen = WholeFields(0, -1, False, False, 0)
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
    at = _read_fields(s, at + 2, end, headers, &seen)
    if at < 0 or seen.transfer_encoding or seen.content_length < 0 or end - at != seen.content_length:
        return None  # no length, several, not plain digits, or not exactly the body: httptools
    return status, headers, PyBytes_FromStringAndSize(<const char*>s + at, end - at)
