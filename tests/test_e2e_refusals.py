"""Refusals explain themselves: the caller is told what to fix, the audit record says why.

A body that is not NDJSON, sent to a flow whose sink takes NDJSON, gets a 400 whose
``detail`` names the first bad line and what is wrong with it, and the audit record of
that request carries the same detail. Details that may name internals (a sink's address)
stay in the audit record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import Relayd, Upstream, exchange, poll_until, relay_config, request_bytes

NDJSON_FLOW = """
[sink.lines]
type = "file"
path = "{path}"
format = "ndjson"
fsync = "never"

[[flow]]
name = "records"
path = "/records/"
methods = ["POST"]
auth = "none"
sink = "lines"
"""


@pytest.fixture
def ingesting(workdir: Path, upstream: Upstream) -> Iterator[Relayd]:
    extra = NDJSON_FLOW.format(path=workdir / "lines.ndjson")
    running = Relayd(workdir, relay_config(workdir, upstream.url, extra=extra))
    yield running
    running.stop()


def audited(workdir: Path, request_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        path = workdir / "audit.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return next((r for r in map(json.loads, lines) if r["request_id"] == request_id), None)

    return poll_until(find, 10, f"the audit record of {request_id}")


@pytest.mark.parametrize(("body", "detail"), [
    (b'{"id":1}\n{"id":2}\n{"id":3,}\n', "line 3: not valid JSON (trailing comma is not allowed at column 8)"),
    (b'{"id":1}\n\n', "line 2: not valid JSON (an empty line)"),
    (b'{"id":1}\n[1, 2', "line 2: not valid JSON (unexpected end of data at column 6)"),  # no final newline
])
def test_a_bad_ndjson_line_is_named_in_the_answer_and_the_audit(ingesting: Relayd, workdir: Path,
                                                                 body: bytes, detail: str) -> None:
    response = exchange(ingesting.tcp, request_bytes("POST", "/records/events", body=body))
    assert response.status == 400
    request_id = response.get("X-Relay-Request-Id")
    assert response.json() == {"error": "bad_request", "detail": detail, "request_id": request_id}
    assert list(response.json()) == ["error", "detail", "request_id"]  # the shape every error has
    record = audited(workdir, str(request_id))
    assert (record["status"], record["reason"], record["detail"]) == (400, "bad_request", detail)
    assert not (workdir / "lines.ndjson").exists() or (workdir / "lines.ndjson").read_bytes() == b""


def test_a_sink_failure_keeps_its_detail_for_the_operator(ingesting: Relayd, workdir: Path) -> None:
    response = exchange(ingesting.tcp, request_bytes("GET", "/down/x"))
    assert response.status == 502
    assert set(response.json()) == {"error", "request_id", "sink"}  # no detail for the caller
    record = audited(workdir, str(response.get("X-Relay-Request-Id")))
    assert record["failed_sink"] == "nowhere" and record["detail"]


def test_a_good_body_is_audited_without_detail(ingesting: Relayd, workdir: Path) -> None:
    response = exchange(ingesting.tcp, request_bytes("POST", "/records/events", body=b'{"id":1}\n'))
    assert response.status == 200, str(response)
    record = audited(workdir, str(response.get("X-Relay-Request-Id")))
    assert record["reason"] == "relayed" and "detail" not in record
