"""Rate limits counted in the process, with a clock the tests move: exact counts per
key, limits AND-ed, memory bounded, buckets kept across a policy rebuild; and the
``rate_limit`` key's config errors, each with its file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import RateLimit, load_config
from relay.errors import ConfigError, RateLimited
from relay.identity import Identity
from relay.policy import Policy
from relay.ratelimit import Buckets, RateLimiter, build_limiter
from relay.responses import error_response
from relay.sinks.static import StaticSink


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def caller(subject: str, groups: tuple[str, ...] = (), issuer: str = "idp") -> Identity:
    return Identity(subject, issuer, groups, (), {}, None, "kid", 0)


def limiter(*limits: RateLimit, allowed_groups: tuple[str, ...] = (), clock: Clock | None = None) -> RateLimiter:
    return RateLimiter(tuple(Buckets(limit) for limit in limits), allowed_groups, clock or Clock())


def admitted(limits: RateLimiter, count: int, identity: Identity | None = None, client: str | None = None) -> int:
    return sum(limits.check(identity, client) is None for _ in range(count))


PER_SECOND = RateLimit(name="subject", per="subject", count=10, period=1.0, burst=5)


def test_exactly_the_burst_is_admitted_at_once_then_one_per_interval() -> None:
    clock = Clock()
    limits = limiter(PER_SECOND, clock=clock)
    assert admitted(limits, 20, caller("ann")) == 5
    refusal = limits.check(caller("ann"), None)
    assert isinstance(refusal, RateLimited) and refusal.limit == "subject" and refusal.retry_after == 1
    clock.now += 0.1  # one interval of 10/s
    assert admitted(limits, 5, caller("ann")) == 1
    clock.now += 10  # idle long enough to refill: the whole burst again, never more
    assert admitted(limits, 20, caller("ann")) == 5


def test_a_sustained_rate_is_held_to_the_limit() -> None:
    clock = Clock()
    limits = limiter(PER_SECOND, clock=clock)
    total = 0
    for _ in range(1000):  # 10 s in steps of 10 ms, 3 tries each
        total += admitted(limits, 3, caller("ann"))
        clock.now += 0.01
    assert total == 5 + 10 * 10 - 1  # the burst, then 10/s (the last interval not yet due)


def test_keys_are_independent_per_subject_group_client_and_shared_per_flow() -> None:
    by_subject = limiter(PER_SECOND)
    assert admitted(by_subject, 9, caller("ann")) == 5
    assert admitted(by_subject, 9, caller("bob")) == 5
    assert admitted(by_subject, 9, caller("ann", issuer="other")) == 5  # same subject, other issuer
    by_client = limiter(RateLimit("client", "client", 10, 1.0, 2))
    assert admitted(by_client, 5, client="10.0.0.1") == 2
    assert admitted(by_client, 5, client="10.0.0.2") == 2
    by_flow = limiter(RateLimit("flow", "flow", 10, 1.0, 3))
    assert admitted(by_flow, 2, caller("ann")) + admitted(by_flow, 2, caller("bob"), "10.0.0.3") == 3


def test_a_group_limit_counts_the_first_group_the_allow_rule_names() -> None:
    limits = limiter(RateLimit("group", "group", 10, 1.0, 3), allowed_groups=("writers", "ops"))
    assert admitted(limits, 2, caller("ann", ("staff", "writers"))) == 2
    assert admitted(limits, 2, caller("bob", ("writers", "ops"))) == 1  # the same bucket: "writers"
    assert admitted(limits, 5, caller("cat", ("ops",))) == 3
    anywhere = limiter(RateLimit("group", "group", 10, 1.0, 1))
    assert admitted(anywhere, 2, caller("ann", ("staff", "x"))) + admitted(anywhere, 2, caller("bob", ("staff",))) == 1


def test_limits_are_anded_and_a_refusal_charges_none_of_them() -> None:
    clock = Clock()
    limits = limiter(RateLimit("subject", "subject", 10, 1.0, 5), RateLimit("flow", "flow", 100, 60.0, 3), clock=clock)
    assert admitted(limits, 5, caller("ann")) == 3  # the flow limit refuses first
    refusal = limits.check(caller("bob"), None)
    assert isinstance(refusal, RateLimited) and refusal.limit == "flow" and refusal.retry_after == 1
    clock.now += 0.6  # one interval of 100/min: the flow admits one more, ann still has 2 of 5
    assert admitted(limits, 1, caller("ann")) == 1
    assert admitted(limits, 1, caller("ann")) == 0
    # each limit counts the requests charged to it and those it refused, for the metrics
    assert [(buckets.admitted, buckets.limited) for buckets in limits.limits] == [(4, 0), (4, 4)]


def test_memory_is_bounded_by_dropping_the_least_recently_seen_key() -> None:
    buckets = Buckets(PER_SECOND, max_keys=3)
    for subject in "abcd":
        buckets.charge(subject, 1.0)
    assert len(buckets) == 3 and buckets.next_arrival("a", 0.0) == pytest.approx(0.1)  # "a" starts afresh


def test_a_rebuilt_limiter_keeps_the_buckets_of_unchanged_limits() -> None:
    first = build_limiter("f", (PER_SECOND,), (), {})
    assert first is not None
    kept = {("f", PER_SECOND): first.limits[0]}
    changed = RateLimit("subject", "subject", 20, 1.0, 5)
    again = build_limiter("f", (PER_SECOND, changed), (), kept)
    assert again is not None and again.limits[0] is first.limits[0] and again.limits[1] is not first.limits[0]
    assert build_limiter("f", (), (), kept) is None


def test_a_refusal_carries_the_ratelimit_fields_and_a_json_body() -> None:
    full = limiter(RateLimit("per-min", "flow", 6000, 60.0, 1))
    assert full.check(None, None) is None
    refusal = full.check(None, None)
    assert isinstance(refusal, RateLimited)
    head, _, body = error_response(refusal, "r1", True).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 429 Too Many Requests"
    assert {b"Retry-After: 1", b'RateLimit-Policy: "per-min";q=6000;w=60', b'RateLimit: "per-min";r=0;t=1'} <= set(lines)
    assert body.startswith(b'{"error":"rate_limited","detail":"rate limit \'per-min\' exceeded: retry in 1 s"')


# --- configuration ---------------------------------------------------------------------

HEAD = """[server]
listen = ["127.0.0.1:0"]

