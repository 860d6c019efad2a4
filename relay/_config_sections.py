"""Builders for the sections of the configuration: [server], [audit], [[issuer]], [sink.*].

Each builder reads its table through :class:`relay._config_read.Table`, so a wrong
value is recorded and checking goes on; defaults come from "blank" instances of the
dataclasses, never repeated here. ``build`` assembles the whole :class:`Config`.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable
from types import MappingProxyType
from typing import Any
from urllib.parse import SplitResult, urlsplit

from relay._config_cache import check_caches
from relay._config_files import adapt_file_flows
from relay._config_flows import build_flows
from relay._config_keys import check_key_rotation, key_rotation
from relay._config_ratelimit import check_shared_limits
from relay._config_tokens import build_tokens, check_approvals
from relay._config_read import (
    NAME,
    NAME_RULE,
    Problems,
    Table,
    array_of_tables,
    label,
)
from relay._toml_locate import join_key
from relay.config import (
    DEFAULT_IDEMPOTENCY_TTL,
    DEFAULT_MAX_IN_FLIGHT,
    SIGNING_ALGORITHMS,
    AuditConfig,
    ClaimsMapping,
    Config,
    FileSinkConfig,
    FilesSinkConfig,
    FsyncMode,
    HttpSinkConfig,
    IssuerConfig,
    ListenAddress,
    NatsJetStreamSinkConfig,
    RedisStreamSinkConfig,
    ServerConfig,
    SharedConfig,
    SinkConfig,
    parse_listen,
    unix_socket_path,
)
from relay.config_checks import check_flows
from relay.errors import ConfigError

_MODE = re.compile(r"0?[0-7]{3}")
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
_KiB = 1024
_GiB = 1024**3
_TiB = 1024**4
_DAY = 86400.0

_SERVER = ServerConfig(listen=())
_ISSUER = IssuerConfig(name="", issuer="", audiences=())
_HTTP = HttpSinkConfig(name="", url="", host="", port=0, base_path="")
_FILE = FileSinkConfig(name="", path="")
_REDIS = RedisStreamSinkConfig(name="", url="", stream="")
_FILES = FilesSinkConfig(name="", root="")
_SHARED = SharedConfig()
_NATS = NatsJetStreamSinkConfig(name="", urls=(), stream="", subject="")
_NATS_NAME = re.compile(r"[A-Za-z0-9_-]+")  # a stream name: no dots, wildcards or spaces
_NATS_SUBJECT = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*")  # literal: no wildcards


def build(data: dict[str, Any], text: str, path: str) -> Config:
    """Validate parsed TOML ``data`` (from ``text`` in file ``path``) as a whole."""
    problems = Problems(path, text)
    root = Table(problems, data, "", ("server", "audit", "issuer", "sink", "flow", "shared", "tokens"))
    server = _server(root)
    audit = _audit(root)
    issuers = _issuers(root)
    sinks = _sinks(root)
    shared = _shared(root, server.workers)
    declared_sinks = list(root.table("sink") or ())
    declared_issuers = [i.name for i in issuers]
    flows = build_flows(root, array_of_tables(root, "flow"), declared_sinks, declared_issuers)
    flows = adapt_file_flows(problems, flows, sinks)
    check_flows(problems, flows, bool(issuers))
    check_shared_limits(problems, flows, shared.redis is not None)
    tokens = build_tokens(root, issuers, flows)
    check_approvals(root, flows)
    check_key_rotation(root, server, flows, tokens)
    check_caches(problems, flows, sinks)
    if problems.items:
        raise ConfigError(sorted(problems.items, key=lambda p: p.line or 1 << 30))
    return Config(os.path.abspath(path), server, audit, issuers, MappingProxyType(sinks), flows, shared, tokens)


def _section(root: Table, name: str, allowed: tuple[str, ...]) -> Table:
    return Table(root.problems, root.table(name) or {}, name, allowed)


def _server(root: Table) -> ServerConfig:
    if not root.has("server"):
        root.problem("server", "the [server] table is missing")
        return _SERVER
    t = _section(root, "server", (
        "listen", "workers", "admin_socket", "socket_mode", "max_header_bytes", "header_timeout",
        "idle_timeout", "shutdown_grace", "max_connections", "trusted_proxies", "strip_headers",
        "identity_key", "state_dir", "max_in_flight", "max_loop_lag", "metrics_listen", "min_body_rate",
        "body_rate_window", "request_timeout", "send_timeout", "underscores_in_headers", "identity_key_rotation",
        "identity_jwks_refresh",
    ))
    workers = t.integer("workers", _SERVER.workers, 1, 64)
    if workers > 1 and not t.has("admin_socket"):
        t.problem("workers", "several workers need an admin_socket (the supervisor reaches them through it)")
    return ServerConfig(
        listen=_listen(t),
        workers=workers,
        admin_socket=_admin_socket(t),
        socket_mode=_socket_mode(t),
        max_header_bytes=t.size("max_header_bytes", _SERVER.max_header_bytes, _KiB, 1024 * _KiB),
        header_timeout=t.duration("header_timeout", _SERVER.header_timeout, 0.001, _DAY),
        idle_timeout=t.duration("idle_timeout", _SERVER.idle_timeout, 0.001, _DAY),
        min_body_rate=t.size("min_body_rate", _SERVER.min_body_rate, 0, _GiB),
        body_rate_window=t.duration("body_rate_window", _SERVER.body_rate_window, 0.1, 3600.0),
        request_timeout=t.duration("request_timeout", _SERVER.request_timeout, 0.0, _DAY),
        send_timeout=t.duration("send_timeout", _SERVER.send_timeout, 0.001, _DAY),
        shutdown_grace=t.duration("shutdown_grace", _SERVER.shutdown_grace, 0.0, _DAY),
        max_connections=t.integer("max_connections", _SERVER.max_connections, 1, 1_000_000),
        max_in_flight=t.integer("max_in_flight", _SERVER.max_in_flight, 1, 1_000_000),
        max_loop_lag=t.duration("max_loop_lag", _SERVER.max_loop_lag, 0.0, 60.0),
        trusted_proxies=_trusted_proxies(t),
        strip_headers=t.header_patterns("strip_headers", _SERVER.strip_headers),
        underscores_in_headers=t.boolean("underscores_in_headers", _SERVER.underscores_in_headers),
        identity_key=t.file_path("identity_key", os.path.abspath(_SERVER.identity_key)),
        identity_key_rotation=key_rotation(t, _SERVER.identity_key_rotation),
        identity_jwks_refresh=t.duration("identity_jwks_refresh", _SERVER.identity_jwks_refresh, 1.0, _DAY),
        state_dir=t.file_path("state_dir", os.path.abspath(_SERVER.state_dir)),
        metrics_listen=_metrics_listen(t),
    )


def _listen(t: Table) -> tuple[ListenAddress, ...]:
    if not t.has("listen"):
        t.problem("listen", 'required key \'listen\' is missing, e.g. ["127.0.0.1:8081"]')
    specs = t.strings("listen", ())
    found: dict[tuple[str | None, int | None, str | None], int] = {}
    out = []
    for i, spec in enumerate(specs):
        key = f"{t.path('listen')}[{i}]"
        try:
            addr = parse_listen(spec)
        except ValueError as e:
            t.report(key, str(e))
            continue
        where = (addr.host, addr.port, addr.path)
        if where in found and addr.port != 0 and spec not in specs[:i]:
            t.report(key, f"'{spec}' is the same socket as listen[{found[where]}]")
        found.setdefault(where, i)
        out.append(addr)
    return tuple(out)


def _metrics_listen(t: Table) -> ListenAddress | None:
    spec = t.string("metrics_listen", None)
    if spec is None:
        return None
    try:
        address = parse_listen(spec)
    except ValueError as e:
        t.problem("metrics_listen", str(e))
        return None
    if address.host is None or not ipaddress.ip_address(address.host).is_loopback:
        # the metrics carry flow names and traffic figures: not for the open network
        t.problem("metrics_listen", f"'{spec}' must be a loopback TCP address, e.g. \"127.0.0.1:9464\"")
        return None
    return address


def _admin_socket(t: Table) -> str | None:
    path = t.file_path("admin_socket", _SERVER.admin_socket)
    if path is None:
        return None
    try:
        return unix_socket_path(path)
    except ValueError as e:
        t.problem("admin_socket", str(e))
        return None


def _socket_mode(t: Table) -> int:
    value = t.data.get("socket_mode")
    if value is None:
        return _SERVER.socket_mode
    if isinstance(value, str) and _MODE.fullmatch(value):
        return int(value, 8)
    # an integer is refused: socket_mode = 660 would silently mean 0o1224
    t.problem("socket_mode", 'must be an octal string such as "0660"')
    return _SERVER.socket_mode


def _trusted_proxies(t: Table) -> tuple[str, ...]:
    out = []
    for i, entry in enumerate(t.strings("trusted_proxies", _SERVER.trusted_proxies, allow_empty=True)):
        if entry == "unix":
            out.append(entry)
            continue
        try:
            out.append(str(ipaddress.ip_address(entry)))
        except ValueError:
            t.report(f"{t.path('trusted_proxies')}[{i}]", f"'{entry}' is neither \"unix\" nor an IP address")
    return tuple(out)


_AUDIT = AuditConfig()


def _audit(root: Table) -> AuditConfig:
    t = _section(root, "audit", ("path", "chain", "commit", "fsync", "fsync_interval", "on_failure"))
    path = t.string("path", _AUDIT.path)
    fsync, fsync_interval = _fsync(t, _AUDIT.fsync, _AUDIT.fsync_interval)
    return AuditConfig(
        path=path if path == "-" else t.file_path("path", _AUDIT.path),
        chain=t.boolean("chain", _AUDIT.chain),
        commit=t.choice("commit", _AUDIT.commit, ("before-answer", "batched")),
        fsync=fsync,
        fsync_interval=fsync_interval,
        on_failure=t.choice("on_failure", _AUDIT.on_failure, ("refuse", "continue")),
    )


def _fsync(t: Table, default: FsyncMode, default_interval: float) -> tuple[FsyncMode, float]:
    """``fsync`` and ``fsync_interval`` (which only applies to ``fsync = "interval"``)."""
    fsync = t.choice("fsync", default, ("always", "interval", "never"))
    if t.has("fsync_interval") and fsync != "interval":
        t.problem("fsync_interval", f'only applies with fsync = "interval", not "{fsync}"')
    return fsync, t.duration("fsync_interval", default_interval, 0.001, 3600.0)


def _issuers(root: Table) -> tuple[IssuerConfig, ...]:
    out: list[IssuerConfig] = []
    for i, data in array_of_tables(root, "issuer"):
        t = Table(root.problems, data, f"issuer[{i}]", (
            "name", "issuer", "audiences", "jwks_file", "jwks_url", "discovery_url",
            "algorithms", "refresh", "leeway", "claims", "max_token_bytes",
        ), label("issuer", data))
        name = t.require_str("name")
        if name and not NAME.fullmatch(name):
            t.problem("name", f"'{name}' is not {NAME_RULE}")
        issuer = t.require_str("issuer")
        for other in out:
            if name and name == other.name:
                t.problem("name", f"issuer name '{name}' is already used")
            if issuer and issuer == other.issuer:
                t.problem("issuer", f"'{issuer}' is already configured by issuer '{other.name}'")
        if not t.has("audiences"):
            t.problem("audiences", "required key 'audiences' is missing")
        sources = [k for k in ("jwks_file", "jwks_url", "discovery_url") if t.has(k)]
        if len(sources) != 1:
            where = sources[1] if sources[1:] else ""  # the second source, else the table
            t.problem(where, "set exactly one of jwks_file, jwks_url, discovery_url")
        out.append(IssuerConfig(
            name=name,
            issuer=issuer,
            audiences=t.strings("audiences", ()),
            jwks_file=t.file_path("jwks_file", None),
            jwks_url=_fetch_url(t, "jwks_url"),
            discovery_url=_fetch_url(t, "discovery_url"),
            algorithms=_algorithms(t),
            refresh=t.duration("refresh", _ISSUER.refresh, 10.0, 7 * _DAY),
            leeway=t.duration("leeway", _ISSUER.leeway, 0.0, 60.0),
            claims=_claims(t),
            max_token_bytes=t.size("max_token_bytes", _ISSUER.max_token_bytes, 256, 64 * _KiB),
        ))
    return tuple(out)


def _fetch_url(t: Table, name: str) -> str | None:
    """A key-fetching URL: https, or http only to this machine (a test identity provider)."""
    url = t.string(name, None)
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        scheme, host = parts.scheme, parts.hostname
    except ValueError:
        scheme, host = "", None
    if not host or scheme not in ("http", "https"):
        t.problem(name, f"'{url}' is not an http(s) URL")
    elif scheme == "http" and host not in _LOOPBACK_HOSTS:
        t.problem(name, "keys must be fetched over https (plain http is allowed to localhost only)")
    return url


def _algorithms(t: Table) -> tuple[str, ...]:
    algorithms = t.strings("algorithms", _ISSUER.algorithms)
    for i, alg in enumerate(algorithms):
        if alg in SIGNING_ALGORITHMS:
            continue
        if alg.lower() == "none":
            why = "'none' is refused: tokens must be signed"
        elif alg.upper().startswith("HS"):
            why = (f"'{alg}' is refused: HMAC needs a shared secret, and relay verifies "
                   "with the issuer's public keys only")
        else:
            close = difflib.get_close_matches(alg, SIGNING_ALGORITHMS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            why = f"unknown algorithm '{alg}'{hint}; use {', '.join(SIGNING_ALGORITHMS)}"
        t.report(f"{t.path('algorithms')}[{i}]", why)
    return algorithms


def _claims(t: Table) -> ClaimsMapping:
    data = t.table("claims")
    if data is None:
        return _ISSUER.claims
    keys = ("subject", "groups", "scopes", "audience")
    c = Table(t.problems, data, t.path("claims"), keys, t.label)
    default = _ISSUER.claims
    mapped = {k: c.string(k, getattr(default, k)) for k in keys}
    for key, claim in mapped.items():
        if not claim or claim.startswith(".") or claim.endswith("."):
            c.problem(key, f"'{claim}' is not a claim name or dotted path")
    return ClaimsMapping(**mapped)


def _sinks(root: Table) -> dict[str, SinkConfig]:
    sinks: dict[str, SinkConfig] = {}
    for name, data in (root.table("sink") or {}).items():
        key = join_key("sink", name)
        if not NAME.fullmatch(name):
            root.report(key, f"sink name '{name}' is not {NAME_RULE}")
        if not isinstance(data, dict):
            root.report(key, f"must be a table: write [sink.{name}]")
            continue
        kind = data.get("type")
        builder = _SINK_TYPES.get(kind) if isinstance(kind, str) else None
        if builder is None:
            choices = ", ".join(_SINK_TYPES)
            what = f"unknown sink type '{kind}'" if "type" in data else "required key 'type' is missing"
            root.report(join_key(key, "type"), f"{what} (one of {choices})")
            continue
        allowed, make = builder
        sinks[name] = make(Table(root.problems, data, key, ("type", *allowed)), name)
    return sinks


def _http_sink(t: Table, name: str) -> HttpSinkConfig:
    url = t.require_str("url")
    host, port, base = "", 0, ""
    parts = _split_url(t, url)
    if parts is not None:
        if parts.scheme == "https":
            t.problem("url", "https upstreams are not supported yet: use http:// to an upstream "
                             "on a trusted network")
        elif parts.scheme != "http":
            t.problem("url", f"'{url}' must start with http://")
        elif parts.query or parts.fragment or parts.username is not None:
            t.problem("url", "must not carry a query, fragment or user:password")
        elif any(c in parts.path for c in "%;\\") or "/." in parts.path or "//" in parts.path:
            t.problem("url", f"base path '{parts.path}' must be plain, without '%', '//' or dot segments")
        host, port, base = parts.hostname or "", parts.port or 80, parts.path.rstrip("/")
    return HttpSinkConfig(
        name=name, url=url, host=host, port=port, base_path=base,
        timeout=t.duration("timeout", _HTTP.timeout, 0.001, _DAY),
        connect_timeout=t.duration("connect_timeout", _HTTP.connect_timeout, 0.001, 600.0),
        pool_size=t.integer("pool_size", _HTTP.pool_size, 0, 4096),
        max_in_flight=_max_in_flight(t),
    )


def _split_url(t: Table, url: str, key: str = "url") -> SplitResult | None:
    """``url`` split, with a host and a valid port; None (and a problem) otherwise."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError as e:
        t.problem(key, f"cannot read '{url}': {e}")
        return None
    if not parts.hostname and parts.scheme != "unix":
        t.problem(key, f"'{url}' has no host")
        return None
    return parts


