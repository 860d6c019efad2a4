"""The configuration contract: typed, frozen snapshots built from one TOML file.

``load_config`` reads the file, ``parse_config`` validates it as a whole and returns a
:class:`Config` or raises one :class:`~relay.errors.ConfigError` listing every problem
(file, key path such as ``flow[2].allow.groups``, line when it can be found). The
dataclasses are immutable so a running server can swap a new snapshot in atomically
and keep serving from the old one when a reload fails. Sections are read in
``relay._config_sections``; checks that span several flows live in
``relay.config_checks``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from relay.errors import ConfigError, ConfigProblem

#: spoofable identity headers removed from every inbound request unless overridden
DEFAULT_STRIP: tuple[str, ...] = (
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-preferred-username",
    "x-forwarded-groups",
    "x-forwarded-access-token",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-preferred-username",
    "x-auth-request-groups",
    "x-auth-request-access-token",
    "x-remote-user",
    "x-remote-group",
    "remote-user",
    "x-user",
    "x-email",
)
DEFAULT_METHODS: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
#: deliveries one sink may have open before it answers 503 (per worker process)
DEFAULT_MAX_IN_FLIGHT = 256
#: how long a sink remembers an Idempotency-Key and the receipt it answered
DEFAULT_IDEMPOTENCY_TTL = 86400.0
SIGNING_ALGORITHMS: tuple[str, ...] = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
)


def split_patterns(patterns: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Header patterns as (whole names, prefixes): "x-foo-*" is the prefix "x-foo-"."""
    patterns = tuple(patterns)
    return (tuple(p for p in patterns if not p.endswith("*")),
            tuple(p[:-1] for p in patterns if p.endswith("*")))  # fmt: skip


def strips(pattern: str, name: str) -> bool:
    """Whether a header pattern covers the header ``name`` (case and `_` / `-` ignored)."""
    folded, stem = _fold(name), _fold(pattern.removesuffix("*"))
    return folded.startswith(stem) if pattern.endswith("*") else folded == stem


def _fold(name: str) -> str:
    return name.lower().replace("_", "-")


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """One listening socket: TCP (``host``/``port``) or Unix (``path``)."""

    spec: str  # as written: "127.0.0.1:8081", "[::1]:8081", "unix:var/run/relay.sock"
    host: str | None  # IP literal without brackets; None for unix
    port: int | None  # 0 = ephemeral (tests); None for unix
    path: str | None  # absolute socket path; None for TCP


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: tuple[ListenAddress, ...]
    workers: int = 1
    admin_socket: str | None = None
    socket_mode: int = 0o660  # applied to Unix listen sockets
    max_header_bytes: int = 16 * 1024
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    #: a request body must average at least this many bytes/s over each ``body_rate_window``
    #: (Apache mod_reqtimeout's MinRate); 0 still needs one byte a window
    min_body_rate: int = 500
    body_rate_window: float = 20.0
    #: the whole request, head and body, must arrive within this (0 = no limit)
    request_timeout: float = 0.0
    #: a client that takes no byte of its answer for this long is cut off (nginx's send_timeout)
    send_timeout: float = 60.0
    shutdown_grace: float = 30.0  # SIGTERM: time left to in-flight requests
    max_connections: int = 10000
    #: requests one process handles at once; past it new ones get 503 before their body is read
    max_in_flight: int = 4096
    #: event-loop lag past which new requests get 503 (0 = never shed on lag)
    max_loop_lag: float = 0.5
    #: where Prometheus scrapes /metrics over plain HTTP (a loopback TCP address); None: admin socket only
    metrics_listen: ListenAddress | None = None
    #: the first key of relay's signing key set (created on first use); absolute
    identity_key: str = "var/lib/relay/identity-ed25519.pem"
    #: how long each of relay's signing keys signs before the next takes over; None: never rotated
    identity_key_rotation: float | None = 30 * 86400.0
    #: how long verifiers may cache relay's JWKS (its Cache-Control max-age), and so how
    #: long a new key is published before it signs
    identity_jwks_refresh: float = 300.0
    #: where state that must outlive a restart is kept (the revocations file); absolute
    state_dir: str = "var/lib/relay"
    #: peers whose rightmost X-Forwarded-For entry is believed: "unix" = any Unix-socket
    #: peer, else normalized IP literals
    trusted_proxies: tuple[str, ...] = ("unix",)
    #: lowercase header names removed from every inbound request; "x-foo-*" is a prefix
    strip_headers: tuple[str, ...] = DEFAULT_STRIP
    #: keep header fields whose names hold "_" (nginx's underscores_in_headers); off, they are ignored
    underscores_in_headers: bool = False