[sink.api]
type = "http"
url = "http://127.0.0.1:9000"

[[issuer]]
name = "dev"
issuer = "https://idp.example.test/"
audiences = ["relay"]
jwks_file = "dev.json"

[[flow]]
name = "f"
path = "/f/"
sink = "api"
"""


def load(tmp_path: Path, flow: str) -> list[RateLimit] | list[str]:
    path = tmp_path / "relay.toml"
    path.write_text(HEAD + flow)
    try:
        return list(load_config(str(path)).flows[0].rate_limits)
    except ConfigError as err:
        assert all(p.file == str(path) and p.line for p in err.problems)
        return [f"{p.key}: {p.message}" for p in err.problems]


def test_rates_and_their_default_bursts(tmp_path: Path) -> None:
    limits = load(tmp_path, 'rate_limit = [{ per = "subject", rate = "100/s" }, { per = "client", rate = "6000/min" },'
                            ' { name = "hourly", per = "flow", rate = "10/h", burst = 4 }, { per = "group", rate = "500/d" }]')
    assert limits == [
        RateLimit("subject", "subject", 100, 1.0, 100), RateLimit("client", "client", 6000, 60.0, 100),
        RateLimit("hourly", "flow", 10, 3600.0, 4), RateLimit("group", "group", 500, 86400.0, 1),
    ]
    assert load(tmp_path, 'rate_limit = { per = "flow", rate = "3/s" }') == [RateLimit("flow", "flow", 3, 1.0, 3)]
    shared = load(tmp_path, 'rate_limit = { per = "flow", rate = "3/s", mode = "shared" }\n\n'
                            '[shared]\nredis = "redis://127.0.0.1:6379"')
    assert shared == [RateLimit("flow", "flow", 3, 1.0, 3, mode="shared")]


@pytest.mark.parametrize(("flow", "problem"), [
    ('rate_limit = { per = "subject", rate = "100/sec" }',
     'flow[0].rate_limit.rate: \'100/sec\' is not a rate such as "100/s", "6000/min", "10/h" or "500/d"'),
    ('rate_limit = { per = "user", rate = "1/s" }',
     "flow[0].rate_limit.per: 'user' is not one of subject, group, client, flow"),
    ('rate_limit = [{ per = "flow", rate = "1/s" }, { rate = "1/s" }]',
     "flow[0].rate_limit[1].per: required key 'per' is missing (one of subject, group, client, flow)"),
    ('rate_limit = [{ per = "flow", rate = "1/s" }, { per = "flow", rate = "9/s" }]',
     "flow[0].rate_limit[1]: another limit of this flow is named 'flow': give each a distinct name"),
    ('rate_limit = { per = "flow", rate = "1/s", burst = 0 }',
     "flow[0].rate_limit.burst: 0 is out of range (1 .. 1000000000)"),
    ('rate_limit = { per = "flow", rate = "1/s", mode = "shared" }',
     "flow[0].rate_limit: limit 'flow' has mode = \"shared\", which needs [shared] redis"),
    ('rate_limit = { per = "flow", rate = "1/s", mode = "redis" }',
     "flow[0].rate_limit.mode: 'redis' is not one of local, shared"),
    ('rate_limit = { per = "flow", rate = "1/s", window = "1s" }', "flow[0].rate_limit.window: unknown key 'window'"),
    ('rate_limit = "100/s"', "flow[0].rate_limit: must be a table or a list of tables, not the string"),
    ('auth = "none"\nrate_limit = { per = "subject", rate = "1/s" }',
     "flow[0].rate_limit.per: 'subject' needs a verified token, and this flow has auth = \"none\""),
])
def test_a_bad_rate_limit_is_named_by_file_and_key(tmp_path: Path, flow: str, problem: str) -> None:
    problems = load(tmp_path, flow)
    assert len(problems) == 1 and isinstance(problems[0], str) and problems[0].startswith(problem), problems


def test_a_reloaded_policy_keeps_the_counts_of_unchanged_limits_only(tmp_path: Path) -> None:
    def policy(limits: str, previous: Policy | None = None) -> Policy:
        path = tmp_path / "relay.toml"
        path.write_text(HEAD + limits)
        config = load_config(str(path))
        return Policy(config, {"api": StaticSink("api", b"", b"text/plain")}, 1, None, previous)

    first = policy('rate_limit = [{ per = "subject", rate = "1/h" }, { per = "flow", rate = "5/h" }]')
    limiter = first.flows[0].limiter
    assert limiter is not None and limiter.check(caller("ann"), None) is None
    assert isinstance(limiter.check(caller("ann"), None), RateLimited)  # ann's one an hour is spent
    second = policy('rate_limit = [{ per = "subject", rate = "1/h" }, { per = "flow", rate = "6/h" }]', first)
    reloaded = second.flows[0].limiter
    assert reloaded is not None and reloaded.limits[0] is limiter.limits[0] and len(reloaded.limits[1]) == 0
    assert isinstance(reloaded.check(caller("ann"), None), RateLimited)
