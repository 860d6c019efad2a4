# 1. Header scanning: scan_headers, HeaderRules and HeaderScan. Included by _fastpath.pyx,
# whose shared helpers (character classes, _is_field_value, _lower_equals, ...) it uses.

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.tuple cimport PyTuple_GET_SIZE
from libc.string cimport memcpy


cdef enum Kind:
    # Kinds up to LAST_FORWARDABLE reach `forward` unless dropped.
    OTHER
    AUTHORIZATION
    IDEMPOTENCY_KEY
    LAST_FORWARDABLE = IDEMPOTENCY_KEY
    # Never forwarded: hop-by-hop, set by relay, X-Relay-*, or dropped by the caller.
    DROPPED
    HOST
    CONTENT_LENGTH
    TRANSFER_ENCODING
    CONNECTION
    UPGRADE
    EXPECT
    FORWARDED_FOR

cdef enum:
    SMALL_HEADER_COUNT = 64     # the fields of up to this many headers live on the C stack


# Header names compared folded, as CGI, WSGI, Rack and PHP upstreams read them: ASCII case
# and `_` versus `-` ignored. One table lookup per byte, like _lower.
cdef unsigned char _FOLD[256]


cdef void _init_fold() noexcept:
    cdef int c
    for c in range(256):
        _FOLD[c] = _lower(c)
    _FOLD[95] = 45  # `_` reads as `-`


_init_fold()


cdef inline bint _fold_equals(const unsigned char* s, const char* folded, Py_ssize_t n) noexcept:
    """s[:n] folded == folded[:n]; the caller has checked both are n long."""
    cdef Py_ssize_t i
    for i in range(n):
        if _FOLD[s[i]] != <unsigned char>folded[i]:
            return False
    return True


cdef inline int _check_name(const unsigned char* s, Py_ssize_t n) noexcept:
    """-1 unless s[:n] is a token; else 1 when it holds a `_`, 0 when not (one pass)."""
    cdef Py_ssize_t i
    cdef int underscore = 0
    if n == 0:
        return -1
    for i in range(n):
        if not (_CHAR_CLASS[s[i]] & TCHAR):
            return -1
        if s[i] == 95:
            underscore = 1
    return underscore


cdef Kind _classify(const unsigned char* s, Py_ssize_t n) noexcept:
    """The kind of a header from its (token) name, folded; a switch on the length keeps it
    short. A name with `_` gets the kind of the name it imitates."""
    if n >= 8 and _fold_equals(s, b"x-relay-", 8):
        return DROPPED
    if n == 2:
        if _fold_equals(s, b"te", 2):
            return DROPPED
    elif n == 4:
        if _fold_equals(s, b"host", 4):
            return HOST
    elif n == 6:
        if _fold_equals(s, b"expect", 6):
            return EXPECT
    elif n == 7:
        if _fold_equals(s, b"upgrade", 7):
            return UPGRADE
        if _fold_equals(s, b"trailer", 7):
            return DROPPED
    elif n == 10:
        if _fold_equals(s, b"connection", 10):
            return CONNECTION
        if _fold_equals(s, b"keep-alive", 10):
            return DROPPED
    elif n == 13:
        if _fold_equals(s, b"authorization", 13):
            return AUTHORIZATION
    elif n == 14:
        if _fold_equals(s, b"content-length", 14):
            return CONTENT_LENGTH
    elif n == 15:
        if _fold_equals(s, b"idempotency-key", 15):
            return IDEMPOTENCY_KEY
        if _fold_equals(s, b"x-forwarded-for", 15):
            return FORWARDED_FOR
    elif n == 16:
        if _fold_equals(s, b"proxy-connection", 16):
            return DROPPED
    elif n == 17:
        if _fold_equals(s, b"transfer-encoding", 17):
            return TRANSFER_ENCODING
    elif n == 19:
        if _fold_equals(s, b"proxy-authorization", 19):
            return DROPPED
    return OTHER


cdef struct Field:
    # Pointers borrowed from the bytes in the list being scanned, which outlives the scan.
    const unsigned char* name
    Py_ssize_t name_len
    const unsigned char* value   # OWS-trimmed
    Py_ssize_t value_len
    Kind kind