#: when appended data is flushed to the disk: after every write, periodically, or never
FsyncMode = Literal["always", "interval", "never"]


@dataclass(frozen=True, slots=True)
class AuditConfig:
    path: str = "-"  # "-" = stdout, else absolute
    chain: bool = True  # each record carries the hash of the previous one
    #: "before-answer": an answer goes out only once its record is written (one write per
    #: loop turn for all of them); "batched": records are written every 0.2 s, after the answers
    commit: Literal["before-answer", "batched"] = "before-answer"
    fsync: FsyncMode = "interval"
    fsync_interval: float = 1.0
    #: while records cannot be written: "refuse" new requests (503) and withhold 2xx answers
    #: whose record is not written, or "continue" serving (the failure is logged and counted)
    on_failure: Literal["refuse", "continue"] = "refuse"


@dataclass(frozen=True, slots=True)
class ClaimsMapping:
    """Where an issuer puts identity in its tokens (dotted paths reach nested claims)."""

    subject: str = "sub"
    groups: str = "groups"
    scopes: str = "scope"
    #: the claim checked against the issuer's audiences: "aud" (RFC 7519), or e.g. Cognito
    #: access tokens' "client_id" (they carry no "aud")
    audience: str = "aud"


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    name: str
    issuer: str  # compared exactly with the token's "iss"
    audiences: tuple[str, ...]
    jwks_file: str | None = None  # exactly one of the three key sources is set
    jwks_url: str | None = None
    discovery_url: str | None = None
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")  # pinned, never from the token
    refresh: float = 600.0
    leeway: float = 30.0
    claims: ClaimsMapping = ClaimsMapping()
    max_token_bytes: int = 8192


@dataclass(frozen=True, slots=True)
class HttpSinkConfig:
    name: str
    url: str  # as written: "http://host:port[/base]"
    host: str
    port: int
    base_path: str  # "" or "/prefix", never a trailing "/"
    timeout: float = 30.0  # inactivity over the whole exchange → 504
    connect_timeout: float = 5.0
    pool_size: int = 64  # idle keep-alive connections kept
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    type: Literal["http"] = "http"


@dataclass(frozen=True, slots=True)
class FileSinkConfig:
    name: str
    path: str  # absolute
    format: Literal["ndjson", "raw"] = "ndjson"
    fsync: FsyncMode = "interval"
    fsync_interval: float = 1.0
    rotate: int | None = None  # bytes
    rotate_interval: float | None = None
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL
    type: Literal["file"] = "file"


@dataclass(frozen=True, slots=True)
class RedisStreamSinkConfig:
    name: str
    url: str  # redis://host[:port][/db] or unix:///path/to.sock
    stream: str
    maxlen: int | None = None  # approximate trim (XADD MAXLEN ~)
    timeout: float = 5.0
    entry: Literal["record", "body"] = "record"
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL
    type: Literal["redis-stream"] = "redis-stream"


@dataclass(frozen=True, slots=True)
class NatsJetStreamSinkConfig:
    name: str
    urls: tuple[str, ...]  # nats://host:port, one per server of a cluster
    stream: str
    subject: str
    timeout: float = 5.0  # the whole publish, PubAck included → 503/504
    connect_timeout: float = 2.0
    duplicate_window: float = 86400.0  # of a stream relay creates: Nats-Msg-Id de-duplication
    max_bytes: int | None = None  # of a stream relay creates (discard = new: a full stream → 503)
    max_msgs: int | None = None
    credentials_file: str | None = None  # at most one of these four ways to authenticate
    nkey_file: str | None = None
    token: str | None = None
    user: str | None = None
    password: str | None = None
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL
    type: Literal["nats-jetstream"] = "nats-jetstream"


