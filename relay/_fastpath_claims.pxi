# 7. A new identity: ClaimPath, ClaimRules, identity_block. Included by _fastpath.pyx.
#
# The twin, relay/_fastpath_py_claims.py, is the spec, with the order of the checks. Here
# the payload (the dict orjson made of the token) is read with C dict lookups, the times
# are compared as C doubles while they are integers a double holds exactly, and a header
# value is checked byte by byte where the twin runs a regular expression.

cimport cython
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.unicode cimport PyUnicode_1BYTE_DATA, PyUnicode_GET_LENGTH

from urllib.parse import quote as _quote

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object text)

cdef long long _MAX_EXP = 9007199254740992  # 2**53, as the twin's MAX_EXP
cdef str _HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "%,")


cdef inline int _claims_fail(str reason, str detail) except -1:
    raise Unauthorized(detail, reason=reason)


@cython.final
cdef class ClaimPath:
    """A claim name or dotted path, resolved against a payload."""

    cdef readonly str name
    cdef readonly tuple steps

    def __init__(self, str name not None):
        self.name = name
        self.steps = tuple(name.split("."))

    def find(self, claims):
        """The value at this path, or None when absent."""
        if type(claims) is dict:
            return self._find(<dict>claims)
        value = claims.get(self.name)
        if value is not None or len(self.steps) == 1:
            return value
        return _walk(claims.get(self.steps[0]), self.steps)

    cdef object _find(self, dict claims):
        cdef object value = claims.get(self.name)
        if value is not None or len(self.steps) == 1:
            return value
        return _walk(claims.get(self.steps[0]), self.steps)


cdef object _walk(object node, tuple steps):
    cdef Py_ssize_t i
    for i in range(1, len(steps)):
        if not isinstance(node, dict):
            return None
        node = node.get(steps[i])
    return node


@cython.final
cdef class ClaimRules:
    """One issuer's claim checks and mapping; built once per issuer."""

    cdef frozenset _audiences
    cdef double _leeway
    cdef ClaimPath _audience
    cdef ClaimPath _subject
    cdef ClaimPath _groups
    cdef ClaimPath _scopes

    def __init__(self, audiences, double leeway, *, str audience not None, str subject not None,
                 str groups not None, str scopes not None):
        self._audiences = frozenset(audiences)
        self._leeway = leeway
        self._audience = ClaimPath(audience)
        self._subject = ClaimPath(subject)
        self._groups = ClaimPath(groups)
        self._scopes = ClaimPath(scopes)

    def check(self, dict payload not None, double now):
        """The caller ``payload`` speaks for at ``now``; see the twin."""
        cdef object exp = payload.get("exp")
        cdef long long exp_value
        cdef int overflow = 0
        cdef double latest = now + self._leeway
        if type(exp) is not int:
            _claims_fail("malformed", "'exp' is missing or not an integer")
        exp_value = PyLong_AsLongLongAndOverflow(exp, &overflow)
        if overflow != 0 or not -_MAX_EXP <= exp_value <= _MAX_EXP:
            exp_value = _MAX_EXP if overflow > 0 or exp_value > 0 else -_MAX_EXP
            exp = exp_value
        if now > <double>exp_value + self._leeway:
            _claims_fail("expired", "token has expired")
        _check_moment(payload, "nbf", latest)
        _check_moment(payload, "iat", latest)
        if not self._for_us(self._audience._find(payload)):
            _claims_fail("audience", f"token is not for this audience ({', '.join(sorted(self._audiences))})")
        subject = self._subject._find(payload)
        if not isinstance(subject, str) or not subject:
            _claims_fail("malformed", f"token has no subject claim '{self._subject.name}'")
        groups = _claim_strings(self._groups, payload, False)
        scopes = _claim_strings(self._scopes, payload, True)
        jti = payload.get("jti")
        return subject, groups, scopes, jti if isinstance(jti, str) else None, exp

    cdef bint _for_us(self, object aud) except -1:
        if isinstance(aud, str):
            return aud in self._audiences
        if isinstance(aud, list):
            for one in <list>aud:
                if isinstance(one, str) and one in self._audiences:
                    return True
        return False


cdef int _check_moment(dict payload, str name, double latest) except -1:
    """An optional NumericDate claim that must not be later than ``latest``."""
    cdef object moment = payload.get(name)
    cdef long long value
    cdef int overflow = 0
    cdef bint future
    if moment is None:
        return 0
    if type(moment) is float:
        future = <double>moment > latest
    elif type(moment) is int:
        value = PyLong_AsLongLongAndOverflow(moment, &overflow)
        if overflow == 0 and -_MAX_EXP <= value <= _MAX_EXP:
            future = <double>value > latest  # exact: the double holds the integer
        else:
            future = moment > latest  # Python's exact comparison of an int with a float
    else:
        return _claims_fail("malformed", f"'{name}' is not a number")
    if future:
        _claims_fail("not_yet_valid", f"token '{name}' is in the future")
    return 0


cdef tuple _claim_strings(ClaimPath path, dict claims, bint split):
    cdef object value = path._find(claims)
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple((<str>value).split()) if split else (value,)
    if isinstance(value, list):
        for one in <list>value:
            if not isinstance(one, str):
                break
        else:
            return tuple(<list>value)
    _claims_fail("malformed", f"claim '{path.name}' is not a string or an array of strings")


cdef bytes _header_value(str text):
    if _plain_text(text):
        return text.encode("ascii")
    return _quote(text, safe=_HEADER_SAFE).encode("ascii")


cdef bint _plain_text(str text) noexcept:
    """Printable ASCII but "%" and ",", with single spaces inside: the twin's _PLAIN."""
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(text)
    cdef const unsigned char* s
    cdef Py_ssize_t i
    cdef unsigned char c
    if n == 0 or not PyUnicode_IS_ASCII(text):
        return False
    s = PyUnicode_1BYTE_DATA(text)
    if s[0] == 32 or s[n - 1] == 32:
        return False
    for i in range(n):
        c = s[i]
        if c == 32:
            if s[i + 1] == 32:  # i < n - 1: the last byte is no space
                return False
        elif c < 0x21 or c > 0x7E or c == 0x25 or c == 0x2C:
            return False
    return True


def identity_block(str subject not None, str issuer not None, tuple groups not None):
    """The X-Relay-Subject, -Issuer and -Groups lines; see the twin."""
    cdef list joined = [_header_value(group) for group in groups]
    return b"".join((
        b"X-Relay-Subject: ", _header_value(subject), b"\r\nX-Relay-Issuer: ", _header_value(issuer),
        b"\r\nX-Relay-Groups: ", b",".join(joined), b"\r\n",
    ))