cdef struct Pattern:
    # A folded name or prefix, borrowed from a bytes object its HeaderRules holds.
    const char* name
    Py_ssize_t len
    bint prefix


@cython.final
cdef class HeaderRules:
    """Which headers scan_headers strips; see relay/_fastpath_py.py."""

    cdef readonly frozenset names
    cdef readonly tuple prefixes
    cdef readonly bint underscores
    # names, then prefixes, as C pointers: a request's scan reads no Python object here
    cdef Pattern* _patterns
    cdef Py_ssize_t _count

    def __init__(self, names, prefixes, *, underscores):
        cdef tuple folded_prefixes = tuple([_fold(_checked(prefix)) for prefix in prefixes])
        cdef frozenset folded_names = frozenset([_fold(_checked(name)) for name in names])
        cdef Py_ssize_t count = len(folded_names) + len(folded_prefixes)
        cdef Pattern* patterns
        cdef Py_ssize_t i = 0
        cdef bytes pattern
        if b"" in folded_prefixes:
            raise ValueError("an empty prefix would strip every header")
        patterns = <Pattern*>PyMem_Malloc((count or 1) * sizeof(Pattern))
        if patterns == NULL:
            raise MemoryError()
        for pattern in folded_names:
            patterns[i] = Pattern(PyBytes_AS_STRING(pattern), PyBytes_GET_SIZE(pattern), False)
            i += 1
        for pattern in folded_prefixes:
            patterns[i] = Pattern(PyBytes_AS_STRING(pattern), PyBytes_GET_SIZE(pattern), True)
            i += 1
        PyMem_Free(self._patterns)
        self._patterns = patterns
        self._count = count
        self.names = folded_names
        self.prefixes = folded_prefixes
        self.underscores = underscores

    def __dealloc__(self):
        PyMem_Free(self._patterns)

    cdef bint _strips(self, const unsigned char* name, Py_ssize_t n) noexcept:
        """Whether a header of this name is stripped: the length rules out most at once."""
        cdef Py_ssize_t i
        cdef Pattern* p
        for i in range(self._count):
            p = &self._patterns[i]
            if (n == p.len or (p.prefix and n > p.len)) and _fold_equals(name, p.name, p.len):
                return True
        return False


cdef bytes _fold(bytes name):
    return name.lower().replace(b"_", b"-")


cdef bytes _checked(object name):
    if type(name) is not bytes:
        raise TypeError("header rules hold bytes")
    return <bytes>name


cdef struct Span:
    Py_ssize_t start
    Py_ssize_t end


cdef inline void _read_field(tuple pair, Field* f) noexcept:
    cdef bytes name = <bytes>pair[0]
    cdef bytes value = <bytes>pair[1]
    cdef Py_ssize_t start = 0
    cdef Py_ssize_t end = PyBytes_GET_SIZE(value)
    f.name = <const unsigned char*>PyBytes_AS_STRING(name)
    f.name_len = PyBytes_GET_SIZE(name)
    f.value = <const unsigned char*>PyBytes_AS_STRING(value)
    while start < end and _is_ows(f.value[start]):
        start += 1
    while end > start and _is_ows(f.value[end - 1]):
        end -= 1
    f.value += start
    f.value_len = end - start


cdef inline bytes _value_bytes(tuple pair, Field* f):
    """The trimmed value as bytes: the caller's object itself unless trimming changed it."""
    cdef bytes value = <bytes>pair[1]
    if f.value_len == PyBytes_GET_SIZE(value):
        return value
    return PyBytes_FromStringAndSize(<const char*>f.value, f.value_len)


cdef inline Py_ssize_t _list_element(const unsigned char* s, Py_ssize_t n, Py_ssize_t pos,
                                     Span* out) noexcept:
    """Puts the OWS-trimmed comma-separated element starting at pos in out; returns where
    the next one starts, n + 1 after the last (so an empty value has one empty element)."""
    cdef Py_ssize_t end = pos
    while end < n and s[end] != b',':
        end += 1
    out.start = pos
    out.end = end
    while out.start < out.end and _is_ows(s[out.start]):
        out.start += 1
    while out.end > out.start and _is_ows(s[out.end - 1]):
        out.end -= 1
    return end + 1


