"""Types of the compiled fast path (relay/_fastpath.pyx); the twin relay/_fastpath_py.py
has the same API. Import it through relay.fastpath."""

from collections.abc import Iterable, Set
from typing import TypeAlias, final

__all__ = ["HeaderScan", "scan_headers"]

BytesLike: TypeAlias = bytes | bytearray | memoryview

# 1. Header scanning

@final
class HeaderScan:
    """What relay needs from one request's header block. Made by scan_headers; read-only."""

    @property
    def host(self) -> bytes | None: ...
    @property
    def authorization(self) -> bytes | None: ...
    @property
    def content_length(self) -> int: ...
    @property
    def chunked(self) -> bool: ...
    @property
    def close(self) -> bool: ...
    @property
    def keep_alive(self) -> bool: ...
    @property
    def upgrade(self) -> bool: ...
    @property
    def expect(self) -> bytes | None: ...
    @property
    def idempotency_key(self) -> bytes | None: ...
    @property
    def forwarded_for(self) -> bytes | None: ...
    @property
    def forward(self) -> bytes: ...

def scan_headers(headers: Iterable[tuple[BytesLike, BytesLike]], drop: Set[bytes]) -> HeaderScan: ...
