"""End-to-end test support: real processes, a recording upstream, a raw HTTP client.

    procs     start/stop relayd, lighttpd and the upstream by PID, poll for readiness
    upstream  the recording upstream server (also runnable as a script)
    rawhttp   exact-bytes client: send anything, parse what comes back
    stack     the test policy and the client → lighttpd → relayd → upstream chain
"""

from .procs import LIVE, Lighttpd, Relayd, Service, Upstream, free_port, poll_until, relay_check
from .rawhttp import Address, ConnectionClosed, RawConnection, Response, chunked, exchange, request_bytes
from .stack import (SLOW_TIMEOUT, SMALL_MAX_BODY, Control, Route, Stack, relay_config, upstream_completed,
                    upstream_gained_nothing)
from .upstream import pattern

__all__ = [
    "LIVE", "Address", "ConnectionClosed", "Control", "Lighttpd", "RawConnection", "Relayd",
    "Response", "Route", "SLOW_TIMEOUT", "SMALL_MAX_BODY", "Service", "Stack", "Upstream",
    "chunked", "exchange", "free_port", "pattern", "poll_until", "relay_check", "relay_config",
    "request_bytes", "upstream_completed", "upstream_gained_nothing",
]
