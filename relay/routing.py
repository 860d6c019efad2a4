"""The route table: normalized path + method → flow.

The most specific path decides: an exact path beats any prefix, and a longer prefix
beats a shorter one. Only the flows at that one path are considered for the method;
when none takes it the answer is 405 with their methods, never a fall-back to a
shorter prefix (a subtree given to one flow stays with it). HEAD goes wherever GET
does (``relay.http_rules.served_methods``). No match at all is 404: the table is
default-deny.

Lookups cost one dict probe for an exact path and one per "/" of the request path
for prefixes, whatever the number of flows; a path already resolved to a prefix is
remembered in a small bounded memo, so a repeated one costs a single probe too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

from relay.config import FlowConfig
from relay.errors import MethodNotAllowed, NotFound
from relay.http_rules import served_methods

__all__ = ["FlowTable", "HasFlowConfig"]


class HasFlowConfig(Protocol):
    @property
    def config(self) -> FlowConfig: ...


T = TypeVar("T", bound=HasFlowConfig)
_MEMO_ENTRIES = 4096


class _Route(Generic[T]):
    """The flows registered at one path, by method."""

    __slots__ = ("by_method", "allowed")

    def __init__(self) -> None:
        self.by_method: dict[str, T] = {}
        self.allowed: tuple[str, ...] = ()

    def add(self, flow: T) -> None:
        for method in sorted(served_methods(flow.config.methods)):
            other = self.by_method.get(method)
            if other is not None:
                raise ValueError(
                    f"flows '{other.config.name}' and '{flow.config.name}' both take "
                    f"{method} on '{flow.config.path}'"
                )
            self.by_method[method] = flow

    def seal(self) -> None:
        self.allowed = tuple(sorted(self.by_method))


class FlowTable(Generic[T]):
    """Routes (route_path, method) to one of ``flows``; built once, never mutated.

    ``flows`` are any objects with a ``.config: FlowConfig`` (the server passes its
    runtime flows). Raises ValueError if two flows take the same method on the
    same path (validated configurations never do).
    """

    __slots__ = ("flows", "_exact", "_prefix", "_longest_prefix", "_memo")

    def __init__(self, flows: Sequence[T]) -> None:
        self.flows = tuple(flows)
        self._exact: dict[str, _Route[T]] = {}
        self._prefix: dict[str, _Route[T]] = {}
        for flow in self.flows:
            path = flow.config.path
            table = self._prefix if path.endswith("/") else self._exact
            route = table.get(path)
            if route is None:
                route = table[path] = _Route()
            route.add(flow)
        for route in (*self._exact.values(), *self._prefix.values()):
            route.seal()
        self._longest_prefix = max(map(len, self._prefix), default=0)
        self._memo: dict[str, _Route[T]] = {}  # request path → its prefix route

    def match(self, route_path: str, method: str) -> T:
        """The flow for a normalized path and method.

        Raises NotFound when no flow's path matches, MethodNotAllowed (with the sorted
        methods of the matching path) when the path matches but not the method.
        """
        route = self._exact.get(route_path) or self._memo.get(route_path) or self._find_prefix(route_path)
        if route is None:
            raise NotFound(f"no flow for {route_path}")
        flow = route.by_method.get(method)
        if flow is None:
            raise MethodNotAllowed(route.allowed)
        return flow

    def _find_prefix(self, path: str) -> _Route[T] | None:
        # walk the path's own prefixes, longest first: "/a/b/c" → "/a/b/", "/a/", "/"
        prefixes = self._prefix
        end = min(len(path), self._longest_prefix)
        while end > 0:
            end = path.rfind("/", 0, end)
            if end < 0:
                return None
            route = prefixes.get(path[: end + 1])
            if route is not None:
                if len(self._memo) >= _MEMO_ENTRIES:  # bounded whatever paths clients send
                    self._memo.clear()
                self._memo[path] = route
                return route
        return None
