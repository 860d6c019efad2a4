"""The route table: exact beats prefix, longest prefix wins, 404 vs 405, HEAD via GET."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.config import FlowConfig, load_config
from relay.errors import MethodNotAllowed, NotFound
from relay import routing
from relay.routing import FlowTable

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Flow:
    """A runtime flow as the server would pass it: anything with a ``config``."""

    config: FlowConfig


def flow(name: str, path: str, *methods: str) -> Flow:
    return Flow(FlowConfig(name=name, path=path, sink="s", methods=methods or ("GET", "POST")))


def route(table: FlowTable[Flow], path: str, method: str = "GET") -> str:
    return table.match(path, method).config.name


TABLE = FlowTable([
    flow("root", "/", "GET"),
    flow("orders", "/orders/", "POST", "GET"),
    flow("special", "/orders/special", "PUT"),
    flow("bulk", "/orders/bulk/", "POST"),
    flow("health", "/healthz", "GET"),
    flow("dir-exact", "/docs/", "GET"),
    flow("docs-write", "/docs/", "PUT"),
])


@pytest.mark.parametrize(
    ("path", "method", "name"),
    [
        ("/orders/", "POST", "orders"),
        ("/orders/42", "POST", "orders"),
        ("/orders/42/items/7", "GET", "orders"),
        ("/orders/bulk/", "POST", "bulk"),
        ("/orders/bulk/2024", "POST", "bulk"),
        ("/orders/bulkier", "POST", "orders"),  # a prefix ends at a "/"
        ("/orders/special", "PUT", "special"),
        ("/orders/special/x", "POST", "orders"),
        ("/healthz", "GET", "health"),
        ("/healthz/", "GET", "root"),  # exact paths match exactly
        ("/orders", "GET", "root"),  # "/orders/" is not "/orders"
        ("/anything/else", "GET", "root"),
        ("/", "GET", "root"),
        ("/docs/a", "GET", "dir-exact"),
        ("/docs/a", "PUT", "docs-write"),  # two flows, one path, split by method
        ("/caf\u00e9", "GET", "root"),
    ],
)
def test_the_most_specific_path_wins(path: str, method: str, name: str) -> None:
    assert route(TABLE, path, method) == name


def test_head_goes_wherever_get_does() -> None:
    assert route(TABLE, "/orders/1", "HEAD") == "orders"
    assert route(TABLE, "/healthz", "HEAD") == "health"
    with pytest.raises(MethodNotAllowed):
        TABLE.match("/orders/bulk/1", "HEAD")  # bulk takes POST only


def test_get_and_head_of_one_path_are_never_split_between_flows() -> None:
    # the configuration refuses it with the flow's key (tests/test_config.py); the table,
    # built from checked flows only, holds the same rule
    with pytest.raises(ValueError, match="both take HEAD on '/x'"):
        FlowTable([flow("get", "/x", "GET"), flow("head", "/x", "HEAD")])


def test_a_method_the_path_does_not_take_is_405_with_the_allow_list() -> None:
    with pytest.raises(MethodNotAllowed) as caught:
        TABLE.match("/orders/special", "GET")  # no fall-back to the "/orders/" prefix
    assert caught.value.allowed == ("PUT",)
    with pytest.raises(MethodNotAllowed) as caught:
        TABLE.match("/orders/9", "DELETE")
    assert caught.value.allowed == ("GET", "HEAD", "POST")
    with pytest.raises(MethodNotAllowed) as caught:
        TABLE.match("/docs/x", "POST")
    assert caught.value.allowed == ("GET", "HEAD", "PUT")  # the union of the flows at the path
    assert caught.value.status == 405


def test_no_matching_path_is_404() -> None:
    table = FlowTable([flow("orders", "/orders/"), flow("health", "/healthz")])
    for path in ("/", "/orders", "/order/1", "/healthz/x", "/ORDERS/1"):
        with pytest.raises(NotFound):
            table.match(path, "GET")


def test_an_empty_table_denies_everything() -> None:
    with pytest.raises(NotFound):
        FlowTable([]).match("/", "GET")


def test_two_flows_for_one_path_and_method_are_refused() -> None:
    with pytest.raises(ValueError, match="'a' and 'b' both take POST on '/x/'"):
        FlowTable([flow("a", "/x/", "POST"), flow("b", "/x/", "PUT", "POST")])


class CountingFlow:
    """A flow that counts how often its config is read."""

    reads = 0

    def __init__(self, config: FlowConfig) -> None:
        self._config = config

    @property
    def config(self) -> FlowConfig:
        CountingFlow.reads += 1
        return self._config


def test_lookups_never_scan_the_flows() -> None:
    flows = [CountingFlow(FlowConfig(name=f"f{n}", path=f"/f{n}", sink="s")) for n in range(2000)]
    flows += [CountingFlow(FlowConfig(name=f"p{n}", path=f"/p/{n}/", sink="s")) for n in range(2000)]
    table = FlowTable(flows)
    CountingFlow.reads = 0
    assert table.match("/f1999", "GET") is flows[1999]
    assert table.match("/p/1999/deep/path", "POST") is flows[3999]
    with pytest.raises(NotFound):
        table.match("/nothing/here", "GET")
    assert CountingFlow.reads == 0


def test_routes_the_flows_of_the_shipped_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    table = FlowTable([Flow(f) for f in load_config("conf/relay.toml").flows])
    assert route(table, "/ingest/events", "POST") == "ingest"
    assert route(table, "/orders/7", "GET") == "orders"
    assert route(table, "/healthz", "HEAD") == "health"
    with pytest.raises(MethodNotAllowed) as caught:
        table.match("/ingest/events", "GET")
    assert caught.value.allowed == ("POST",)
    with pytest.raises(NotFound):
        table.match("/admin", "GET")


def test_remembered_prefixes_stay_bounded_and_right() -> None:
    table = FlowTable([flow("a", "/a/", "GET"), flow("root", "/", "GET")])
    for n in range(3 * routing._MEMO_ENTRIES):
        assert route(table, f"/a/{n}") == "a"
        assert route(table, f"/b/{n}") == "root"
    assert 0 < len(table._memo) <= routing._MEMO_ENTRIES
    with pytest.raises(MethodNotAllowed):
        table.match("/a/1", "POST")  # a remembered path still checks the method
