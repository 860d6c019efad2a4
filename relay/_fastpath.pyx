"""The compiled fast path.

relay/_fastpath_py.py is the executable spec of everything here: same names, results and
error texts. Read it first; the comments in the included files only explain how they are
fast. relay.fastpath chooses between the two.

One included file per fast-path job, each cimporting what it uses:

1. header scanning, ``scan_headers``: _fastpath_headers.pxi
2. verified-token cache, ``TokenCache``: _fastpath_tokencache.pxi
3. chunked transfer coding (framing), ``encode_chunk`` and ``LAST_CHUNK``: _fastpath_chunked.pxi
4. admission, ``admit_head`` and ``check_request_line``: _fastpath_admission.pxi
5. token decoding, ``Compact``, ``b64url_decode`` and ``parse_compact``: _fastpath_jose.pxi
6. whole heads, ``whole_request`` and ``whole_answer``: _fastpath_whole.pxi
7. a new identity, ``ClaimPath``, ``ClaimRules`` and ``identity_block``: _fastpath_claims.pxi

This file holds what they share: the RFC 9110 character classes and bytes helpers.
"""

from libc.stdint cimport uint64_t
from libc.string cimport memchr, memcmp, memcpy

from relay.errors import BadRequest

__all__ = ["LAST_CHUNK", "ClaimPath", "ClaimRules", "Compact", "HeaderRules", "HeaderScan", "TokenCache",
           "admit_head", "b64url_decode", "check_request_line", "encode_chunk", "identity_block", "parse_compact",
           "scan_headers", "whole_answer", "whole_request"]


# ---------------------------------------------------------------------------------------
# Bytes helpers shared by the jobs
# ---------------------------------------------------------------------------------------

cdef enum CharClass:
    TCHAR = 1        # RFC 9110 §5.6.2 token character
    VALUE_CHAR = 2   # allowed in a field value: HTAB, SP..~ and obs-text, no other CTL or DEL
    PLAIN_CHAR = 4   # HTAB and SP..~: a field value without obs-text (what a whole head takes)

cdef unsigned char _CHAR_CLASS[256]

cdef enum:
    MAX_CONTENT_LENGTH_DIGITS = 18  # a Content-Length relay reads (far above any body limit)


cdef void _init_char_classes() noexcept:
    cdef const char* punctuation = b"!#$%&'*+-.^_`|~"
    cdef int c
    for c in range(256):
        _CHAR_CLASS[c] = 0
        if c == 9 or 32 <= c <= 126 or c >= 128:
            _CHAR_CLASS[c] |= VALUE_CHAR
        if c == 9 or 32 <= c <= 126:
            _CHAR_CLASS[c] |= PLAIN_CHAR
        if 48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122:
            _CHAR_CLASS[c] |= TCHAR
    for c in range(15):
        _CHAR_CLASS[<unsigned char>punctuation[c]] |= TCHAR


_init_char_classes()


cdef inline unsigned char _lower(unsigned char c) noexcept:
    # ASCII only, exactly like bytes.lower()
    return c + 32 if 65 <= c <= 90 else c


cdef inline bint _all_of(const unsigned char* s, Py_ssize_t n, unsigned char char_class) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        if not (_CHAR_CLASS[s[i]] & char_class):
            return False
    return True


cdef inline bint _is_token(const unsigned char* s, Py_ssize_t n) noexcept:
    return n > 0 and _all_of(s, n, TCHAR)


cdef inline bint _is_field_value(const unsigned char* s, Py_ssize_t n) noexcept:
    """No control character but HTAB and no DEL (RFC 9110 §5.5)."""
    return _all_value_bytes(s, n, VALUE_CHAR)


cdef inline bint _is_plain_value(const unsigned char* s, Py_ssize_t n) noexcept:
    """A field value of HTAB and SP..~ only: no obs-text either."""
    return _all_value_bytes(s, n, PLAIN_CHAR)


cdef inline bint _all_value_bytes(const unsigned char* s, Py_ssize_t n, unsigned char char_class) noexcept:
    """Every byte of ``char_class``, VALUE_CHAR or PLAIN_CHAR. Values can be long (bearer
    tokens), so this looks at eight bytes at a time: a word with no byte below 0x20 and
    none equal to 0x7f (nor, for PLAIN_CHAR, above it) passes as is; any other word (a tab,
    say) is checked byte by byte. The word tests can only err towards the byte-by-byte
    check (adding 1 to each byte carries out of one only from 0xff, already flagged)."""
    cdef uint64_t word, outside
    cdef Py_ssize_t i = 0
    while i + 8 <= n:
        memcpy(&word, s + i, 8)
        if char_class == PLAIN_CHAR:
            outside = (word | (word + 0x0101010101010101ULL)) & 0x8080808080808080ULL  # 0x7f and up
        else:
            outside = _has_byte_below(word ^ 0x7f7f7f7f7f7f7f7fULL, 0x0101010101010101ULL)  # DEL
        if _has_byte_below(word, 0x2020202020202020ULL) or outside:
            if not _all_of(s + i, 8, char_class):
                return False
        i += 8
    return _all_of(s + i, n - i, char_class)


cdef inline long long _digits_value(const unsigned char* s, Py_ssize_t n) noexcept:
    """The value of 1 to MAX_CONTENT_LENGTH_DIGITS ASCII digits; -1 when ``s[:n]`` is anything else."""
    cdef long long value = 0
    cdef Py_ssize_t i
    if not 0 < n <= MAX_CONTENT_LENGTH_DIGITS:
        return -1
    for i in range(n):
        if not 48 <= s[i] <= 57:
            return -1
        value = value * 10 + (s[i] - 48)
    return value


cdef inline uint64_t _has_byte_below(uint64_t word, uint64_t limits) noexcept:
    """Nonzero iff some byte of word is below the byte repeated in limits (at most 0x80).

    The classic bit trick: the lowest such byte wraps and sets its top bit, which ~word
    keeps because the byte is below 0x80; without one no byte borrows."""
    return (word - limits) & ~word & 0x8080808080808080ULL


cdef inline bint _is_ows(unsigned char c) noexcept:
    return c == 32 or c == 9


cdef inline bint _lower_equals(const unsigned char* s, const char* lowercase, Py_ssize_t n) noexcept:
    """s[:n].lower() == lowercase[:n]; the caller has checked both are n long."""
    cdef Py_ssize_t i
    for i in range(n):
        if _lower(s[i]) != <unsigned char>lowercase[i]:
            return False
    return True


cdef inline bint _same_name(const unsigned char* a, Py_ssize_t a_len,
                            const unsigned char* b, Py_ssize_t b_len) noexcept:
    """Case-insensitive equality of two names."""
    cdef Py_ssize_t i
    if a_len != b_len:
        return False
    for i in range(a_len):
        if _lower(a[i]) != _lower(b[i]):
            return False
    return True


cdef bytes _as_bytes(object data):
    return data if type(data) is bytes else bytes(memoryview(data))


include "_fastpath_headers.pxi"
include "_fastpath_tokencache.pxi"
include "_fastpath_chunked.pxi"
include "_fastpath_admission.pxi"
include "_fastpath_jose.pxi"
include "_fastpath_whole.pxi"
include "_fastpath_claims.pxi"
