"""The configuration contract: what loads, what is refused, and how problems are reported.

Each refused case is a small document built from valid parts with one part changed;
the line a problem should point at carries a ``# HERE`` comment.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from relay._config_cache import entry_limit
from relay._toml_locate import find_line, locate_keys
from relay.config import (
    DEFAULT_STRIP,
    AuditConfig,
    CacheConfig,
    ClaimsMapping,
    Config,
    FileSinkConfig,
    FlowConfig,
    FlowHeaders,
    HttpSinkConfig,
    IssuerConfig,
    ListenAddress,
    RedisStreamSinkConfig,
    Rule,
    ServerConfig,
    load_config,
    parse_config,
    parse_listen,
)
from relay.errors import ConfigError, ConfigProblem

REPO = Path(__file__).resolve().parent.parent

SERVER = '[server]\nlisten = ["127.0.0.1:0"]'
ISSUER = """[[issuer]]
name = "dev"
issuer = "https://idp.example.test/"
audiences = ["relay"]
jwks_file = "keys/dev.json\""""
SINKS = """[sink.api]
type = "http"
url = "http://127.0.0.1:9000"

[sink.archive]
type = "file"
path = "data/archive.ndjson\""""
FLOWS = '[[flow]]\nname = "orders"\npath = "/orders/"\nsink = "api"'


def doc(
    server: str = SERVER,
    issuer: str = ISSUER,
    sinks: str = SINKS,
    flows: str = FLOWS,
    head: str = "",
    audit: str = "",
) -> str:
    return "\n\n".join(part for part in (head, server, audit, issuer, sinks, flows) if part) + "\n"


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory: relative paths in configs resolve against it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load(directory: Path, text: str) -> Config:
    path = directory / "relay.toml"
    path.write_text(text)
    return load_config(str(path))


