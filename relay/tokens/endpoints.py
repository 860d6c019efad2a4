"""relay's OAuth endpoints as built-in flows, answered by sinks of their own.

Like the JWKS, they are flows the policy adds itself, so routing, body limits, method
checks and the request's audit record work as for any flow: metadata (RFC 8414, public),
the token endpoint (RFC 8693, public: the caller proves itself by the subject token),
introspection (RFC 7662, a bearer token relay accepts, else 401) and the just-in-time
grants (``relay.grants.endpoint``, an issuer's bearer token).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Literal

import orjson

from relay.audit import AuditLog
from relay.config import Config, FlowConfig, FlowHeaders, ServerConfig, TokensConfig
from relay.errors import Unauthorized
from relay.grants.endpoint import ITEM_METHODS, LIST_METHODS, grants_sinks
from relay.grants.service import GrantService
from relay.header_block import header_values
from relay.identity import Authenticator, Identity, IdentitySigner
from relay.policy import JWKS_PATH, Flow
from relay.reply import Reply
from relay.request import Request
from relay.sinks import Sink
from relay.sinks.answering import AnsweringSink
from relay.sinks.static import StaticSink
from relay.tokens import issue
from relay.tokens.oauth import (MAX_FORM_BYTES, OAuthError, check_form_type, parse_form, send_json,
                               send_oauth_error)
from relay.tokens.own import OwnTokens, flows_of_scope
from relay.tokens.records import exchange_record, introspection_record

__all__ = ["TokenService", "token_service"]


class TokenService:
    """What the endpoints share across policy snapshots: the verifier, the signer, the log,
    and the just-in-time grants."""

    def __init__(self, config: TokensConfig, authenticator: Authenticator, signer: IdentitySigner,
                 audit: AuditLog, grants: GrantService) -> None:  # fmt: skip
        self.config = config
        self.authenticator = authenticator
        self.signer = signer
        self.audit = audit
        self.grants = grants

    def verify(self, token: str, role: str, issuers: tuple[str, ...]) -> Identity:
        """The identity a subject or actor token proves; OAuthError(invalid_request) if none
        (RFC 8693 §2.2.2), its audit reason naming the token and why."""
        try:
            return self.authenticator.authenticate(b"Bearer " + token.encode("latin-1", "replace"), issuers)
        except Unauthorized as exc:
            raise OAuthError("invalid_request", f"{role}: {exc.detail}", f"{role}_{exc.reason}") from None

    def _exchange_refused(self, request: Request, err: OAuthError) -> None:
        """A token request refused before its parameters were read: still a token decision."""
        self.audit.record(exchange_record(request.request_id, err.reason, None, None, ()))

    def flows(self, flows: tuple[Flow, ...], server: ServerConfig) -> tuple[Flow, ...]:
        """The built-in flows of the endpoints, deciding over ``flows`` (one policy's)."""
        config = self.config
        by_name = {flow.name: flow for flow in flows}
        exchange = _exchange(self, by_name)
        listing, item = grants_sinks(self.grants, config.grants_path, by_name)
        return (
            _builtin(server, listing, config.grants_path, LIST_METHODS, "jwt"),
            _builtin(server, item, config.grants_path + "/", ITEM_METHODS, "jwt"),
            _builtin(server, StaticSink("relay-oauth-metadata", _metadata(config), b"application/json"),
                     config.metadata_path, ("GET", "HEAD"), "none"),
            _builtin(server, _form_endpoint("relay-oauth-token", exchange, self._exchange_refused),
                     config.token_path, ("POST",), "none"),
            _builtin(server, _form_endpoint("relay-oauth-introspect", _introspect(self)),
                     config.introspection_path, ("POST",), "jwt"),
        )  # fmt: skip


def token_service(config: Config, signer: IdentitySigner | None, authenticator: Authenticator,
                  audit: AuditLog, grants: GrantService) -> TokenService | None:  # fmt: skip
    """The endpoints' service when ``config`` has a [tokens] table; the authenticator is told
    whether to accept relay's own tokens (a reload may add or drop the table)."""
    if config.tokens is None or signer is None:
        authenticator.trust_own(None)
        return None
    authenticator.trust_own(OwnTokens(config.tokens.issuer, signer))
    grants.configure(config.tokens)
    return TokenService(config.tokens, authenticator, signer, audit, grants)


def _form_endpoint(name: str, respond: Callable[[Request, dict[str, str], Reply], None],
                   refused: Callable[[Request, OAuthError], None] | None = None) -> AnsweringSink:  # fmt: skip
    """A sink answering a form body (RFC 6749 §3.2); a malformed one, or a body that is
    not a form, is refused the OAuth way (and told to ``refused``, for the audit log)."""

    async def answer(request: Request, body: bytes, reply: Reply) -> None:
        try:
            check_form_type(header_values(request.forward_headers, b"content-type"))
            form = parse_form(body)
        except OAuthError as err:
            if refused is not None:
                refused(request, err)
            send_oauth_error(reply, err)
            return
        respond(request, form, reply)

    return AnsweringSink(name, answer)


def _exchange(service: TokenService, flows: Mapping[str, Flow]) -> Callable[[Request, dict[str, str], Reply], None]:
    def respond(request: Request, form: dict[str, str], reply: Reply) -> None:
        subject = actor = None
        wanted = flows_of_scope(form.get("scope", ""))
        try:
            issue.check_request(form)
            subject = service.verify(form["subject_token"], "subject_token", service.config.subject_issuers)
            if "actor_token" in form:
                actor = service.verify(form["actor_token"], "actor_token", ())
            issued = issue.decide(form, subject, actor, flows, service.config.issuer,
                                  service.authenticator.grants, time.time())  # fmt: skip
        except OAuthError as err:
            service.audit.record(exchange_record(request.request_id, err.reason, subject, actor, wanted))
            send_oauth_error(reply, err)
            return
        token = service.signer.sign(issued.claims).decode("ascii")
        service.audit.record(exchange_record(request.request_id, "issued", subject, actor, issued.flows,
                                             issued.jti, issued.exp, issued.grants))  # fmt: skip
        send_json(reply, 200, {
            "access_token": token, "issued_token_type": issued.token_type, "token_type": "Bearer",
            "expires_in": issued.expires_in, "scope": issued.scope,
        })  # fmt: skip
    return respond


def _introspect(service: TokenService) -> Callable[[Request, dict[str, str], Reply], None]:
    def respond(request: Request, form: dict[str, str], reply: Reply) -> None:
        token = form.get("token")
        if token is None:
            send_oauth_error(reply, OAuthError("invalid_request", "token is missing"))
            return
        try:
            identity = service.authenticator.authenticate(b"Bearer " + token.encode("latin-1", "replace"), ())
        except Unauthorized as exc:
            # RFC 7662 §2.2: nothing about a token relay would not accept
            service.audit.record(introspection_record(request.request_id, request.identity, exc.reason, None))
            send_json(reply, 200, {"active": False})
            return
        service.audit.record(introspection_record(request.request_id, request.identity, "active", identity))
        claims = identity.claims
        answer: dict[str, object] = {
            "active": True, "sub": identity.subject, "iss": claims.get("iss"), "exp": identity.expires_at,
            "token_type": "Bearer",
        }
        answer.update({name: claims[name] for name in ("scope", "act", "jti", "iat", "aud") if name in claims})
        send_json(reply, 200, answer)
    return respond


def _metadata(config: TokensConfig) -> bytes:
    """The RFC 8414 document: endpoints are absolute URLs under the issuer identifier."""
    base = config.issuer.rstrip("/")
    return orjson.dumps({
        "issuer": config.issuer,
        "token_endpoint": base + config.token_path,
        "introspection_endpoint": base + config.introspection_path,
        "relay_grants_endpoint": base + config.grants_path,
        "jwks_uri": base + JWKS_PATH,
        "grant_types_supported": [issue.EXCHANGE_GRANT],
        "token_endpoint_auth_methods_supported": ["none"],
        "introspection_endpoint_auth_methods_supported": ["bearer"],
    })


def _builtin(server: ServerConfig, sink: Sink, path: str, methods: tuple[str, ...],
             auth: Literal["jwt", "none"]) -> Flow:  # fmt: skip
    config = FlowConfig(name=sink.name, path=path, sink=sink.name, methods=methods, auth=auth,
                        max_body=MAX_FORM_BYTES, headers=FlowHeaders(identity="none"))  # fmt: skip
    return Flow(config, {sink.name: sink}, server, None)
