"""conf/grafana-dashboard.json is a dashboard of what relay really exports: every query
names metrics a running relayd serves on ``server.metrics_listen``, with labels they
carry, and the file is a dashboard Grafana can import (panels with targets, a Prometheus
datasource variable)."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import Relayd, Upstream, exchange, free_port, relay_config, request_bytes
from support.procs import ROOT
from test_identity_support import AUD, ISS, JwksServer, rsa_key

DASHBOARD = ROOT / "conf" / "grafana-dashboard.json"
#: labels Prometheus itself adds to every series it scrapes, and histograms' bucket label
SCRAPE_LABELS = {"instance", "job", "le"}
#: relay's metric names in a PromQL expression, and the label names it groups or selects by
METRIC = re.compile(r"\brelay_[a-z_]+\b")
LABELS = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)|[{,]\s*([a-z_]+)\s*(?:=~|!=|!~|=)")


def queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


ISSUER = """
[[issuer]]
name = "idp"
issuer = "{iss}"
audiences = ["{aud}"]
jwks_url = "{url}"
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, set[str]]]:
    """Sample name → label names, from a relayd's /metrics after some traffic (an issuer
    whose keys it fetched, requests relayed, refused and failed)."""
    workdir = tmp_path_factory.mktemp("grafana")
    upstream = Upstream(workdir)
    port = free_port()
    with JwksServer() as keys:
        keys.serve(rsa_key("rsa-grafana"))
        config = relay_config(workdir, upstream.url, extra=ISSUER.format(iss=ISS, aud=AUD, url=keys.url())).replace(
            "[server]\n", f'[server]\nmetrics_listen = "127.0.0.1:{port}"\n', 1)
        relayd = Relayd(workdir, config)
        try:
            for target in ("/data/a", "/data/b", "/nowhere", "/down/x"):
                exchange(relayd.tcp, request_bytes("GET", target))
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                    f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
                text = answer.read().decode()
        finally:
            relayd.stop()
            upstream.stop()
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    yield samples


def test_the_dashboard_is_importable() -> None:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]


@pytest.mark.parametrize("expr", queries())
def test_every_query_names_metrics_and_labels_relay_exports(expr: str, exported: dict[str, set[str]]) -> None:
    names = set(METRIC.findall(expr))
    assert names, f"no relay metric in {expr!r}"
    unknown = names - exported.keys()
    assert not unknown, f"{expr!r} names metrics relay does not export: {sorted(unknown)}"
    labels = {label.strip() for group in LABELS.findall(expr) for part in group for label in part.split(",")}
    labels.discard("")
    carried = set().union(*(exported[name] for name in names)) | SCRAPE_LABELS
    assert labels <= carried, f"{expr!r} uses labels its metrics lack: {sorted(labels - carried)}"


def test_every_exported_metric_is_on_the_dashboard(exported: dict[str, set[str]]) -> None:
    shown = {name for expr in queries() for name in METRIC.findall(expr)}
    family = re.compile(r"_(bucket|sum|count|created)$")
    missing = {family.sub("", name) for name in exported if name.startswith("relay_")} - {
        family.sub("", name) for name in shown}
    assert not missing, f"metrics relay exports that no panel shows: {sorted(missing)}"