@cython.final
cdef class HeaderScan:
    """What relay needs from one request's header block; see relay/_fastpath_py.py."""

    cdef readonly bytes host
    cdef readonly bytes authorization
    cdef readonly long long content_length
    cdef readonly bint chunked
    cdef readonly bint close
    cdef readonly bint keep_alive
    cdef readonly bint upgrade
    cdef readonly bytes expect
    cdef readonly bytes idempotency_key
    cdef readonly bytes forwarded_for
    cdef readonly bytes forward

    cdef int _take(self, tuple pair, Field* f) except -1:
        """Applies one header of a kind relay reads to the scan, enforcing its rules."""
        if f.kind == HOST:
            if self.host is not None:
                raise BadRequest("duplicate Host")
            self.host = _value_bytes(pair, f)
        elif f.kind == AUTHORIZATION:
            if self.authorization is not None:
                raise BadRequest("duplicate Authorization")
            self.authorization = _value_bytes(pair, f)
        elif f.kind == IDEMPOTENCY_KEY:
            if self.idempotency_key is not None:
                raise BadRequest("duplicate Idempotency-Key")
            self.idempotency_key = _value_bytes(pair, f)
        elif f.kind == CONTENT_LENGTH:
            if self.content_length >= 0:
                raise BadRequest("duplicate Content-Length")
            self.content_length = _digits_value(f.value, f.value_len)
            if self.content_length < 0:
                raise BadRequest("bad Content-Length")
        elif f.kind == TRANSFER_ENCODING:
            if self.chunked:
                raise BadRequest("duplicate Transfer-Encoding")
            if not (f.value_len == 7 and _lower_equals(f.value, b"chunked", 7)):
                raise BadRequest("unsupported Transfer-Encoding")
            self.chunked = True
        elif f.kind == CONNECTION:
            self._connection(f)
        elif f.kind == UPGRADE:
            self.upgrade = True
        elif f.kind == EXPECT:
            # rare (lighttpd answers Expect itself): plain Python is fine here
            if self.expect is None:
                self.expect = _value_bytes(pair, f).lower()
            else:
                self.expect = self.expect + b", " + _value_bytes(pair, f).lower()
        elif f.kind == FORWARDED_FOR:
            self._forwarded_for(pair, f)
        return 0

    cdef int _connection(self, Field* f) except -1:
        """Reads one Connection value's options into close / keep_alive / upgrade."""
        cdef Span el
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t n
        while pos <= f.value_len:
            pos = _list_element(f.value, f.value_len, pos, &el)
            n = el.end - el.start
            if n == 0:  # RFC 9110 §5.6.1.2: recipients accept empty list elements
                continue
            if not _is_token(f.value + el.start, n):
                raise BadRequest("bad Connection")
            if n == 5 and _lower_equals(f.value + el.start, b"close", 5):
                self.close = True
            elif n == 10 and _lower_equals(f.value + el.start, b"keep-alive", 10):
                self.keep_alive = True
            elif n == 7 and _lower_equals(f.value + el.start, b"upgrade", 7):
                self.upgrade = True
        return 0

    cdef int _forwarded_for(self, tuple pair, Field* f) except -1:
        # Only the element the nearest proxy appended is trustworthy; an empty one means
        # the chain is malformed, so trust none rather than an earlier, client-made one.
        cdef Py_ssize_t start = f.value_len
        cdef Py_ssize_t end = f.value_len
        while start > 0 and f.value[start - 1] != b',':
            start -= 1
        while start < end and _is_ows(f.value[start]):
            start += 1
        if start == end:
            self.forwarded_for = None
        elif start == 0:
            self.forwarded_for = _value_bytes(pair, f)
        else:
            self.forwarded_for = PyBytes_FromStringAndSize(<const char*>f.value + start, end - start)
        return 0


def scan_headers(headers, HeaderRules rules not None):
    """Check one request's headers and extract what relay needs; see relay/_fastpath_py.py."""
    cdef HeaderScan scan
    if type(headers) is list:
        scan = _scan(<list>headers, rules)
        if scan is not None:
            return scan
    # Rare: the caller passed bytearray / memoryview or another iterable. Normalise once.
    return _scan([(_as_bytes(name), _as_bytes(value)) for name, value in headers], rules)