def _file_sink(t: Table, name: str) -> FileSinkConfig:
    if not t.has("path"):
        t.problem("path", "required key 'path' is missing")
    fsync, fsync_interval = _fsync(t, _FILE.fsync, _FILE.fsync_interval)
    return FileSinkConfig(
        name=name,
        path=t.file_path("path", ""),
        format=t.choice("format", _FILE.format, ("ndjson", "raw")),
        fsync=fsync,
        fsync_interval=fsync_interval,
        rotate=t.size("rotate", _FILE.rotate, _KiB, _TiB),
        rotate_interval=t.duration("rotate_interval", _FILE.rotate_interval, 1.0, 366 * _DAY),
        max_in_flight=_max_in_flight(t),
        idempotency_ttl=_idempotency_ttl(t),
    )


def _files_sink(t: Table, name: str) -> FilesSinkConfig:
    if not t.has("root"):
        t.problem("root", "required key 'root' is missing: the directory whose files are served")
    root = t.file_path("root", "")
    if root and not os.path.isdir(root):
        t.problem("root", f"'{root}' is not a directory")
    return FilesSinkConfig(
        name=name,
        root=root,
        delivery=t.choice("delivery", _FILES.delivery, ("x-sendfile", "relay")),
        max_in_flight=_max_in_flight(t),
    )


