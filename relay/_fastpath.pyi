"""Types of the compiled fast path (relay/_fastpath.pyx); the twin relay/_fastpath_py.py
has the same API. Import it through relay.fastpath."""

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, final

from relay.errors import RelayError
from relay.flowcontrol import RequestBody
from relay.identity.claims import Identity
from relay.request import Request

if TYPE_CHECKING:
    from relay.context import ServerContext

__all__ = ["LAST_CHUNK", "ClaimPath", "ClaimRules", "Compact", "HeaderRules", "HeaderScan", "TokenCache",
           "admit_head", "b64url_decode", "check_request_line", "encode_chunk", "identity_block", "parse_compact",
           "scan_headers", "whole_answer", "whole_request"]

BytesLike: TypeAlias = bytes | bytearray | memoryview
_Payload = TypeVar("_Payload", bytes, bytearray, memoryview)

# 1. Header scanning

@final
class HeaderRules:
    """Which headers scan_headers strips: whole names, prefixes, and whether names with `_`
    are kept at all. Names and prefixes are stored folded (lowercase, `_` as `-`)."""

    def __init__(self, names: Iterable[bytes], prefixes: Iterable[bytes], *, underscores: bool) -> None: ...
    @property
    def names(self) -> frozenset[bytes]: ...
    @property
    def prefixes(self) -> tuple[bytes, ...]: ...
    @property
    def underscores(self) -> bool: ...

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

def scan_headers(headers: Iterable[tuple[BytesLike, BytesLike]], rules: HeaderRules) -> HeaderScan: ...


# 2. Verified-token cache

@final
class TokenCache:
    """Verified tokens → identity, at most ``capacity``; CLOCK eviction."""

    def __init__(self, capacity: int) -> None: ...
    def get(self, token: bytes, generation: int, now: float) -> Identity | None: ...
    def put(self, token: bytes, generation: int, identity: Identity, expires_at: float) -> None: ...
    def purge(self) -> None: ...
    def stats(self) -> dict[str, int]: ...


# 3. Chunked transfer coding (framing)

#: The last chunk and an empty trailer section: b"0\r\n\r\n".
LAST_CHUNK: bytes

def encode_chunk(data: _Payload) -> tuple[bytes, _Payload, bytes]: ...


# 4. Admission

def admit_head(
    ctx: ServerContext, head_size: int, method: bytes, version: str, url: bytes,
    headers: list[tuple[bytes, bytes]], keep_alive: bool, line: bytes, line_at_start: bool,
    peer: str | None, trusted_peer: bool, make_body: Callable[[int, bool], RequestBody],
) -> tuple[Request, RelayError | None] | RelayError: ...
def check_request_line(line: bytes, at_start: bool, method: bytes, url: bytes) -> None: ...


# 5. Token decoding

@final
class Compact:
    """A structurally valid JWS: decoded header and payload, the bytes that were signed."""

    def __init__(self, header: dict[str, Any], payload: dict[str, Any], signing_input: bytes,
                 signature: bytes) -> None: ...
    @property
    def header(self) -> dict[str, Any]: ...
    @property
    def payload(self) -> dict[str, Any]: ...
    @property
    def signing_input(self) -> bytes: ...
    @property
    def signature(self) -> bytes: ...

def b64url_decode(segment: bytes) -> bytes:
    """Unpadded base64url; raises ValueError unless ``segment`` is its canonical spelling."""
    ...

def parse_compact(token: bytes) -> Compact:
    """Split and decode a compact JWS; raises relay.errors.Unauthorized(reason="malformed")."""
    ...


# 6. Whole heads

def whole_request(data: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], int, bool] | None:
    """``(method, target, headers, head_size, keep_alive)`` when ``data`` is one whole bodiless
    GET or HEAD head in the plainest HTTP/1.1 form, alone; None when it is not, or may not be
    (then httptools parses it)."""
    ...

def whole_answer(data: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
    """``(status, headers, body)`` when ``data`` is one whole upstream answer in the plainest
    HTTP/1.1 form; None when it is not, or may not be (then httptools parses it)."""
    ...


# 7. A new identity

@final
class ClaimPath:
    """A claim name or dotted path, resolved against a payload."""

    @property
    def name(self) -> str: ...
    @property
    def steps(self) -> tuple[str, ...]: ...
    def __init__(self, name: str) -> None: ...
    def find(self, claims: Mapping[str, Any]) -> Any:
        """The value at this path, or None when absent."""
        ...

@final
class ClaimRules:
    """One issuer's claim checks and mapping; built once per issuer."""

    def __init__(self, audiences: Iterable[str], leeway: float, *, audience: str, subject: str, groups: str,
                 scopes: str) -> None: ...
    def check(self, payload: dict[str, Any],
              now: float) -> tuple[str, tuple[str, ...], tuple[str, ...], str | None, int]:
        """``(subject, groups, scopes, jti, exp)`` of a verified payload at ``now``; raises
        relay.errors.Unauthorized with the reason of the first check that fails."""
        ...

def identity_block(subject: str, issuer: str, groups: tuple[str, ...]) -> bytes:
    """The ``X-Relay-Subject``, ``X-Relay-Issuer`` and ``X-Relay-Groups`` lines."""
    ...
