"""``GET /metrics`` over plain HTTP on ``server.metrics_listen``, for Prometheus.

Deliberately tiny: one request per connection, the head read whole (bounded), anything
but GET/HEAD of /metrics answered 404/405. It listens on loopback only (config checks),
apart from relay's data path, so a scraper never competes with requests for a flow.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from relay.config import ListenAddress
from relay.errors import StartupError

log = logging.getLogger("relay.metrics_http")

_MAX_HEAD = 8 * 1024
_TIMEOUT = 10.0
_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def _answer(status: bytes, body: bytes, content_type: bytes = b"text/plain", head: bool = False) -> bytes:
    return b"".join((
        b"HTTP/1.1 ", status, b"\r\nContent-Type: ", content_type,
        b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body), b"" if head else body,
    ))


async def serve_metrics(address: ListenAddress, render: Callable[[], Awaitable[bytes]]) -> asyncio.AbstractServer:
    """Start serving ``render()``'s text at ``address``; raises StartupError when it cannot listen."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
                method, _, rest = head.partition(b" ")
                target = rest.partition(b" ")[0].partition(b"?")[0]
                if target != b"/metrics":
                    writer.write(_answer(b"404 Not Found", b"only /metrics here\n"))
                elif method not in (b"GET", b"HEAD"):
                    writer.write(_answer(b"405 Method Not Allowed", b"GET /metrics\n"))
                else:
                    writer.write(_answer(b"200 OK", await render(), _CONTENT_TYPE, head=method == b"HEAD"))
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass  # a scraper that left or sent garbage gets nothing more
        finally:
            writer.close()

    try:
        return await asyncio.start_server(handle, address.host, address.port, limit=_MAX_HEAD)
    except OSError as exc:
        raise StartupError(f"cannot listen on {address.spec} for metrics: {exc.strerror or exc}") from None