def _shared(root: Table, workers: int) -> SharedConfig:
    t = _section(root, "shared", ("redis", "key_prefix", "timeout", "reconnect_max"))
    redis = t.string("redis", None)
    if redis is not None:
        _check_redis_url(t, "redis", redis)
        if workers > 1:
            t.problem("redis", "shared state with server.workers > 1 is not supported yet: run one "
                      "relayd per core behind lighttpd instead (see conf/lighttpd-balance.conf)")
    return SharedConfig(
        redis=redis,
        key_prefix=t.string("key_prefix", _SHARED.key_prefix) or _SHARED.key_prefix,
        timeout=t.duration("timeout", _SHARED.timeout, 0.001, 60.0),
        reconnect_max=t.duration("reconnect_max", _SHARED.reconnect_max, 0.01, 300.0),
    )


def _redis_sink(t: Table, name: str) -> RedisStreamSinkConfig:
    url = t.require_str("url")
    _check_redis_url(t, "url", url)
    return RedisStreamSinkConfig(
        name=name,
        url=url,
        stream=t.require_str("stream"),
        maxlen=t.integer("maxlen", _REDIS.maxlen, 1, 2**63 - 1),
        timeout=t.duration("timeout", _REDIS.timeout, 0.001, 3600.0),
        entry=t.choice("entry", _REDIS.entry, ("record", "body")),
        max_in_flight=_max_in_flight(t),
        idempotency_ttl=_idempotency_ttl(t),
    )