def problems_of(directory: Path, text: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        load(directory, text)
    return caught.value.problems


def marked_line(text: str) -> int | None:
    return next((n for n, line in enumerate(text.splitlines(), 1) if "# HERE" in line), None)


# --- what loads ----------------------------------------------------------------------


def test_a_full_config_loads_to_the_expected_dataclasses(here: Path) -> None:
    config = load(here, """
[server]
listen = ["127.0.0.1:8081", "[::1]:0", "unix:run/relay.sock"]
workers = 4
admin_socket = "run/admin.sock"
socket_mode = "0600"
max_header_bytes = "32KiB"
header_timeout = "5s"
idle_timeout = "2m"
min_body_rate = "1KiB"
body_rate_window = "10s"
request_timeout = "5m"
send_timeout = "30s"
shutdown_grace = "0s"
max_connections = 500
trusted_proxies = ["unix", "127.0.0.1", "0:0::1"]
strip_headers = ["X-Forwarded-User", "x-auth-request-*"]
state_dir = "state"
underscores_in_headers = true

[audit]
path = "-"
chain = false
commit = "batched"
fsync = "always"
on_failure = "continue"

[[issuer]]
name = "okta"
issuer = "https://example.okta.test/oauth2/default"
audiences = ["api://relay", "relay"]
discovery_url = "https://example.okta.test/oauth2/default/.well-known/openid-configuration"
algorithms = ["RS256", "PS384"]
refresh = "1h"
leeway = "1m"
max_token_bytes = "16KiB"
claims = { subject = "uid", groups = "groups", scopes = "scp" }

[[issuer]]
name = "local"
issuer = "http://127.0.0.1:5556/"
audiences = ["relay"]
jwks_url = "http://127.0.0.1:5556/keys"

[sink.api]
type = "http"
url = "http://upstream.internal:8080/v1/"
timeout = "10s"
connect_timeout = "250ms"
pool_size = 8

[sink.archive]
type = "file"
path = "data/archive.raw"
format = "raw"
fsync = "always"
rotate = "1GiB"
rotate_interval = "1d"

[sink.events]
type = "redis-stream"
url = "redis://127.0.0.1:6379/2"
stream = "relay-events"
maxlen = 100000
entry = "body"

[[flow]]
name = "orders"
path = "/orders/"
methods = ["POST", "GET"]
issuers = ["okta"]
allow = { groups = ["orders-writers"], scopes = ["orders:write"], department = ["sales", "ops"] }
deny = { subjects = ["svc-banned"] }
sink = "api"
tee = ["archive", "events"]
max_body = "1MiB"
headers = { set = { "X-Flow" = "orders" }, strip = ["Cookie", "X-Internal-*"], identity = "signed", forward_authorization = true }

[[flow]]
name = "health"
path = "/healthz"
methods = ["GET"]
auth = "none"
sink = "api"
max_body = 0
""")
    assert config.path == str(here / "relay.toml")
    assert config.server == ServerConfig(
        listen=(
            ListenAddress("127.0.0.1:8081", "127.0.0.1", 8081, None),
            ListenAddress("[::1]:0", "::1", 0, None),
            ListenAddress("unix:run/relay.sock", None, None, str(here / "run/relay.sock")),
        ),
        workers=4,
        admin_socket=str(here / "run/admin.sock"),
        socket_mode=0o600,
        max_header_bytes=32 * 1024,
        header_timeout=5.0,
        idle_timeout=120.0,
        min_body_rate=1024,
        body_rate_window=10.0,
        request_timeout=300.0,
        send_timeout=30.0,
        shutdown_grace=0.0,
        max_connections=500,
        trusted_proxies=("unix", "127.0.0.1", "::1"),
        strip_headers=("x-forwarded-user", "x-auth-request-*"),
        underscores_in_headers=True,
        identity_key=str(here / "var/lib/relay/identity-ed25519.pem"),
        state_dir=str(here / "state"),
    )
    assert config.audit == AuditConfig(path="-", chain=False, commit="batched", fsync="always",
                                       on_failure="continue")
    assert config.issuers == (
        IssuerConfig(
            name="okta",
            issuer="https://example.okta.test/oauth2/default",
            audiences=("api://relay", "relay"),
            discovery_url="https://example.okta.test/oauth2/default/.well-known/openid-configuration",
            algorithms=("RS256", "PS384"),
            refresh=3600.0,
            leeway=60.0,
            claims=ClaimsMapping(subject="uid", groups="groups", scopes="scp"),
            max_token_bytes=16 * 1024,
        ),
        IssuerConfig(
            name="local",
            issuer="http://127.0.0.1:5556/",
            audiences=("relay",),
            jwks_url="http://127.0.0.1:5556/keys",
        ),
    )
    assert dict(config.sinks) == {
        "api": HttpSinkConfig(
            name="api", url="http://upstream.internal:8080/v1/", host="upstream.internal", port=8080,
            base_path="/v1", timeout=10.0, connect_timeout=0.25, pool_size=8,
        ),
        "archive": FileSinkConfig(
            name="archive", path=str(here / "data/archive.raw"), format="raw", fsync="always",
            rotate=1024**3, rotate_interval=86400.0,
        ),
        "events": RedisStreamSinkConfig(
            name="events", url="redis://127.0.0.1:6379/2", stream="relay-events", maxlen=100000, entry="body",
        ),
    }
    assert config.flows == (
        FlowConfig(
            name="orders",
            path="/orders/",
            sink="api",
            methods=("POST", "GET"),
            issuers=("okta",),
            allow=Rule(
                groups=("orders-writers",),
                scopes=("orders:write",),
                claims=(("department", ("sales", "ops")),),
            ),
            deny=Rule(subjects=("svc-banned",)),
            tee=("archive", "events"),
            max_body=1024 * 1024,
            headers=FlowHeaders(
                set=(("X-Flow", "orders"),), strip=("cookie", "x-internal-*"), identity="signed",
                forward_authorization=True
            ),
        ),
        FlowConfig(name="health", path="/healthz", sink="api", methods=("GET",), auth="none", max_body=0),
    )
    assert config.flows[0].is_prefix and not config.flows[1].is_prefix


def test_defaults_fill_what_is_not_written(here: Path) -> None:
    config = load(here, doc())
    assert config.server == ServerConfig(
        listen=(ListenAddress("127.0.0.1:0", "127.0.0.1", 0, None),),
        identity_key=os.path.abspath("var/lib/relay/identity-ed25519.pem"),  # relative paths resolve at load
        state_dir=os.path.abspath("var/lib/relay"),
    )
    assert config.server.strip_headers == DEFAULT_STRIP
    assert config.server.underscores_in_headers is False
    assert config.audit == AuditConfig()
    assert config.issuers[0].algorithms == ("RS256", "ES256", "EdDSA")
    assert config.issuers[0].jwks_file == str(here / "keys/dev.json")
    assert config.sinks["api"] == HttpSinkConfig(
        name="api", url="http://127.0.0.1:9000", host="127.0.0.1", port=9000, base_path=""
    )
    assert config.sinks["archive"] == FileSinkConfig(name="archive", path=str(here / "data/archive.ndjson"))
    flow = config.flows[0]
    assert flow == FlowConfig(name="orders", path="/orders/", sink="api")
    assert flow.methods == ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
    assert flow.allow.is_empty() and flow.deny.is_empty()
    assert flow.headers == FlowHeaders()


def test_sink_limits_and_idempotency_ttl(here: Path) -> None:
    config = load(here, doc(sinks=SINKS.replace('type = "http"', 'type = "http"\nmax_in_flight = 4')
                            + '\nmax_in_flight = 1000000\nidempotency_ttl = "1h"'
                            + '\n\n[sink.events]\ntype = "redis-stream"\nurl = "redis://h"\nstream = "s"'
                            + '\nmax_in_flight = 1\nidempotency_ttl = "30d"'))
    sinks = config.sinks
    assert sinks["api"].max_in_flight == 4
    assert (sinks["archive"].max_in_flight, sinks["archive"].idempotency_ttl) == (1_000_000, 3600.0)
    assert (sinks["events"].max_in_flight, sinks["events"].idempotency_ttl) == (1, 30 * 86400.0)
    defaults = load(here, doc(sinks=SINKS + '\n\n[sink.events]\ntype = "redis-stream"\nurl = "redis://h"\nstream = "s"'))
    assert {name: sink.max_in_flight for name, sink in defaults.sinks.items()} == {"api": 256, "archive": 256, "events": 256}
    assert defaults.sinks["archive"].idempotency_ttl == defaults.sinks["events"].idempotency_ttl == 86400.0


def test_relative_paths_resolve_against_the_working_directory(here: Path) -> None:
    elsewhere = here / "etc"
    elsewhere.mkdir()
    (elsewhere / "relay.toml").write_text(doc(audit='[audit]\npath = "log/audit.jsonl"'))
    config = load_config("etc/relay.toml")
    assert config.path == str(elsewhere / "relay.toml")
    assert config.audit.path == str(here / "log/audit.jsonl")
    assert config.sinks["archive"].path == str(here / "data/archive.ndjson")  # type: ignore[union-attr]


def test_the_shipped_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    config = load_config("conf/relay.toml")
    assert [a.spec for a in config.server.listen] == ["127.0.0.1:8081", "unix:var/run/relay.sock"]
    assert config.server.listen[1].path == str(REPO / "var/run/relay.sock")
    assert config.audit.path == str(REPO / "var/log/audit.jsonl")
    assert [i.name for i in config.issuers] == ["dev"]
    assert config.issuers[0].jwks_file == str(REPO / "conf/keys/dev-jwks.json")
    assert config.issuers[0].audiences == ("relay",)
    assert {n: s.type for n, s in config.sinks.items()} == {"archive": "file", "api": "http"}
    flows = {f.name: f for f in config.flows}
    assert flows["ingest"].path == "/ingest/" and flows["ingest"].methods == ("POST",)
    assert flows["ingest"].allow.groups == ("ingest-writers",) and flows["ingest"].sink == "archive"
    assert flows["orders"].sink == "api" and flows["orders"].tee == ("archive",)
    assert set(flows["orders"].methods) == {"POST", "GET"}
    assert flows["health"].auth == "none" and flows["health"].path == "/healthz"


def test_a_config_is_immutable(here: Path) -> None:
    config = load(here, doc())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.flows[0].name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.sinks["new"] = config.sinks["api"]  # type: ignore[index]


def test_parse_config_validates_text_without_a_file(here: Path) -> None:
    config = parse_config(doc(), "inline.toml")
    assert config.path == str(here / "inline.toml")
    with pytest.raises(ConfigError) as caught:
        parse_config(doc(flows=FLOWS + '\nmetods = ["GET"]'), "inline.toml")
    assert caught.value.problems[0].file == "inline.toml"


# --- how problems are reported -------------------------------------------------------


def test_every_problem_is_reported_at_once_in_line_order(here: Path) -> None:
    text = doc(
        server='[server]\nlisten = ["127.0.0.1:0"]\nworkers = 0',
        issuer=ISSUER + '\nleeway = "5m"',
        sinks=SINKS + '\nfsync = "sometimes"',
        flows=FLOWS + '\nmethods = ["get"]\n\n[[flow]]\nname = "orders"\npath = "/x"\nsink = "nope"',
    )
    problems = problems_of(here, text)
    assert [p.key for p in problems] == [
        "server.workers",
        "issuer[0].leeway",
        "sink.archive.fsync",
        "flow[0].methods[0]",
        "flow[1].name",
        "flow[1].sink",
    ]
    assert [p.line for p in problems] == sorted(p.line or 0 for p in problems)
    assert all(p.file == str(here / "relay.toml") for p in problems)


def test_a_problem_reads_file_line_key_message(here: Path) -> None:
    text = doc(flows=FLOWS + '\nmetods = ["POST"]  # HERE')
    with pytest.raises(ConfigError) as caught:
        load(here, text)
    assert str(caught.value) == (
        f"{here / 'relay.toml'}:{marked_line(text)}: flow[0].metods: "
        "unknown key 'metods' (did you mean 'methods'?) (flow 'orders')"
    )


def test_a_syntax_error_names_its_line(here: Path) -> None:
    text = doc(flows=FLOWS + '\nmethods = ["GET"')
    (problem,) = problems_of(here, text)
    assert problem.key == "" and problem.message.startswith("TOML syntax")
    assert problem.line == len(text.splitlines())

    text = doc(flows=FLOWS.replace('sink = "api"', 'sink = api  # HERE'))
    (problem,) = problems_of(here, text)
    assert problem.line == marked_line(text) and "Invalid value" in problem.message


def test_an_unreadable_file_is_a_problem(here: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("missing.toml")
    (problem,) = caught.value.problems
    assert problem.file == "missing.toml" and "cannot read" in problem.message


def test_a_file_that_is_not_utf8_is_a_problem(here: Path) -> None:
    (here / "relay.toml").write_bytes(b'[server]\nlisten = ["127.0.0.1:0"]\n# caf\xe9\n')
    with pytest.raises(ConfigError) as caught:
        load_config("relay.toml")
    (problem,) = caught.value.problems
    assert problem.message == "not valid UTF-8" and problem.line == 3


BAD = [
    # top level
    pytest.param(doc(head="sinks = 1  # HERE"), "sinks", "unknown key 'sinks' (did you mean 'sink'?)", id="top-unknown"),
    pytest.param(doc(server=""), "server", "the [server] table is missing", id="server-missing"),
    pytest.param(doc(head='flow = { name = "x" }  # HERE', flows=""), "flow", "[[flow]] sections", id="flow-not-array"),
    # [server]
    pytest.param(doc(server=SERVER + '\nidle_timout = "1m"  # HERE'), "server.idle_timout",
                 "unknown key 'idle_timout' (did you mean 'idle_timeout'?)", id="server-unknown-key"),
    pytest.param(doc(server="[server]  # HERE\nworkers = 1"), "server.listen", "required key 'listen' is missing",
                 id="listen-missing"),
    pytest.param(doc(server='[server]\nlisten = ["localhost:8081"]  # HERE'), "server.listen[0]",
                 "'localhost' in 'localhost:8081' is not an IP address literal", id="listen-hostname"),
    pytest.param(doc(server='[server]\nlisten = [\n  "127.0.0.1:0",\n  "::1:80",  # HERE\n]'), "server.listen[1]",
                 'brackets: "[::1]:80"', id="listen-ipv6-brackets"),
    pytest.param(doc(server='[server]\nlisten = ["unix:run/r.sock", "unix:./run/r.sock"]  # HERE'), "server.listen[1]",
                 "same socket as listen[0]", id="listen-same-socket"),
    pytest.param(doc(server='[server]\nlisten = ["127.0.0.1:1", "127.0.0.1:1"]  # HERE'), "server.listen[1]",
                 "listed twice", id="listen-duplicate"),
    pytest.param(doc(server='[server]\nlisten = ["127.0.0.1:70000"]  # HERE'), "server.listen[0]", "0 to 65535",
                 id="listen-port-range"),
    pytest.param(doc(server='[server]\nlisten = ["127.0.0.1"]  # HERE'), "server.listen[0]", "needs a port",
                 id="listen-no-port"),
    pytest.param(doc(server='[server]\nlisten = ["unix:"]  # HERE'), "server.listen[0]", "needs a socket path",
                 id="listen-unix-empty"),
    pytest.param(doc(server='[server]\nlisten = "127.0.0.1:0"  # HERE'), "server.listen",
                 'must be a list of strings, e.g. ["a", "b"], not the string "127.0.0.1:0"', id="listen-not-list"),
    pytest.param(doc(server=SERVER + "\nworkers = 0  # HERE"), "server.workers", "0 is out of range (1 .. 64)",
                 id="workers-range"),
    pytest.param(doc(server=SERVER + '\nworkers = "2"  # HERE'), "server.workers",
                 'must be an integer, not the string "2"', id="workers-type"),
    pytest.param(doc(server=SERVER + "\nsocket_mode = 660  # HERE"), "server.socket_mode", 'octal string such as "0660"',
                 id="socket-mode-int"),
    pytest.param(doc(server=SERVER + "\nheader_timeout = 10  # HERE"), "server.header_timeout",
                 'a duration needs a unit: write "10s"', id="duration-bare-number"),
    pytest.param(doc(server=SERVER + '\nheader_timeout = "10 seconds"  # HERE'), "server.header_timeout",
                 "cannot read duration", id="duration-garbage"),
    pytest.param(doc(server=SERVER + '\nheader_timeout = "0s"  # HERE'), "server.header_timeout", "out of range",
                 id="duration-zero"),
    pytest.param(doc(server=SERVER + '\nbody_rate_window = "50ms"  # HERE'), "server.body_rate_window", "out of range",
                 id="body-rate-window-range"),
    pytest.param(doc(server=SERVER + '\nmin_body_rate = "fast"  # HERE'), "server.min_body_rate", "cannot read size",
                 id="min-body-rate-garbage"),
    pytest.param(doc(server=SERVER + '\nsend_timeout = "0s"  # HERE'), "server.send_timeout", "out of range",
                 id="send-timeout-zero"),
    pytest.param(doc(server=SERVER + '\nmax_header_bytes = "2MiB"  # HERE'), "server.max_header_bytes",
                 "2MiB is out of range (1KiB .. 1MiB)", id="size-range"),
    pytest.param(doc(server=SERVER + '\nmax_header_bytes = "16kb"  # HERE'), "server.max_header_bytes",
                 "unknown unit 'kb'", id="size-unit"),
    pytest.param(doc(server=SERVER + '\ntrusted_proxies = ["lighttpd"]  # HERE'), "server.trusted_proxies[0]",
                 'neither "unix" nor an IP address', id="trusted-proxy"),
    pytest.param(doc(server=SERVER + '\nstrip_headers = ["x-ok", "bad header"]  # HERE'), "server.strip_headers[1]",
                 "'bad header' is not a header name or prefix", id="strip-header-name"),
    pytest.param(doc(server=SERVER + '\nstrip_headers = ["x-ok", "*"]  # HERE'), "server.strip_headers[1]",
                 "'*' is not a header name or prefix", id="strip-header-star"),
    pytest.param(doc(server=SERVER + '\nunderscores_in_headers = "off"  # HERE'), "server.underscores_in_headers",
                 "true or false", id="underscores-in-headers"),
    pytest.param(doc(server=SERVER + f'\nadmin_socket = "{"a" * 120}.sock"  # HERE'), "server.admin_socket",
                 "longer than 107 bytes", id="admin-socket-length"),
    # [audit]
    pytest.param(doc(audit='[audit]\nchain = "yes"  # HERE'), "audit.chain", 'must be true or false, not the string "yes"',
                 id="audit-chain-type"),
    pytest.param(doc(audit='[audit]\nfile = "x"  # HERE'), "audit.file", "unknown key 'file'", id="audit-unknown"),
    pytest.param(doc(audit='[audit]\ncommit = "lazy"  # HERE'), "audit.commit",
                 "'lazy' is not one of before-answer, batched", id="audit-commit"),
    pytest.param(doc(audit='[audit]\non_failure = "ignore"  # HERE'), "audit.on_failure",
                 "'ignore' is not one of refuse, continue", id="audit-on-failure"),
    pytest.param(doc(audit='[audit]\nfsync = "never"\nfsync_interval = "2s"  # HERE'), "audit.fsync_interval",
                 'only applies with fsync = "interval", not "never"', id="audit-fsync-interval"),
    # [[issuer]]
    pytest.param(doc(issuer='[[issuer]]  # HERE\nname = "dev"\naudiences = ["relay"]\njwks_file = "k.json"'),
                 "issuer[0].issuer", "required key 'issuer' is missing (issuer 'dev')", id="issuer-missing-iss"),
    pytest.param(doc(issuer=ISSUER.replace('["relay"]', "[]  # HERE")), "issuer[0].audiences",
                 "must not be an empty list", id="issuer-audiences-empty"),
    pytest.param(doc(issuer=ISSUER.replace("[[issuer]]", "[[issuer]]  # HERE").replace('jwks_file = "keys/dev.json"', "")),
                 "issuer[0]", "set exactly one of jwks_file, jwks_url, discovery_url", id="issuer-no-keys"),
    pytest.param(doc(issuer=ISSUER + '\njwks_url = "https://idp.example.test/jwks"  # HERE'), "issuer[0].jwks_url",
                 "set exactly one of", id="issuer-two-key-sources"),
    pytest.param(doc(issuer=ISSUER.replace('jwks_file = "keys/dev.json"', 'jwks_url = "http://idp.example.test/k"  # HERE')),
                 "issuer[0].jwks_url", "keys must be fetched over https", id="issuer-jwks-http"),
    pytest.param(doc(issuer=ISSUER.replace('jwks_file = "keys/dev.json"', 'discovery_url = "ftp://idp/x"  # HERE')),
                 "issuer[0].discovery_url", "is not an http(s) URL", id="issuer-discovery-scheme"),
    pytest.param(doc(issuer=ISSUER + '\nalgorithms = ["RS256", "HS256"]  # HERE'), "issuer[0].algorithms[1]",
                 "'HS256' is refused: HMAC needs a shared secret", id="issuer-hmac"),
    pytest.param(doc(issuer=ISSUER + '\nalgorithms = ["none"]  # HERE'), "issuer[0].algorithms[0]",
                 "'none' is refused: tokens must be signed", id="issuer-alg-none"),
    pytest.param(doc(issuer=ISSUER + '\nalgorithms = ["rs256"]  # HERE'), "issuer[0].algorithms[0]",
                 "unknown algorithm 'rs256' (did you mean 'RS256'?)", id="issuer-alg-case"),
    pytest.param(doc(issuer=ISSUER + '\nleeway = "2m"  # HERE'), "issuer[0].leeway", "2m is out of range (0s .. 1m)",
                 id="issuer-leeway"),
    pytest.param(doc(issuer=ISSUER + '\nclaims = { group = "roles" }  # HERE'), "issuer[0].claims.group",
                 "unknown key 'group' (did you mean 'groups'?)", id="issuer-claims-key"),
    pytest.param(doc(issuer=ISSUER + '\nclaims = { groups = "" }  # HERE'), "issuer[0].claims.groups",
                 "is not a claim name", id="issuer-claims-empty"),
    pytest.param(doc(issuer=ISSUER + '\n\n[[issuer]]\nname = "dev"  # HERE\nissuer = "https://b/"\naudiences = ["r"]'
                     '\njwks_file = "b.json"'), "issuer[1].name", "issuer name 'dev' is already used", id="issuer-dup-name"),
    pytest.param(doc(issuer=ISSUER.replace('name = "dev"', 'name = "dev team"  # HERE')), "issuer[0].name",
                 "'dev team' is not a name", id="issuer-name"),
    # [sink.*]
    pytest.param(doc(sinks=SINKS.replace('type = "http"', 'type = "https"  # HERE')), "sink.api.type",
                 "unknown sink type 'https' (one of http, file, redis-stream, nats-jetstream, files)", id="sink-type-unknown"),
    pytest.param(doc(sinks=SINKS.replace('[sink.api]\ntype = "http"', "[sink.api]  # HERE")), "sink.api.type",
                 "required key 'type' is missing", id="sink-type-missing"),
    pytest.param(doc(sinks=SINKS.replace('"http://127.0.0.1:9000"', '"https://127.0.0.1:9000"  # HERE')), "sink.api.url",
                 "https upstreams are not supported yet", id="sink-http-https"),
    pytest.param(doc(sinks=SINKS.replace('"http://127.0.0.1:9000"', '"http://127.0.0.1:9000/?x=1"  # HERE')),
                 "sink.api.url", "must not carry a query", id="sink-http-query"),
    pytest.param(doc(sinks=SINKS.replace('"http://127.0.0.1:9000"', '"http://127.0.0.1:99999"  # HERE')),
                 "sink.api.url", "cannot read", id="sink-http-port"),
    pytest.param(doc(sinks=SINKS.replace('"http://127.0.0.1:9000"', '"ftp://127.0.0.1"  # HERE')),
                 "sink.api.url", "must start with http://", id="sink-http-scheme"),
    pytest.param(doc(sinks=SINKS.replace('"http://127.0.0.1:9000"', '"http://h/a%2Fb"  # HERE')),
                 "sink.api.url", "base path '/a%2Fb' must be plain", id="sink-http-base"),
    pytest.param(doc(sinks=SINKS + '\ntimeoutt = "1s"  # HERE'), "sink.archive.timeoutt",
                 "unknown key 'timeoutt'", id="sink-file-unknown-key"),
    pytest.param(doc(sinks=SINKS.replace('type = "http"', 'type = "http"\ntimeout = 30  # HERE')), "sink.api.timeout",
                 "needs a unit", id="sink-http-timeout"),
    pytest.param(doc(sinks=SINKS.replace('[sink.archive]', '[sink.archive]  # HERE').replace('path = "data/archive.ndjson"', 'format = "raw"')), "sink.archive.path",
                 "required key 'path' is missing", id="sink-file-path"),
    pytest.param(doc(sinks=SINKS + '\nfsync = "sometimes"  # HERE'), "sink.archive.fsync",
                 "'sometimes' is not one of always, interval, never", id="sink-file-fsync"),
    pytest.param(doc(sinks=SINKS + '\nfsync = "always"\nfsync_interval = "1s"  # HERE'), "sink.archive.fsync_interval",
                 'only applies with fsync = "interval"', id="sink-file-fsync-interval"),
    pytest.param(doc(sinks=SINKS + '\nrotate = "10B"  # HERE'), "sink.archive.rotate", "out of range",
                 id="sink-file-rotate"),
    pytest.param(doc(sinks=SINKS + '\n\n[sink.events]\ntype = "redis-stream"\nurl = "rediss://h:6380"  # HERE\n'
                     'stream = "s"'), "sink.events.url", "rediss://) is not supported", id="sink-redis-tls"),
    pytest.param(doc(sinks=SINKS + '\n\n[sink.events]  # HERE\ntype = "redis-stream"\nurl = "redis://h"'),
                 "sink.events.stream", "required key 'stream' is missing", id="sink-redis-stream"),
    pytest.param(doc(sinks=SINKS + '\n\n[sink.events]\ntype = "redis-stream"\nurl = "redis://h/x"  # HERE\nstream = "s"'),
                 "sink.events.url", "database 'x'", id="sink-redis-db"),
    pytest.param(doc(audit='[shared]\nredis = "http://h"  # HERE'), "shared.redis",
                 "must start with redis:// or unix://", id="shared-redis-scheme"),
    pytest.param(doc(audit='[shared]\nredis = "redis://h"\nchannel = "c"  # HERE'), "shared.channel",
                 "unknown key", id="shared-unknown-key"),
    pytest.param(doc(server=SERVER + '\nworkers = 2\nadmin_socket = "a.sock"',
                     audit='[shared]\nredis = "redis://h"  # HERE'), "shared.redis",
                 "server.workers > 1 is not supported", id="shared-workers"),
    pytest.param(doc(flows=FLOWS.replace('path = "', 'shared_state = "open"  # HERE\npath = "', 1)),
                 "flow[0].shared_state", "fail-closed", id="flow-shared-state"),
    pytest.param(doc(sinks=SINKS + '\n\n[sink."my sink"]  # HERE\ntype = "file"\npath = "x"'), 'sink."my sink"',
                 "sink name 'my sink' is not a name", id="sink-name"),
    pytest.param(doc(sinks=SINKS + "\nmax_in_flight = 0  # HERE"), "sink.archive.max_in_flight",
                 "0 is out of range (1 .. 1000000)", id="sink-max-in-flight-range"),
    pytest.param(doc(sinks=SINKS.replace('type = "http"', 'type = "http"\nmax_in_flight = "8"  # HERE')),
                 "sink.api.max_in_flight", 'must be an integer, not the string "8"', id="sink-max-in-flight-type"),
    pytest.param(doc(sinks=SINKS.replace('type = "http"', 'type = "http"\nidempotency_ttl = "1h"  # HERE')),
                 "sink.api.idempotency_ttl", "unknown key 'idempotency_ttl'", id="sink-http-idempotency-ttl"),
    pytest.param(doc(sinks=SINKS + '\nidempotency_ttl = "500ms"  # HERE'), "sink.archive.idempotency_ttl",
                 "500ms is out of range (1s .. 30d)", id="sink-idempotency-ttl-range"),
    pytest.param(doc(sinks=SINKS + '\n\n[sink.events]\ntype = "redis-stream"\nurl = "redis://h"\nstream = "s"\n'
                     'idempotency_ttl = 60  # HERE'), "sink.events.idempotency_ttl", "a duration needs a unit",
                 id="sink-redis-idempotency-ttl-unit"),
    pytest.param(doc(sinks=SINKS + '\n\n[sink.bus]\ntype = "nats-jetstream"\nurl = "http://h:4222"  # HERE\n'
                     'stream = "S"\nsubject = "s"'), "sink.bus.url", "must be nats://host[:port]", id="sink-nats-url"),
    pytest.param(doc(sinks=SINKS + '\n\n[sink.bus]\ntype = "nats-jetstream"\nurl = ["nats://h"]\n'
                     'stream = "a.b"  # HERE\nsubject = "s"'), "sink.bus.stream", "is not a stream name",
                 id="sink-nats-stream"),
    pytest.param(doc(sinks=SINKS + '\n\n[sink.bus]\ntype = "nats-jetstream"\nurl = "nats://h"\nstream = "S"\n'
                     'subject = "s.*"  # HERE'), "sink.bus.subject", "is not a literal subject", id="sink-nats-subject"),
    pytest.param(doc(sinks=SINKS + '\n\n[sink.bus]\ntype = "nats-jetstream"\nurl = "nats://h"\nstream = "S"\n'
                     'subject = "s"\ntoken = "t"\nuser = "u"  # HERE\npassword = "p"'), "sink.bus.user",
                 "set only one of token, user", id="sink-nats-auth"),
    pytest.param(doc(sinks=SINKS + '\n\n[sink.bus]\ntype = "nats-jetstream"\nurl = "nats://h"\nstream = "S"\n'
                     'subject = "s"\npassword = "p"  # HERE'), "sink.bus.password", "user and password go together",
                 id="sink-nats-password"),
    # [[flow]]
    pytest.param(doc(flows=FLOWS + '\nmetods = ["POST"]  # HERE'), "flow[0].metods",
                 "unknown key 'metods' (did you mean 'methods'?) (flow 'orders')", id="flow-unknown-key"),
    pytest.param(doc(flows=FLOWS.replace('"/orders/"', '"/orders/../x"  # HERE')), "flow[0].path",
                 "must not contain '.' or '..' segments", id="flow-path-dots"),
    pytest.param(doc(flows=FLOWS.replace('"/orders/"', '"orders"  # HERE')), "flow[0].path", "must start with '/'",
                 id="flow-path-relative"),
    pytest.param(doc(flows=FLOWS.replace('"/orders/"', '"/a//b"  # HERE')), "flow[0].path", "empty segments",
                 id="flow-path-empty-segment"),
    pytest.param(doc(flows=FLOWS.replace('"/orders/"', '"/a%2Fb"  # HERE')), "flow[0].path", "'%' is not allowed",
                 id="flow-path-percent"),
    pytest.param(doc(flows=FLOWS.replace('"/orders/"', '"/a?b"  # HERE')), "flow[0].path", "'?' is not allowed",
                 id="flow-path-query"),
    pytest.param(doc(flows=FLOWS.replace('"/orders/"', '"/a\\\\b"  # HERE')), "flow[0].path", "is not allowed",
                 id="flow-path-backslash"),
    pytest.param(doc(flows='[[flow]]  # HERE\nname = "orders"\nsink = "api"'), "flow[0].path",
                 "required key 'path' is missing (flow 'orders')", id="flow-path-missing"),
    pytest.param(doc(flows=FLOWS + '\nmethods = ["get"]  # HERE'), "flow[0].methods[0]",
                 "methods are case-sensitive: write 'GET'", id="flow-method-case"),
    pytest.param(doc(flows=FLOWS + '\nmethods = ["CONNECT"]  # HERE'), "flow[0].methods[0]", "CONNECT is refused",
                 id="flow-method-connect"),
    pytest.param(doc(flows=FLOWS + '\nmethods = ["TRACE"]  # HERE'), "flow[0].methods[0]", "TRACE is refused",
                 id="flow-method-trace"),
    pytest.param(doc(flows=FLOWS + '\nmethods = ["GET", "GET"]  # HERE'), "flow[0].methods[1]", "'GET' is listed twice",
                 id="flow-method-twice"),
    pytest.param(doc(flows=FLOWS + "\nmethods = []  # HERE"), "flow[0].methods", "must not be an empty list",
                 id="flow-methods-empty"),
    pytest.param(doc(flows=FLOWS + '\nmethods = ["G E T"]  # HERE'), "flow[0].methods[0]", "not an HTTP method",
                 id="flow-method-token"),
    pytest.param(doc(flows=FLOWS.replace('sink = "api"', 'sink = "apii"  # HERE')), "flow[0].sink",
                 "unknown sink 'apii' (did you mean 'api'?)", id="flow-sink-unknown"),
    pytest.param(doc(flows=FLOWS + '\ntee = ["archive", "api"]  # HERE'), "flow[0].tee[1]",
                 "'api' is already the flow's sink", id="flow-tee-self"),
    pytest.param(doc(flows=FLOWS + '\ntee = ["backup"]  # HERE'), "flow[0].tee[0]", "unknown sink 'backup'",
                 id="flow-tee-unknown"),
    pytest.param(doc(flows=FLOWS + '\ntee = ["archive", "archive"]  # HERE'), "flow[0].tee[1]", "listed twice",
                 id="flow-tee-twice"),
    pytest.param(doc(flows=FLOWS + '\nissuers = ["prod"]  # HERE'), "flow[0].issuers[0]",
                 "unknown issuer 'prod' (known: dev)", id="flow-issuer-unknown"),
    pytest.param(doc(flows=FLOWS + '\nallow = { group = ["x"] }  # HERE'), "flow[0].allow.group",
                 "unknown key 'group' (did you mean 'groups'?)", id="flow-allow-typo"),
    pytest.param(doc(flows=FLOWS + "\nallow = {}  # HERE"), "flow[0].allow", "an empty rule matches nothing",
                 id="flow-allow-empty"),
    pytest.param(doc(flows=FLOWS + "\nallow = { groups = [] }  # HERE"), "flow[0].allow.groups",
                 "must not be an empty list", id="flow-allow-empty-list"),
    pytest.param(doc(flows=FLOWS + '\nallow = { groups = "writers" }  # HERE'), "flow[0].allow.groups",
                 "must be a list of strings", id="flow-allow-not-list"),
    pytest.param(doc(flows=FLOWS + "\n\n[flow.deny]\nsubjects = [1]  # HERE"), "flow[0].deny.subjects",
                 "must be a list of strings", id="flow-deny-subtable"),
    pytest.param(doc(flows=FLOWS + '\nheaders = { set = { "X-Relay-Subject" = "me" } }  # HERE'),
                 "flow[0].headers.set.X-Relay-Subject", "X-Relay-* headers are set by relay itself", id="flow-set-relay"),
    pytest.param(doc(flows=FLOWS + '\nheaders = { set = { "Content-Length" = "1" } }  # HERE'),
                 "flow[0].headers.set.Content-Length", "belongs to the connection", id="flow-set-framing"),
    pytest.param(doc(flows=FLOWS + '\nheaders = { set = { "X-A" = "a\\r\\nX-B: b" } }  # HERE'),
                 "flow[0].headers.set.X-A", "printable ASCII", id="flow-set-crlf"),
    pytest.param(doc(flows=FLOWS + '\nheaders = { set = { "X-A" = "café" } }  # HERE'),
                 "flow[0].headers.set.X-A", "printable ASCII", id="flow-set-non-ascii"),
    pytest.param(doc(flows=FLOWS + '\nheaders = { set = { "X A" = "a" } }  # HERE'),
                 'flow[0].headers.set."X A"', "'X A' is not a header name", id="flow-set-name"),
    pytest.param(doc(flows=FLOWS + '\nheaders = { set = { "X-A" = "1", "x-a" = "2" } }  # HERE'),
                 "flow[0].headers.set.x-a", "'x-a' is set twice", id="flow-set-twice"),
    pytest.param(doc(flows=FLOWS + '\nheaders = { strip = ["Authorization"], forward_authorization = true }  # HERE'),
                 "flow[0].headers.forward_authorization", "contradicts strip", id="flow-forward-stripped"),
    pytest.param(doc(flows=FLOWS + '\nheaders = { strip = ["auth*"], forward_authorization = true }  # HERE'),
                 "flow[0].headers.forward_authorization", "contradicts strip", id="flow-forward-stripped-prefix"),
    pytest.param(doc(flows=FLOWS + '\nheaders = { strip = ["x-a", "x-*-b"] }  # HERE'), "flow[0].headers.strip[1]",
                 "'x-*-b' is not a header name or prefix", id="flow-strip-star-inside"),
    pytest.param(doc(flows=FLOWS + '\nheaders = { identity = "secret" }  # HERE'), "flow[0].headers.identity",
                 "'secret' is not one of none, plain, signed", id="flow-identity"),
    pytest.param(doc(flows=FLOWS + '\nheaders = { stirp = ["a"] }  # HERE'), "flow[0].headers.stirp",
                 "did you mean 'strip'?", id="flow-headers-typo"),
    pytest.param(doc(flows=FLOWS + '\nmax_body = "1.5MiB"  # HERE'), "flow[0].max_body", "whole numbers",
                 id="flow-max-body"),
    pytest.param(doc(flows=FLOWS + '\nauth = "basic"  # HERE'), "flow[0].auth", "'basic' is not one of jwt, none",
                 id="flow-auth-choice"),
    pytest.param(doc(flows=FLOWS.replace('name = "orders"', 'name = "my orders"  # HERE')), "flow[0].name",
                 "'my orders' is not a name", id="flow-name"),
    # across flows
    pytest.param(doc(flows=FLOWS + '\n\n[[flow]]\nname = "orders"  # HERE\npath = "/other"\nsink = "api"'),
                 "flow[1].name", "flow name 'orders' is already used by flow[0]", id="flows-dup-name"),
    pytest.param(doc(flows=FLOWS + '\n\n[[flow]]\nname = "b"\npath = "/orders/"\nmethods = ["PUT", "GET"]  # HERE\n'
                     'sink = "api"'), "flow[1].methods",
                 "flow 'b' overlaps flow 'orders' (flow[0]): both take GET, HEAD, PUT on '/orders/'", id="flows-overlap"),
    pytest.param(doc(flows=FLOWS.replace('sink = "api"', 'sink = "api"\nmethods = ["GET"]') +
                     '\n\n[[flow]]\nname = "b"\npath = "/orders/"\nmethods = ["HEAD"]  # HERE\nsink = "api"'),
                 "flow[1].methods", "both take HEAD on '/orders/'", id="flows-overlap-head"),
    pytest.param(doc(issuer="", flows=FLOWS.replace("[[flow]]", "[[flow]]  # HERE")), "flow[0].auth",
                 "flow 'orders' requires a token but no [[issuer]] is configured", id="flow-jwt-no-issuer"),
    pytest.param(doc(flows=FLOWS + '\nauth = "none"\nallow = { groups = ["x"] }  # HERE'), "flow[0].allow",
                 "auth = \"none\" contradicts 'allow'", id="flow-public-with-allow"),
    pytest.param(doc(flows=FLOWS + '\nauth = "none"\nissuers = ["dev"]  # HERE'), "flow[0].issuers",
                 "auth = \"none\" contradicts 'issuers'", id="flow-public-with-issuers"),
    # relay's key rotation against the tokens it signs
    pytest.param(doc(server=SERVER + '\nidentity_key_rotation = "30"  # HERE'), "server.identity_key_rotation",
                 "duration '30' needs a unit", id="rotation-no-unit"),
    pytest.param(doc(server=SERVER + '\nidentity_key_rotation = "400d"  # HERE'), "server.identity_key_rotation",
                 "400d is out of range (1s .. 366d)", id="rotation-over-a-year"),
    pytest.param(doc(server=SERVER + '\nidentity_jwks_refresh = "2d"  # HERE'), "server.identity_jwks_refresh",
                 "2d is out of range (1s .. 1d)", id="jwks-refresh-over-a-day"),
    pytest.param(doc(server=SERVER + '\nidentity_key_rotation = "10m"  # HERE', head='[tokens]\nissuer = "https://r.test"',
                     flows=FLOWS + '\nmax_token_ttl = "15m"'), "server.identity_key_rotation",
                 "10m is too short: each key is published 5m1s before it signs (identity_jwks_refresh plus the time "
                 "every worker takes to see it) and stays published 15m after it stops (the max_token_ttl of flow "
                 "orders, the longest token relay signs): make it longer than 20m1s", id="rotation-shorter-than-tokens"),
    pytest.param(doc(server=SERVER + '\nidentity_key_rotation = "1m"  # HERE\nidentity_jwks_refresh = "1m"'),
                 "server.identity_key_rotation", "make it longer than 1m1s", id="rotation-shorter-than-refresh"),
    # the response cache
    pytest.param(doc(flows=FLOWS + '\ncache = { scope = "subject" }  # HERE'), "flow[0].cache",
                 "only a flow that takes GET (and HEAD) alone can cache; it also takes DELETE, PATCH, POST, PUT", id="cache-post"),
    pytest.param(doc(flows=FLOWS.replace('"api"', '"archive"') + '\nmethods = ["GET"]\ncache = { scope = "subject" }  # HERE'),
                 "flow[0].cache", "sink 'archive' is not an http sink", id="cache-file-sink"),
    pytest.param(doc(flows=FLOWS + '\nmethods = ["GET"]\ncache = { scope = "everyone" }  # HERE'),
                 "flow[0].cache.scope", "not one of subject, group, public", id="cache-scope-choice"),
    pytest.param(doc(flows=FLOWS + '\nmethods = ["GET"]\ncache = { ttl = "30s" }  # HERE'),
                 "flow[0].cache.scope", "the scope is required", id="cache-scope-missing"),
    pytest.param(doc(flows=FLOWS + '\nmethods = ["GET"]\ncache = { scope = "subject", ttl = "soon" }  # HERE'),
                 "flow[0].cache.ttl", "", id="cache-ttl"),
    pytest.param(doc(flows=FLOWS + '\nmethods = ["GET"]\ncache = { scope = "subject", max_byts = "1MiB" }  # HERE'),
                 "flow[0].cache.max_byts", "did you mean 'max_bytes'?", id="cache-typo"),
    pytest.param(doc(flows=FLOWS + '\nmethods = ["GET"]\n'
                     'cache = { scope = "subject", max_bytes = "1MiB", max_entry_bytes = "2MiB" }  # HERE'),
                 "flow[0].cache.max_entry_bytes", "must not exceed max_bytes", id="cache-entry-over-total"),
    pytest.param(doc(flows=FLOWS + '\nmethods = ["GET"]\ncache = { scope = "group" }  # HERE'),
                 "flow[0].cache.scope", "list them in the flow's allow.groups", id="cache-group-without-groups"),
    pytest.param(doc(flows=FLOWS + '\nmethods = ["GET"]\nauth = "none"\ncache = { scope = "subject" }  # HERE'),
                 "flow[0].cache.scope", 'needs an identity: the flow has auth = "none"', id="cache-subject-no-auth"),
]


@pytest.mark.parametrize(("text", "key", "message"), BAD)
def test_a_bad_value_is_refused_with_its_key_and_line(here: Path, text: str, key: str, message: str) -> None:
    problems = problems_of(here, text)
    assert [p.key for p in problems] == [key], problems
    (problem,) = problems
    assert message in problem.message
    assert problem.file == str(here / "relay.toml")
    assert problem.line == marked_line(text)


def test_key_rotation_takes_never_and_short_test_durations(here: Path) -> None:
    assert load(here, doc()).server.identity_key_rotation == 30 * 86400.0
    assert load(here, doc(server=SERVER + '\nidentity_key_rotation = "never"')).server.identity_key_rotation is None
    quick = load(here, doc(server=SERVER + '\nidentity_key_rotation = "4s"\nidentity_jwks_refresh = "1s"',
                           head='[tokens]\nissuer = "https://r.test"', flows=FLOWS + '\nmax_token_ttl = "2s"')).server
    assert (quick.identity_key_rotation, quick.identity_jwks_refresh) == (4.0, 1.0)


def test_a_nameless_flow_is_named_by_its_index(here: Path) -> None:
    problems = problems_of(here, doc(issuer="", flows='[[flow]]\npath = "/x"\nsink = "api"\nauth = "jwt"'))
    assert sorted(p.key for p in problems) == ["flow[0].auth", "flow[0].name"]
    assert any("flow[0] requires a token" in p.message for p in problems)


def test_a_broken_sink_is_not_also_reported_as_unknown(here: Path) -> None:
    problems = problems_of(here, doc(sinks=SINKS.replace('type = "http"', 'type = "nope"')))
    assert [p.key for p in problems] == ["sink.api.type"]


# --- pieces ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "host", "port"),
    [("127.0.0.1:8081", "127.0.0.1", 8081), ("[::1]:0", "::1", 0), ("0.0.0.0:65535", "0.0.0.0", 65535),
     ("[0:0::1]:80", "::1", 80)],
)
def test_parse_listen_tcp(spec: str, host: str, port: int) -> None:
    assert parse_listen(spec) == ListenAddress(spec, host, port, None)


def test_parse_listen_unix_is_absolute(here: Path) -> None:
    assert parse_listen("unix:run/r.sock") == ListenAddress("unix:run/r.sock", None, None, str(here / "run/r.sock"))
    assert parse_listen("unix:/tmp/x.sock").path == "/tmp/x.sock"


@pytest.mark.parametrize("spec", ["8081", ":8081", "[::1]8081", "127.0.0.1:-1", "127.0.0.1:８０", "host:1", "[x]:1"])
def test_parse_listen_refuses(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(spec)


def test_the_locator_follows_toml_structure() -> None:
    text = """# comment with key = 1
[server]
listen = [
  "a",  # first
  "b",
]
text = \"\"\"
workers = 3
\"\"\"
workers = 2
dotted.key = 1.5

[[flow]]
name = "a"
[[flow]]
name = "b"
headers = { set = { "X-Flow" = "b", "Odd Name" = "x" }, strip = ["Cookie"] }

[flow.allow]
groups = ["g"]

[sink."my sink"]
type = "file"
"""
    lines = locate_keys(text)
    assert lines["server.listen"] == 3
    assert lines["server.listen[1]"] == 5
    assert lines["server.workers"] == 10
    assert lines["server.dotted.key"] == 11
    assert lines["flow[0].name"] == 14
    assert lines["flow[1]"] == 15
    assert lines["flow[1].headers.set.X-Flow"] == 17
    assert lines['flow[1].headers.set."Odd Name"'] == 17
    assert lines["flow[1].headers.strip[0]"] == 17
    assert lines["flow[1].allow.groups"] == 20
    assert lines['sink."my sink".type'] == 23
    assert find_line(lines, "flow[1].allow.groups[3]") == 20
    assert find_line(lines, "flow[1].sink") == 15
    assert find_line(lines, 'flow[1].headers.set."Missing One"') == 17
    assert find_line(lines, "audit.path") is None


def test_problem_keys_match_the_toml_spelling_of_quoted_keys(here: Path) -> None:
    text = doc(flows=FLOWS + '\nheaders = { set = { "a b" = "x" } }')
    (problem,) = problems_of(here, text)
    assert problem.key == 'flow[0].headers.set."a b"'
    assert problem.line == len(text.splitlines())


def test_problems_outside_the_cwd_keep_the_name_given(here: Path) -> None:
    (here / "sub").mkdir()
    (here / "sub" / "r.toml").write_text(doc(server=SERVER + "\nworkers = 0"))
    with pytest.raises(ConfigError) as caught:
        load_config(os.path.join("sub", "r.toml"))
    assert str(caught.value).startswith("sub/r.toml:3: server.workers:")


def test_a_cache_table_loads_with_its_defaults(here: Path) -> None:
    config = load(here, doc(flows=FLOWS + '\nmethods = ["GET"]\nallow = { groups = ["ops"] }\n'
                                         'cache = { scope = "group", ttl = "30s", max_bytes = "8MiB" }'))
    cache = config.flows[0].cache
    assert cache == CacheConfig(scope="group", ttl=30.0, max_bytes=8 * 1024 * 1024)
    assert entry_limit(cache) == 1024 * 1024
    assert load(here, doc()).flows[0].cache is None
