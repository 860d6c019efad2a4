"""The grants endpoint over HTTP, as two built-in flows under ``[tokens].grants_path``.

=====================================  ===============================================
``POST   PATH``                          ask: ``flow``, ``reason``, optional ``ttl`` (JSON
                                         object or form) → 202, the grant, ``Location``
``GET    PATH``                          the grants the caller may see
``GET    PATH/ID``                       one grant (404 unless the caller may see it)
``POST   PATH/ID/approve`` · ``/deny``   an approver decides a pending grant
``POST   PATH/ID/revoke`` · ``DELETE``   its requester or an approver ends it
=====================================  ===============================================

Every call carries an issuer's bearer token (the flows have ``auth = "jwt"``, so a
missing or bad one is 401 before this runs, and relay's own tokens are refused). A
grant is answered as JSON (``relay.grants.model.Grant.as_json``); a refusal is relay's
error JSON, ``{"error", "detail", "request_id"}``, with the status of design.md: 400 a
bad request, 403 not allowed (``self_approval``, ``not_an_approver``,
``denied_by_policy``), 404 no such grant, 409 not in a state for it, 503 the change
cannot be made durable now.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qsl

import orjson

from relay.grants.model import Grant
from relay.grants.service import Caller, GrantRefused, GrantService
from relay.reply import Reply
from relay.request import Request
from relay.sinks.answering import AnsweringSink

if TYPE_CHECKING:
    from relay.policy import Flow

__all__ = ["ITEM_METHODS", "LIST_METHODS", "grants_sinks"]

LIST_METHODS = ("GET", "POST")
ITEM_METHODS = ("GET", "POST", "DELETE")
_HEADERS = b"Content-Type: application/json\r\nCache-Control: no-store\r\n"
_VERBS: dict[str, Literal["approve", "deny", "revoke"]] = {
    "POST approve": "approve", "POST deny": "deny", "POST revoke": "revoke", "DELETE ": "revoke",
}


def grants_sinks(service: GrantService, path: str, flows: Mapping[str, Flow]) -> tuple[AnsweringSink, AnsweringSink]:
    """The sinks answering ``path`` (list, ask) and ``path/…`` (one grant)."""

    async def collection(request: Request, body: bytes, reply: Reply) -> None:
        caller = _caller(request)
        try:
            if request.method == "POST":
                grant = await service.request(caller, _fields(body), flows, request.request_id)
                _send(reply, 202, _view(grant), b"Location: %s/%s\r\n" % (path.encode(), grant.id.encode()))
            else:
                _send(reply, 200, {"grants": [_view(g) for g in service.listing(caller, flows)]})
        except GrantRefused as refused:
            _refuse(reply, request, refused)

    async def item(request: Request, body: bytes, reply: Reply) -> None:
        caller = _caller(request)
        grant_id, _, action = request.route_path[len(path) + 1:].partition("/")
        try:
            if request.method == "GET" and not action:
                _send(reply, 200, _view(service.show(caller, grant_id, flows)))
                return
            verb = _VERBS.get(f"{request.method} {action}")
            if verb is None or not grant_id:
                raise GrantRefused(404, "no_grant", f"use GET {path}/ID, POST {path}/ID/approve, /deny or "
                                                    f"/revoke, or DELETE {path}/ID")
            _send(reply, 200, _view(await service.act(caller, grant_id, verb, flows, request.request_id)))
        except GrantRefused as refused:
            _refuse(reply, request, refused)

    return AnsweringSink("relay-grants", collection), AnsweringSink("relay-grant", item)


def _caller(request: Request) -> Caller:
    assert request.identity is not None  # the flows take tokens only
    return Caller.of(request.identity)


def _view(grant: Grant) -> dict[str, object]:
    view = grant.as_json()
    if grant.due(time.time()):
        view["status"] = "expired"  # marked so within a second; say so at once
    return view


def _fields(body: bytes) -> Mapping[str, object]:
    """A JSON object or a form body; a parameter of a form given twice is refused."""
    text = body.strip()
    if text.startswith(b"{"):
        try:
            document = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise GrantRefused(400, "invalid_request", f"the body is not valid JSON: {exc}") from None
        if not isinstance(document, dict):
            raise GrantRefused(400, "invalid_request", "the body must be a JSON object")
        return document
    try:
        pairs = parse_qsl(text.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(text),
                          max_num_fields=16, errors="strict")  # fmt: skip
    except (UnicodeDecodeError, ValueError):
        raise GrantRefused(400, "invalid_request", "the body is neither a JSON object nor a form") from None
    form: dict[str, object] = {}
    for name, value in pairs:
        if name in form:
            raise GrantRefused(400, "invalid_request", f"parameter '{name}' is given more than once")
        form[name] = value
    return form


def _send(reply: Reply, status: int, document: object, extra: bytes = b"") -> None:
    body = orjson.dumps(document)
    reply.send_whole(status, _HEADERS + extra, (body,), len(body))


def _refuse(reply: Reply, request: Request, refused: GrantRefused) -> None:
    headers = b"Retry-After: 1\r\n" if refused.status == 503 else b""
    _send(reply, refused.status, {"error": refused.code, "detail": refused.detail,
                                  "request_id": request.request_id}, headers)  # fmt: skip