cdef HeaderScan _scan(list headers, HeaderRules rules):
    """Does the work; returns None, having raised nothing, on a pair that is not two bytes."""
    cdef Py_ssize_t n = len(headers)
    cdef Field small[SMALL_HEADER_COUNT]
    cdef Field* fields = small
    if n > SMALL_HEADER_COUNT:
        fields = <Field*>PyMem_Malloc(n * sizeof(Field))
        if fields == NULL:
            raise MemoryError()
    try:
        return _scan_fields(headers, rules, fields)
    finally:
        if fields != small:
            PyMem_Free(fields)


cdef HeaderScan _scan_fields(list headers, HeaderRules rules, Field* fields):
    """Reads the headers into fields (scratch space for as many) and scans them."""
    cdef Py_ssize_t n = len(headers)
    cdef HeaderScan scan = HeaderScan.__new__(HeaderScan)
    cdef bint has_connection = False
    cdef int underscore
    cdef Py_ssize_t i
    cdef object pair
    cdef Field* f
    scan.content_length = -1

    # Check every header, read the ones relay needs, mark the ones not forwarded.
    for i in range(n):
        pair = headers[i]
        if (type(pair) is not tuple or PyTuple_GET_SIZE(pair) != 2
                or type((<tuple>pair)[0]) is not bytes or type((<tuple>pair)[1]) is not bytes):
            return None
        f = &fields[i]
        _read_field(<tuple>pair, f)
        underscore = _check_name(f.name, f.name_len)
        if underscore < 0:
            raise BadRequest("bad header name")
        if not _is_field_value(f.value, f.value_len):
            raise BadRequest("bad header value")
        f.kind = _classify(f.name, f.name_len)
        if underscore:
            # never read; kept only when allowed and not imitating a header relay knows
            if not rules.underscores or f.kind != OTHER:
                f.kind = DROPPED
        elif f.kind != OTHER and f.kind != DROPPED:
            scan._take(<tuple>pair, f)
            has_connection = has_connection or f.kind == CONNECTION
        if f.kind <= LAST_FORWARDABLE and rules._strips(f.name, f.name_len):
            f.kind = DROPPED
    if scan.content_length >= 0 and scan.chunked:
        raise BadRequest("Content-Length with Transfer-Encoding")

    # Only when needed, a second look: drop what the Connection options name.
    if has_connection:
        _mark_connection_options(fields, n)

    scan.forward = _join_forwarded(fields, n)
    return scan


cdef void _mark_connection_options(Field* fields, Py_ssize_t n) noexcept:
    """Drops every header a Connection option names (RFC 9110 §7.6.1)."""
    cdef Py_ssize_t c, i, pos
    cdef Span el
    for c in range(n):
        if fields[c].kind != CONNECTION:
            continue
        pos = 0
        while pos <= fields[c].value_len:
            pos = _list_element(fields[c].value, fields[c].value_len, pos, &el)
            for i in range(n):
                if fields[i].kind <= LAST_FORWARDABLE and _same_name(
                        fields[i].name, fields[i].name_len,
                        fields[c].value + el.start, el.end - el.start):
                    fields[i].kind = DROPPED


cdef bytes _join_forwarded(Field* fields, Py_ssize_t n):
    """`Name: value\r\n` for every forwardable header, sized first and allocated once."""
    cdef Py_ssize_t i
    cdef Py_ssize_t size = 0
    cdef bytes out
    cdef char* p
    for i in range(n):
        if fields[i].kind <= LAST_FORWARDABLE:
            size += fields[i].name_len + fields[i].value_len + 4
    out = PyBytes_FromStringAndSize(NULL, size)
    p = PyBytes_AS_STRING(out)
    for i in range(n):
        if fields[i].kind <= LAST_FORWARDABLE:
            memcpy(p, fields[i].name, fields[i].name_len)
            p += fields[i].name_len
            p[0] = b':'
            p[1] = b' '
            p += 2
            memcpy(p, fields[i].value, fields[i].value_len)
            p += fields[i].value_len
            p[0] = b'\r'
            p[1] = b'\n'
            p += 2
    return out