@dataclass(frozen=True, slots=True)
class FilesSinkConfig:
    """Serves the regular files beneath ``root`` on GET and HEAD (the flow's path is cut
    off the request path; the rest names the file)."""

    name: str
    root: str  # absolute, an existing directory
    #: "x-sendfile": answer with an X-Sendfile header when the front says it takes one
    #: (a trusted proxy sending ``X-Sendfile-Type: X-Sendfile``), so lighttpd sends the file;
    #: relay sends it itself otherwise. "relay": relay always sends the file itself.
    delivery: Literal["x-sendfile", "relay"] = "x-sendfile"
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    type: Literal["files"] = "files"


SinkConfig = HttpSinkConfig | FileSinkConfig | RedisStreamSinkConfig | NatsJetStreamSinkConfig | FilesSinkConfig


@dataclass(frozen=True, slots=True)
class SharedConfig:
    """``[shared]``: state every relayd behind one proxy must agree on, kept in one Redis."""

    redis: str | None = None  # redis://host[:port][/db] or unix:///path; None: nothing is shared
    key_prefix: str = "relay"  # names the hash (PREFIX:revocations) and the channel (PREFIX:changes)
    timeout: float = 2.0  # a connect or a command to Redis
    reconnect_max: float = 5.0  # the longest wait between reconnect attempts (backoff doubles to it)


@dataclass(frozen=True, slots=True)
class Rule:
    """An allow or deny rule: every key must match (AND), any listed value does (OR)."""

    subjects: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    claims: tuple[tuple[str, tuple[str, ...]], ...] = ()  # claim path → accepted values

    def is_empty(self) -> bool:
        """True when the rule constrains nothing (the table was absent)."""
        return not (self.subjects or self.groups or self.scopes or self.claims)


@dataclass(frozen=True, slots=True)
class ApprovalConfig:
    """A flow's just-in-time grants: who may approve them, and for how long at most."""

    approvers: Rule
    max_ttl: float


@dataclass(frozen=True, slots=True)
class RateLimit:
    """One limit of a flow: ``count`` requests per ``period`` seconds for each key ``per``
    names, with up to ``burst`` at once; ``name`` labels it in answers and audit records.
    ``mode``: counted in each worker process ("local"), or in ``[shared] redis`` for every
    relayd behind the proxy at once ("shared")."""

    name: str
    per: Literal["subject", "group", "client", "flow"]
    count: int
    period: float
    burst: int
    mode: Literal["local", "shared"] = "local"


@dataclass(frozen=True, slots=True)
class FlowHeaders:
    set: tuple[tuple[str, str], ...] = ()  # header name → value, overwritten downstream
    strip: tuple[str, ...] = ()  # lowercase names removed before forwarding
    identity: Literal["none", "plain", "signed"] = "plain"
    forward_authorization: bool = False


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """A GET flow's response cache (see ``relay.response_cache``)."""

    scope: Literal["subject", "group", "public"]
    ttl: float = 60.0  # the lifetime when the upstream states none, and the cap of any it states
    max_bytes: int = 64 * 1024 * 1024  # per flow and per worker
    max_entry_bytes: int = 0  # 0: max_bytes / 8


@dataclass(frozen=True, slots=True)
class FlowConfig:
    name: str
    path: str  # normalized; a trailing "/" makes it a prefix
    sink: str
    methods: tuple[str, ...] = DEFAULT_METHODS
    auth: Literal["jwt", "none"] = "jwt"
    issuers: tuple[str, ...] = ()  # () = every issuer
    allow: Rule = Rule()
    deny: Rule = Rule()
    tee: tuple[str, ...] = ()
    max_body: int = 64 * 1024 * 1024
    headers: FlowHeaders = FlowHeaders()
    rate_limits: tuple[RateLimit, ...] = ()  # every one must admit a request (AND)
    #: while out of sync with ``[shared] redis``: 503 (fail-closed) or local state only (fail-open)
    shared_state: Literal["fail-closed", "fail-open"] = "fail-closed"
    #: the longest life of a token relay issues for this flow; None: no token exchange for it
    max_token_ttl: float | None = None
    #: a token exchanged with an actor_token needs the actor allowed by the flow's rules too
    actor_must_be_allowed: bool = False
    #: callers its rules do not allow may ask for a just-in-time grant; None: no grants
    approval: ApprovalConfig | None = None
    cache: CacheConfig | None = None

    @property
    def is_prefix(self) -> bool:
        return self.path.endswith("/")