def _check_redis_url(t: Table, key: str, url: str) -> None:
    parts = _split_url(t, url, key)
    if parts is None:
        return
    if parts.scheme == "rediss":
        t.problem(key, "TLS to Redis (rediss://) is not supported yet")
    elif parts.scheme not in ("redis", "unix"):
        t.problem(key, f"'{url}' must start with redis:// or unix://")
    elif parts.scheme == "redis" and parts.path.strip("/") and not parts.path.strip("/").isdigit():
        t.problem(key, f"database '{parts.path.strip('/')}' in '{url}' is not a number")


def _nats_sink(t: Table, name: str) -> NatsJetStreamSinkConfig:
    urls = t.strings("url", ()) if isinstance(t.data.get("url"), list) else (t.require_str("url"),)
    for url in urls:
        parts = _split_url(t, url) if url else None
        if parts is not None and (parts.scheme != "nats" or parts.path.strip("/") or parts.query):
            t.problem("url", f"'{url}' must be nats://host[:port]")
    stream, subject = t.require_str("stream"), t.require_str("subject")
    if stream and not _NATS_NAME.fullmatch(stream):
        t.problem("stream", f"'{stream}' is not a stream name (letters, digits, '-', '_')")
    if subject and not _NATS_SUBJECT.fullmatch(subject):
        t.problem("subject", f"'{subject}' is not a literal subject (dot-separated tokens, no wildcards)")
    auth = [key for key in ("credentials_file", "nkey_file", "token", "user") if t.has(key)]
    if len(auth) > 1:
        t.problem(auth[1], f"set only one of {', '.join(auth)}")
    if t.has("user") != t.has("password"):
        t.problem("user" if t.has("user") else "password", "user and password go together")
    return NatsJetStreamSinkConfig(
        name=name, urls=urls, stream=stream, subject=subject,
        timeout=t.duration("timeout", _NATS.timeout, 0.001, 3600.0),
        connect_timeout=t.duration("connect_timeout", _NATS.connect_timeout, 0.001, 600.0),
        duplicate_window=t.duration("duplicate_window", _NATS.duplicate_window, 1.0, 30 * _DAY),
        max_bytes=t.size("max_bytes", _NATS.max_bytes, _KiB, 2**63 - 1),
        max_msgs=t.integer("max_msgs", _NATS.max_msgs, 1, 2**63 - 1),
        credentials_file=t.file_path("credentials_file", None),
        nkey_file=t.file_path("nkey_file", None),
        token=t.string("token", None),
        user=t.string("user", None),
        password=t.string("password", None),
        max_in_flight=_max_in_flight(t),
        idempotency_ttl=_idempotency_ttl(t),
    )


