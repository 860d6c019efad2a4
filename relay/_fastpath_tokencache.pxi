# 2. Verified-token cache: TokenCache. Included by _fastpath.pyx.

cimport cython


@cython.final
cdef class _CacheEntry:
    cdef object identity
    cdef long long generation
    cdef double expires_at
    cdef bint referenced


@cython.final
cdef class TokenCache:
    """Already-verified tokens → their identity; CLOCK eviction. See the twin for the contract.

    A hit is one dict lookup on the token bytes (hashing it is most of the cost) and three
    C field reads; nothing is allocated.
    """

    cdef Py_ssize_t _capacity
    cdef dict _entries
    cdef list _ring
    cdef Py_ssize_t _hand
    cdef unsigned long long _hits
    cdef unsigned long long _misses
    cdef unsigned long long _evictions

    def __init__(self, Py_ssize_t capacity):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._entries = {}
        self._ring = []
        self._hand = 0

    def get(self, bytes token not None, long long generation, double now):
        cdef object found = self._entries.get(token)
        cdef _CacheEntry entry
        if found is None:
            self._misses += 1
            return None
        entry = <_CacheEntry>found
        if entry.generation != generation or now > entry.expires_at:
            self._misses += 1
            return None
        entry.referenced = True
        self._hits += 1
        return entry.identity

    def put(self, bytes token not None, long long generation, object identity, double expires_at):
        cdef object found = self._entries.get(token)
        cdef _CacheEntry entry
        cdef Py_ssize_t slot
        if found is not None:
            entry = <_CacheEntry>found
        else:
            if len(self._ring) < self._capacity:
                slot = len(self._ring)
                self._ring.append(token)
            else:
                slot = self._evict()
                self._ring[slot] = token
            entry = _CacheEntry.__new__(_CacheEntry)
            self._entries[token] = entry
        entry.identity = identity
        entry.generation = generation
        entry.expires_at = expires_at
        entry.referenced = True

    cdef Py_ssize_t _evict(self) except -1:
        cdef Py_ssize_t slot
        cdef _CacheEntry entry
        while True:
            slot = self._hand
            self._hand = slot + 1 if slot + 1 < self._capacity else 0
            entry = <_CacheEntry>self._entries[self._ring[slot]]
            if entry.referenced:
                entry.referenced = False
                continue
            del self._entries[self._ring[slot]]
            self._evictions += 1
            return slot

    def purge(self):
        self._entries.clear()
        del self._ring[:]
        self._hand = 0

    def stats(self):
        return {
            "size": len(self._entries),
            "capacity": self._capacity,
            "hits": self._hits,
            "misses": self._misses,
            "evictions": self._evictions,
        }
