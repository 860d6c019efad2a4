"""The fast path in plain Python: the readable, executable spec of ``relay/_fastpath.pyx``.

Every function here has a compiled twin with the same name, signature, results and
error texts; ``relay.fastpath`` picks one of the two. The tests run against both and a
differential property test holds them to each other, so change the two together.

Sections (one per fast-path job):

1. header scanning: ``scan_headers`` checks the header pairs httptools delivered,
   pulls out what relay needs and builds the header block forwarded upstream, leaving out
   what a ``HeaderRules`` (built once per flow) strips.
2. verified-token cache: ``TokenCache`` maps tokens already verified to their identity,
   bounded, so a repeated token costs one lookup instead of a signature check.
3. chunked transfer coding: ``encode_chunk`` and ``LAST_CHUNK`` frame outgoing payloads
   as pieces for ``transport.writelines`` (httptools decodes chunked bodies on both sides).
4. admission: ``admit_head`` turns a parsed request head into the request to relay or
   the refusal to answer (the sans-IO core of the request path); ``check_request_line``
   is its check of the spaces httptools skips.
5. token decoding: ``parse_compact`` checks the structure of a token nobody has seen
   yet and decodes its header, payload and signature into a ``Compact``;
   ``b64url_decode`` is its strict base64url.
6. whole heads: ``whole_request`` and ``whole_answer`` take apart, in one call, a bodiless
   request head or an upstream's answer that arrived whole in the plainest form, and
   leave every other to httptools.
7. a new identity: ``ClaimRules`` checks the claims of a token whose signature verified
   and reads the caller from them (``ClaimPath`` resolves one claim);
   ``identity_block`` is the identity headers sent downstream.

Like the compiled side's one include per job, jobs 1, 3, 4, 5, 6 and 7 have a module each
(``_fastpath_py_headers``, ``_fastpath_py_chunked``, ``_fastpath_py_admission``,
``_fastpath_py_jose``, ``_fastpath_py_whole``, ``_fastpath_py_claims``); the token cache,
short, is here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay._fastpath_py_admission import admit_head, check_request_line
from relay._fastpath_py_whole import whole_answer, whole_request
from relay._fastpath_py_chunked import LAST_CHUNK, encode_chunk
from relay._fastpath_py_claims import ClaimPath, ClaimRules, identity_block
from relay._fastpath_py_headers import HeaderRules, HeaderScan, scan_headers
from relay._fastpath_py_jose import Compact, b64url_decode, parse_compact

if TYPE_CHECKING:
    from relay.identity.claims import Identity

__all__ = ["LAST_CHUNK", "ClaimPath", "ClaimRules", "Compact", "HeaderRules", "HeaderScan", "TokenCache",
           "admit_head", "b64url_decode", "check_request_line", "encode_chunk", "identity_block", "parse_compact",
           "scan_headers", "whole_answer", "whole_request"]

# ---------------------------------------------------------------------------------------
# 2. Verified-token cache
# ---------------------------------------------------------------------------------------


class _CacheEntry:
    __slots__ = ("identity", "generation", "expires_at", "referenced")

    def __init__(self, identity: Identity, generation: int, expires_at: float) -> None:
        self.identity = identity
        self.generation = generation
        self.expires_at = expires_at
        self.referenced = True  # hit since the CLOCK hand last passed


class TokenCache:
    """Already-verified tokens → their identity, at most ``capacity`` of them.

    Keyed on the raw token bytes; an entry serves only while the caller's key
    ``generation`` is the one it was stored with and ``now`` is not past its
    ``expires_at``. When full, CLOCK (second-chance) eviction picks the victim: a ring
    of slots and a hand that skips, once, every entry hit since it last passed, so
    tokens in use stay and dead ones (expired, old generation, one-off) go first.
    Amortized O(1) per insertion; a hit is one dict lookup.
    """

    __slots__ = ("_capacity", "_entries", "_ring", "_hand", "_hits", "_misses", "_evictions")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._entries: dict[bytes, _CacheEntry] = {}
        self._ring: list[bytes] = []  # slot → token
        self._hand = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    def get(self, token: bytes, generation: int, now: float) -> Identity | None:
        """The identity stored for ``token``, or None on a miss, another generation or after expiry."""
        entry = self._entries.get(token)
        if entry is None or entry.generation != generation or now > entry.expires_at:
            self._misses += 1
            return None
        entry.referenced = True
        self._hits += 1
        return entry.identity

    def put(self, token: bytes, generation: int, identity: Identity, expires_at: float) -> None:
        """Store a verified ``token``; it serves until ``expires_at`` (seconds since the epoch)."""
        entry = self._entries.get(token)
        if entry is not None:
            entry.identity = identity
            entry.generation = generation
            entry.expires_at = expires_at
            entry.referenced = True
            return
        if len(self._ring) < self._capacity:
            slot = len(self._ring)
            self._ring.append(token)
        else:
            slot = self._evict()
            self._ring[slot] = token
        self._entries[token] = _CacheEntry(identity, generation, expires_at)

    def _evict(self) -> int:
        """Free the slot under the CLOCK hand's first unreferenced entry and return it."""
        while True:
            slot = self._hand
            self._hand = slot + 1 if slot + 1 < self._capacity else 0
            entry = self._entries[self._ring[slot]]
            if entry.referenced:
                entry.referenced = False
                continue
            del self._entries[self._ring[slot]]
            self._evictions += 1
            return slot

    def purge(self) -> None:
        """Forget every entry (the counters stay)."""
        self._entries.clear()
        self._ring.clear()
        self._hand = 0

    def stats(self) -> dict[str, int]:
        """size, capacity, hits, misses, evictions."""
        return {
            "size": len(self._entries),
            "capacity": self._capacity,
            "hits": self._hits,
            "misses": self._misses,
            "evictions": self._evictions,
        }
