"""relay's error hierarchy.

Every failure a request can meet is one of these types. Each carries the HTTP status
and the short machine-readable ``code`` that clients see; ``relay.responses`` turns
them into bytes in exactly one place. Nothing here exits the process.
"""

from __future__ import annotations


class RelayError(Exception):
    """A request-level failure that maps to an HTTP status."""

    status: int = 500
    code: str = "internal_error"
    #: the connection cannot be trusted to be in sync any more (framing errors)
    close_connection: bool = False
    #: why, for the audit record, when more precise than ``code`` (expired, bad_signature, ...)
    reason: str = ""
    #: ``detail`` tells the caller what to fix in the request, so the response carries it;
    #: otherwise it is for the operator only (the audit record) and may name internals
    explained: bool = False

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.code)
        self.detail = detail or self.code


class BadRequest(RelayError):
    status = 400
    code = "bad_request"
    close_connection = True


class InvalidBody(BadRequest):
    """The body is not in the form the flow's sink takes: ``detail`` says where and why."""

    explained = True


class Unauthorized(RelayError):
    """Missing or invalid credentials (RFC 6750 ``invalid_token``)."""

    status = 401
    code = "invalid_token"

    def __init__(self, detail: str = "", reason: str = "invalid_token") -> None:
        super().__init__(detail)
        #: the audit reason: expired, bad_signature, unknown_kid, ...
        self.reason = reason


class Forbidden(RelayError):
    status = 403
    code = "forbidden"


class NotFound(RelayError):
    status = 404
    code = "no_flow"


class MethodNotAllowed(RelayError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, allowed: tuple[str, ...]) -> None:
        super().__init__("method not allowed for this flow")
        self.allowed = allowed


class RequestTimeout(RelayError):
    status = 408
    code = "header_timeout"
    close_connection = True


class BodyTimeout(RequestTimeout):
    """The request's body came too slowly, or the whole request took too long."""

    code = "request_timeout"

    def __init__(self, detail: str, reason: str) -> None:
        super().__init__(detail)
        #: the audit reason: body_too_slow or request_timeout
        self.reason = reason


class ExpectationFailed(RelayError):
    status = 417
    code = "expectation_failed"
    close_connection = True


class IdempotencyKeyInFlight(RelayError):
    """Another request with the same Idempotency-Key (in the same scope) is in flight."""

    status = 409
    code = "idempotency_key_in_flight"


class IdempotencyKeyReused(RelayError):
    """The Idempotency-Key (in its scope) was first used for a different request."""

    status = 422
    code = "idempotency_key_reused"


class RateLimited(RelayError):
    """One of the flow's rate limits refuses the caller for now; ``limit`` names it,
    ``policy`` and ``retry_after`` fill the RateLimit-Policy, RateLimit and Retry-After
    headers."""

    status = 429
    code = "rate_limited"
    explained = True

    def __init__(self, limit: str, policy: str, retry_after: int) -> None:
        super().__init__(f"rate limit '{limit}' exceeded: retry in {retry_after} s")
        self.limit = limit
        self.policy = policy
        self.retry_after = retry_after


class PayloadTooLarge(RelayError):
    status = 413
    code = "body_too_large"
    close_connection = True


class HeadersTooLarge(RelayError):
    status = 431
    code = "headers_too_large"
    close_connection = True


class NotImplementedMethod(RelayError):
    status = 501
    code = "not_implemented"
    close_connection = True


class SinkError(RelayError):
    """A failure of one sink; ``sink`` names it (for the audit record and the operator)."""

    def __init__(self, detail: str = "", sink: str = "") -> None:
        super().__init__(detail)
        self.sink = sink


class BadGateway(SinkError):
    """A sink refused, reset or answered garbage."""

    status = 502
    code = "sink_failed"


class ServiceUnavailable(SinkError):
    """Overloaded, draining, or a sink is full: try again later."""

    status = 503
    code = "unavailable"

    def __init__(self, detail: str = "", sink: str = "", retry_after: int = 1) -> None:
        super().__init__(detail, sink)
        self.retry_after = retry_after


class Overloaded(ServiceUnavailable):
    """relay itself is at capacity (connections, requests in flight, event-loop lag)."""

    code = "overloaded"


class SharedStateUnavailable(ServiceUnavailable):
    """Out of sync with the shared state (``[shared] redis``) on a flow with
    ``shared_state = "fail-closed"``: a revocation made elsewhere might be missed."""

    code = "shared_state_unavailable"


class RateLimitUnavailable(ServiceUnavailable):
    """A shared rate limit (``mode = "shared"``) could not be checked in Redis, on a flow
    with ``shared_state = "fail-closed"``: admitting might let a caller past its limit."""

    code = "rate_limit_unavailable"
    explained = True


class AuditUnavailable(ServiceUnavailable):
    """The audit log cannot be written (``audit.on_failure = "refuse"``): nothing is relayed
    or acknowledged without its record."""

    code = "audit_unavailable"


class GatewayTimeout(SinkError):
    status = 504
    code = "sink_timeout"


class InsufficientStorage(SinkError):
    """A file sink's disk or quota is full (ENOSPC, EDQUOT)."""

    status = 507
    code = "sink_full"


class ConfigProblem:
    """One thing wrong with a configuration file, located as precisely as we can."""

    __slots__ = ("file", "key", "line", "message")

    def __init__(self, file: str, key: str, message: str, line: int | None = None) -> None:
        self.file = file
        self.key = key
        self.message = message
        self.line = line

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"

    def __repr__(self) -> str:
        return f"ConfigProblem({str(self)!r})"


class ConfigError(Exception):
    """A configuration that cannot be used; carries every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


class StartupError(Exception):
    """relayd cannot start as configured (an address in use, a socket path taken)."""