def _max_in_flight(t: Table) -> int:
    """Every sink type's ``max_in_flight``: deliveries open at once before 503."""
    return t.integer("max_in_flight", DEFAULT_MAX_IN_FLIGHT, 1, 1_000_000)


def _idempotency_ttl(t: Table) -> float:
    """How long a sink that stores data remembers an Idempotency-Key."""
    return t.duration("idempotency_ttl", DEFAULT_IDEMPOTENCY_TTL, 1.0, 30 * _DAY)


_SinkBuilder = Callable[[Table, str], SinkConfig]
_SINK_TYPES: dict[str, tuple[tuple[str, ...], _SinkBuilder]] = {
    "http": (("url", "timeout", "connect_timeout", "pool_size", "max_in_flight"), _http_sink),
    "file": (("path", "format", "fsync", "fsync_interval", "rotate", "rotate_interval", "max_in_flight",
              "idempotency_ttl"), _file_sink),
    "redis-stream": (("url", "stream", "maxlen", "timeout", "entry", "max_in_flight", "idempotency_ttl"),
                     _redis_sink),
    "nats-jetstream": (("url", "stream", "subject", "timeout", "connect_timeout", "duplicate_window", "max_bytes",
                        "max_msgs", "credentials_file", "nkey_file", "token", "user", "password", "max_in_flight",
                        "idempotency_ttl"), _nats_sink),
    "files": (("root", "delivery", "max_in_flight"), _files_sink),
}
