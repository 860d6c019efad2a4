"""The OAuth wire format relay's token endpoints speak: form bodies in, JSON out.

Requests are ``application/x-www-form-urlencoded`` (RFC 6749 §3.2); a parameter sent twice
is an error. Answers are JSON with ``Cache-Control: no-store`` (RFC 6749 §5.1); a refusal
is ``{"error": code, "error_description": …}`` with 400, or 401 for ``invalid_client``
(§5.2). The audit reason of a refusal is finer than its code and is kept apart from it.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

import orjson

from relay.reply import Reply

__all__ = ["MAX_FORM_BYTES", "OAuthError", "check_form_type", "parse_form", "send_json", "send_oauth_error"]

MAX_FORM_BYTES = 64 * 1024  # the body limit of relay's token endpoints
_MAX_FIELDS = 32
_FORM_TYPE = b"application/x-www-form-urlencoded"
_HEADERS = b"Content-Type: application/json\r\nCache-Control: no-store\r\nPragma: no-cache\r\n"


class OAuthError(Exception):
    """A refused token request: ``code`` for the client, ``reason`` for the audit record."""

    def __init__(self, code: str, description: str, reason: str | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.reason = reason or code

    @property
    def status(self) -> int:
        return 401 if self.code == "invalid_client" else 400


def check_form_type(content_types: list[bytes]) -> None:
    """The body is declared a form (one Content-Type, any parameters such as charset);
    raises OAuthError(invalid_request) if not. A body of another type is not read as one:
    a browser may send text/plain across origins without asking first."""
    media = content_types[0].partition(b";")[0].strip().lower() if len(content_types) == 1 else b""
    if media != _FORM_TYPE:
        raise OAuthError("invalid_request", f"the body must be sent as {_FORM_TYPE.decode()}", "not_a_form")


def parse_form(body: bytes) -> dict[str, str]:
    """The parameters of a form body; raises OAuthError(invalid_request) for a malformed
    one, a parameter given twice or an empty value (RFC 6749 §3.1: treated as omitted)."""
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body),
                          max_num_fields=_MAX_FIELDS, errors="strict")  # fmt: skip
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "the body is not a valid form (application/x-www-form-urlencoded)",
                         "malformed_form") from None  # fmt: skip
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise OAuthError("invalid_request", f"parameter '{name}' is given more than once", "repeated_parameter")
        if value:
            form[name] = value
    return form


def send_json(reply: Reply, status: int, document: dict[str, object]) -> None:
    body = orjson.dumps(document)
    reply.send_whole(status, _HEADERS, (body,), len(body))


def send_oauth_error(reply: Reply, err: OAuthError) -> None:
    send_json(reply, err.status, {"error": err.code, "error_description": err.description})