@dataclass(frozen=True, slots=True)
class TokensConfig:
    """relay as an OAuth authorization server: token exchange and introspection."""

    #: relay's issuer identifier (RFC 8414 §2): the ``iss`` of the tokens it issues
    issuer: str
    metadata_path: str = "/.well-known/oauth-authorization-server"
    token_path: str = "/oauth/token"
    introspection_path: str = "/oauth/introspect"
    #: the configured issuers whose tokens may be exchanged (() = every one)
    subject_issuers: tuple[str, ...] = ()
    #: just-in-time grants are asked for, read and decided under this path
    grants_path: str = "/oauth/grants"
    #: a grant request not decided this long after it was made expires
    grant_request_ttl: float = 3600.0


@dataclass(frozen=True, slots=True)
class Config:
    path: str  # absolute path of the file loaded
    server: ServerConfig
    audit: AuditConfig
    issuers: tuple[IssuerConfig, ...]
    sinks: Mapping[str, SinkConfig]  # read-only
    flows: tuple[FlowConfig, ...]
    shared: SharedConfig = SharedConfig()
    tokens: TokensConfig | None = None  # None: relay issues no tokens


_UNIX_PATH_MAX = 107  # sun_path holds 108 bytes including the terminating NUL


def unix_socket_path(path: str) -> str:
    """``path`` made absolute; ValueError when a Unix socket could not be bound there."""
    path = os.path.abspath(path)
    if len(os.fsencode(path)) > _UNIX_PATH_MAX:
        raise ValueError(f"socket path {path} is longer than {_UNIX_PATH_MAX} bytes")
    return path


def parse_listen(spec: str) -> ListenAddress:
    """Parse "127.0.0.1:8081", "[::1]:8081" or "unix:PATH"; raises ValueError.

    Hosts must be IP literals: a name such as "localhost" may resolve to several
    addresses, and relay would silently listen on only one of them.
    """
    if spec.startswith("unix:"):
        if not spec[5:]:
            raise ValueError("'unix:' needs a socket path, e.g. \"unix:var/run/relay.sock\"")
        return ListenAddress(spec, None, None, unix_socket_path(spec[5:]))
    if spec.startswith("["):
        host, sep, port = spec[1:].partition("]:")
        if not sep:
            raise ValueError(f"cannot read '{spec}': write an IPv6 address as \"[::1]:8081\"")
    else:
        host, sep, port = spec.rpartition(":")
        if not sep:
            raise ValueError(f"'{spec}' needs a port (\"127.0.0.1:8081\") or a \"unix:\" path")
        if ":" in host:
            raise ValueError(f"put the IPv6 address of '{spec}' in brackets: \"[{host}]:{port}\"")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"'{host}' in '{spec}' is not an IP address literal") from None
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"port '{port}' in '{spec}' is not a number from 0 to 65535")
    return ListenAddress(spec, str(ip), int(port), None)


_SYNTAX_LINE = re.compile(r"\(at line (\d+), column \d+\)")


def load_config(path: str) -> Config:
    """Read and validate the TOML file at ``path``; raises ConfigError listing every problem."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError([ConfigProblem(path, "", f"cannot read: {e.strerror or e}")]) from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError([ConfigProblem(path, "", "not valid UTF-8", line)]) from e
    return parse_config(text, path)


def parse_config(text: str, path: str) -> Config:
    """Validate TOML ``text`` as a whole; ``path`` names the file in problems.

    Relative paths inside the file resolve against the current directory.
    """
    from relay import _config_sections as sections  # they import the dataclasses above

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        m = _SYNTAX_LINE.search(message)
        if m:
            line: int | None = int(m.group(1))
        elif "end of document" in message:
            line = text.count("\n") + (not text.endswith("\n"))
        else:
            line = None
        message = _SYNTAX_LINE.sub("", message).strip()
        raise ConfigError([ConfigProblem(path, "", f"TOML syntax: {message}", line)]) from e
    return sections.build(data, text, path)
