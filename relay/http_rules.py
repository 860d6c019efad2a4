"""HTTP rules that more than one part of relay applies, each written once.

- HEAD is served by whatever serves GET (RFC 9110 §9.3.2): the router answers it with the
  GET flow, so the configuration checks treat a flow that takes GET as taking HEAD too,
  and two flows may not split GET and HEAD of one path between them.
- Some fields belong to one connection, not to the message (RFC 9110 §7.6.1, RFC 9112
  §6-7): relay never forwards them, and a flow may not set them.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["CONNECTION_FIELDS", "served_methods"]

#: hop-by-hop and framing fields, lowercase
CONNECTION_FIELDS = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
})  # fmt: skip


def served_methods(methods: Iterable[str]) -> frozenset[str]:
    """The methods a flow that takes ``methods`` serves: HEAD too when it takes GET."""
    served = frozenset(methods)
    return served | {"HEAD"} if "GET" in served else served
