"""What relay knows about one request once its head has been parsed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.flowcontrol import RequestBody

if TYPE_CHECKING:
    from relay.fastpath import HeaderScan
    from relay.idempotency import Claim
    from relay.identity import Identity
    from relay.policy import Flow


class Request:
    """One request, from the end of its head until its exchange is done.

    ``forward_target`` is what the upstream receives: the normalized path, re-encoded, and
    the raw query. ``client`` is the address relay trusts (the peer, or the rightmost
    X-Forwarded-For entry when the peer is a trusted proxy), None when there is none
    (a Unix-socket client that names no address). ``host`` is the Host to forward: the
    Host header's, or an absolute-form target's authority; None when the client sent
    neither (HTTP/1.0). ``forward_headers`` is the header block the upstream receives: the
    scan's, unless the response cache put its validators in place of the client's
    conditionals to revalidate an entry.
    """

    __slots__ = (
        "request_id", "method", "version", "forward_target", "route_path", "headers",
        "flow", "client", "body", "keep_alive", "head_only", "received_at", "identity", "host",
        "claim", "from_proxy", "served", "forward_headers",
    )

    def __init__(
        self,
        request_id: str,
        method: str,
        version: str,
        route_path: str,
        forward_target: bytes,
        headers: HeaderScan,
        flow: Flow,
        client: str | None,
        body: RequestBody,
        keep_alive: bool,
        received_at: float,
        identity: Identity | None = None,
        host: bytes | None = None,
        from_proxy: bool = False,
    ) -> None:
        self.request_id = request_id
        self.method = method
        self.version = version
        self.route_path = route_path
        self.forward_target = forward_target
        self.headers = headers
        self.forward_headers = headers.forward
        self.flow = flow
        self.client = client
        self.body = body
        self.keep_alive = keep_alive
        self.head_only = method == "HEAD"
        #: time.monotonic() when the head was parsed (uvloop's own clock ticks in whole ms)
        self.received_at = received_at
        #: the verified caller, for flows that require a token
        self.identity = identity
        self.host = host
        #: its Idempotency-Key, scoped and bound, once delivery begins (see relay.idempotency)
        self.claim: Claim | None = None
        #: it came from a trusted proxy (``server.trusted_proxies``), whose headers are its own
        self.from_proxy = from_proxy
        #: the file a files sink answered with, for the audit record: (path beneath the
        #: root, its size, "x-sendfile" or "relay": who sent the bytes)
        self.served: tuple[str, int, str] | None = None

    @property
    def has_body(self) -> bool:
        return self.headers.chunked or self.headers.content_length > 0
