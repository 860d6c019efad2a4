# 5. Tokens nobody has seen, taken apart: Compact, b64url_decode, parse_compact. Included by _fastpath.pyx.
#
# The twin, relay/_fastpath_py_jose.py, is the spec. Here the token is walked once in C:
# the dots are found with memchr, each segment is decoded straight into its bytes object
# by a table lookup per character, and orjson parses those bytes; no segment is sliced or
# translated on the way.

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize

import orjson

from relay.errors import Unauthorized

cdef object _json_loads = orjson.loads
cdef tuple _KEY_CARRYING = ("jku", "jwk", "x5u", "x5c")
cdef unsigned char _B64URL_INVALID = 0x40  # a bit no 6-bit value has

# each base64url character's 6-bit value; _B64URL_INVALID for any other byte
cdef unsigned char _B64URL_VALUE[256]


cdef void _init_b64url_values() noexcept:
    cdef const char* alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    cdef int c
    for c in range(256):
        _B64URL_VALUE[c] = _B64URL_INVALID
    for c in range(64):
        _B64URL_VALUE[<unsigned char>alphabet[c]] = c


_init_b64url_values()


@cython.final
cdef class Compact:
    """A structurally valid JWS: decoded header and payload, the bytes that were signed."""

    cdef readonly dict header
    cdef readonly dict payload
    cdef readonly bytes signing_input
    cdef readonly bytes signature

    def __init__(self, dict header, dict payload, bytes signing_input, bytes signature):
        self.header = header
        self.payload = payload
        self.signing_input = signing_input
        self.signature = signature


cdef bytes _decode_b64url(const unsigned char* s, Py_ssize_t n):
    """s[:n] decoded; raises ValueError unless it is canonical unpadded base64url."""
    cdef Py_ssize_t rest = n % 4
    cdef Py_ssize_t full = n - rest
    cdef Py_ssize_t i = 0
    cdef unsigned char a, b, c, d, seen = 0
    cdef bytes out
    cdef unsigned char* o
    if rest == 1:
        raise ValueError("not canonical base64url")
    out = PyBytes_FromStringAndSize(NULL, full // 4 * 3 + (rest - 1 if rest else 0))
    o = <unsigned char*>PyBytes_AS_STRING(out)
    while i < full:
        a = _B64URL_VALUE[s[i]]
        b = _B64URL_VALUE[s[i + 1]]
        c = _B64URL_VALUE[s[i + 2]]
        d = _B64URL_VALUE[s[i + 3]]
        seen |= a | b | c | d  # an invalid character leaves its bit here
        o[0] = (a << 2) | (b >> 4)
        o[1] = (b << 4) | (c >> 2)
        o[2] = (c << 6) | d
        o += 3
        i += 4
    if rest:
        a = _B64URL_VALUE[s[i]]
        b = _B64URL_VALUE[s[i + 1]]
        c = _B64URL_VALUE[s[i + 2]] if rest == 3 else 0
        seen |= a | b | c
        o[0] = (a << 2) | (b >> 4)
        if rest == 3:
            o[1] = (b << 4) | (c >> 2)
    if seen & _B64URL_INVALID:
        raise ValueError("not canonical base64url")
    # the last character's unused low bits must be zero: one spelling per byte string
    if (rest == 2 and b & 0x0F) or (rest == 3 and c & 0x03):
        raise ValueError("not canonical base64url (stray low bits)")
    return out


def b64url_decode(bytes segment not None):
    return _decode_b64url(<const unsigned char*>PyBytes_AS_STRING(segment), len(segment))


cdef dict _json_object(const unsigned char* s, Py_ssize_t n, str part):
    cdef object value
    try:
        value = _json_loads(_decode_b64url(s, n))
    except ValueError:  # orjson.JSONDecodeError is one
        _malformed(f"token {part} is not base64url JSON")
    if type(value) is not dict:  # orjson makes no dict subclasses
        _malformed(f"token {part} is not a JSON object")
    return <dict>value


cdef int _malformed(str detail) except -1:
    raise Unauthorized(detail, reason="malformed")


def parse_compact(bytes token not None):
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(token)
    cdef Py_ssize_t n = len(token)
    cdef Py_ssize_t dots[2]
    cdef Py_ssize_t count = 0, at = 0
    cdef const unsigned char* found
    cdef dict header, payload
    cdef bytes signature
    cdef Compact compact
    while True:
        found = <const unsigned char*>memchr(s + at, b".", n - at)
        if found == NULL:
            break
        if count < 2:
            dots[count] = found - s
        count += 1
        at = found - s + 1
    if count != 2:
        _malformed(f"a signed token has 3 dot-separated parts, this one has {count + 1}")
    header = _json_object(s, dots[0], "header")
    if not isinstance(header.get("alg"), str):
        _malformed("token header has no 'alg'")
    if not isinstance(header.get("kid", ""), str):
        _malformed("token header 'kid' is not a string")
    for name in _KEY_CARRYING:
        if name in header:
            _malformed(f"token header names its own key ('{name}'); keys come from the issuer only")
    if "crit" in header:
        _malformed("token header lists critical extensions ('crit') relay does not implement")
    payload = _json_object(s + dots[0] + 1, dots[1] - dots[0] - 1, "payload")
    try:
        signature = _decode_b64url(s + dots[1] + 1, n - dots[1] - 1)
    except ValueError:
        _malformed("token signature is not base64url")
    compact = Compact.__new__(Compact)
    compact.header = header
    compact.payload = payload
    compact.signing_input = PyBytes_FromStringAndSize(<const char*>s, dots[1])
    compact.signature = signature
    return compact
