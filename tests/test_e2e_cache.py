"""The response cache end to end: client → lighttpd → relayd → upstream.

The upstream numbers its answers (X-Upstream-Seq), so a cached answer is the one with the
number of the request that stored it; with body=subject it answers each caller with its
own name. Entries never cross scopes (two subjects, the same URL, two answers), a group's
entry serves the group only, a revoked token gets 401 and never the cached body, a purge
makes the next request a miss, and Cache-Control, Vary and Set-Cookie decide what is
kept. Stale entries with a validator are revalidated (the upstream's 304 answers from the
entry), and clients' conditional requests are answered from the cache.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from support import Lighttpd, Relayd, Response, Upstream, exchange, relay_config, request_bytes
from support.procs import ROOT, child_env
from support.stack import token_flow
from test_identity_support import AUD, ISS, Key, ec_key, good_claims, jwks

#: after token_flow's issuer "idp"
FLOWS = """
[[flow]]
name = "mine"
path = "/mine/"
methods = ["GET"]
sink = "up"
cache = { scope = "subject", ttl = "1h", max_bytes = "4KiB" }

[[flow]]
name = "team"
path = "/team/"
methods = ["GET"]
allow = { groups = ["writers", "readers"] }
sink = "up"
cache = { scope = "group", ttl = "1h" }

[[flow]]
name = "everyone"
path = "/everyone/"
methods = ["GET"]
sink = "up"
cache = { scope = "public", ttl = "1h" }
"""

PEOPLE = {"alice": "writers", "bob": "writers", "carol": "readers", "mallory": "readers"}


class CacheStack:
    def __init__(self, workdir: Path, key: Key) -> None:
        self.workdir = workdir
        jwks_file = workdir / "jwks.json"
        jwks_file.write_bytes(jwks(key))
        self.upstream = Upstream(workdir)
        text = relay_config(workdir, self.upstream.url, extra=token_flow(jwks_file, ISS, AUD, "ES256") + FLOWS)
        try:
            self.relayd = Relayd(workdir, text)
            self.lighttpd = Lighttpd(workdir, self.relayd.unix)
        except BaseException:
            self.close()
            raise
        now = good_claims()["iat"]
        self.tokens = {sub: key.token(good_claims(sub=sub, jti=f"jti-{sub}", groups=[group], exp=now + 3600))
                       for sub, group in PEOPLE.items()}

    def get(self, who: str, target: str, method: str = "GET", headers: tuple[tuple[str, str], ...] = ()) -> Response:
        auth = (("Authorization", "Bearer " + self.tokens[who].decode()),)
        return exchange(self.lighttpd.address, request_bytes(method, target, auth + headers))

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "relay.ctl", "--socket", str(self.workdir / "admin.sock"), *args],
            capture_output=True, text=True, timeout=60, cwd=ROOT, env=child_env())

    def upstream_saw(self, target: str) -> list[dict[str, Any]]:
        """The requests for ``target`` that reached the upstream, in order (lighttpd decodes
        some of a query's escapes on the way, so targets compare unquoted)."""
        return [r for r in self.upstream.records() if unquote(r.get("target", "")) == unquote(target)]

    def close(self) -> None:
        for part in ("lighttpd", "relayd", "upstream"):
            if hasattr(self, part):
                getattr(self, part).stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CacheStack]:
    running = CacheStack(tmp_path_factory.mktemp("cache"), ec_key("ec-cache"))
    yield running
    running.close()


def seq(response: Response) -> str | None:
    return response.get("X-Upstream-Seq")


def test_two_subjects_never_share_an_entry(stack: CacheStack) -> None:
    first = stack.get("alice", "/mine/report?body=100")
    assert first.status == 200 and first.get("X-Relay-Cache") == "miss"
    again = stack.get("alice", "/mine/report?body=100")
    assert again.get("X-Relay-Cache") == "hit" and seq(again) == seq(first)
    assert again.body == first.body and again.get("Age") is not None
    other = stack.get("bob", "/mine/report?body=100")
    assert other.get("X-Relay-Cache") == "miss" and seq(other) != seq(first)
    assert seq(stack.get("bob", "/mine/report?body=100")) == seq(other)


def test_a_group_entry_serves_its_group_only(stack: CacheStack) -> None:
    alice = stack.get("alice", "/team/board")
    bob = stack.get("bob", "/team/board")
    assert bob.get("X-Relay-Cache") == "hit" and seq(bob) == seq(alice)
    carol = stack.get("carol", "/team/board")
    assert carol.get("X-Relay-Cache") == "miss" and seq(carol) != seq(alice)


def test_a_public_entry_serves_everyone_who_passes(stack: CacheStack) -> None:
    alice = stack.get("alice", "/everyone/news")
    carol = stack.get("carol", "/everyone/news")
    assert carol.get("X-Relay-Cache") == "hit" and seq(carol) == seq(alice)
    anonymous = exchange(stack.lighttpd.address, request_bytes("GET", "/everyone/news"))
    assert anonymous.status == 401 and seq(anonymous) is None


@pytest.mark.parametrize(
    ("target", "cached"),
    [
        ("/everyone/a?header=Cache-Control%3Ano-store", False),
        ("/everyone/b?header=Cache-Control%3Aprivate", False),
        ("/mine/c?header=Cache-Control%3Aprivate", True),
        ("/everyone/d?header=Cache-Control%3Ano-cache", False),
        ("/everyone/e?header=Set-Cookie%3As%3D1", False),
        ("/mine/f?header=Set-Cookie%3As%3D1", True),
        ("/everyone/g?header=Vary%3A*", False),
        ("/everyone/h?status=500", False),
        ("/everyone/i?status=404", False),
        ("/everyone/j?status=404&header=Cache-Control%3Amax-age%3D60", True),
    ],
)
def test_what_the_upstream_allows_is_kept(stack: CacheStack, target: str, cached: bool) -> None:
    first = stack.get("alice", target)
    second = stack.get("alice", target)
    assert first.get("X-Relay-Cache") == "miss"
    assert (seq(second) == seq(first)) is cached
    assert second.get("X-Relay-Cache") == ("hit" if cached else "miss")


def test_max_age_zero_and_s_maxage_zero_for_a_shared_scope_are_not_kept(stack: CacheStack) -> None:
    for target in ("/mine/k?header=Cache-Control%3Amax-age%3D0", "/team/l?header=Cache-Control%3Amax-age%3D60%2C%20s-maxage%3D0"):
        first = stack.get("alice", target)
        assert seq(stack.get("alice", target)) != seq(first)
    kept = stack.get("alice", "/mine/m?header=Cache-Control%3Amax-age%3D60%2C%20s-maxage%3D0")  # s-maxage is for shared scopes
    assert seq(stack.get("alice", "/mine/m?header=Cache-Control%3Amax-age%3D60%2C%20s-maxage%3D0")) == seq(kept)


def test_vary_keys_on_the_named_header(stack: CacheStack) -> None:
    target = "/everyone/v?header=Vary%3AAccept-Language"
    english = stack.get("alice", target, headers=(("Accept-Language", "en"),))
    french = stack.get("alice", target, headers=(("Accept-Language", "fr"),))
    assert seq(french) != seq(english)
    assert seq(stack.get("carol", target, headers=(("Accept-Language", "fr"),))) == seq(french)


def test_a_client_conditional_request_gets_304_and_head_the_head(stack: CacheStack) -> None:
    target = "/mine/tagged?body=64&header=ETag%3A%22v1%22"
    first = stack.get("alice", target)
    assert first.get("ETag") == '"v1"'
    unchanged = stack.get("alice", target, headers=(("If-None-Match", '"v0", "v1"'),))
    assert unchanged.status == 304 and unchanged.body == b"" and unchanged.get("X-Relay-Cache") == "hit"
    changed = stack.get("alice", target, headers=(("If-None-Match", '"v0"'),))
    assert changed.status == 200 and changed.body == first.body
    head = stack.get("alice", target, method="HEAD")
    assert head.status == 200 and head.body == b"" and head.get("Content-Length") == "64"
    assert seq(head) == seq(first)


def test_a_body_over_the_entry_limit_streams_and_is_not_kept(stack: CacheStack) -> None:
    # /mine/ holds 4 KiB, 512 bytes an entry
    first = stack.get("alice", "/mine/big?fill=200000&te=chunked")
    assert first.status == 200 and len(first.body) == 200000
    assert seq(stack.get("alice", "/mine/big?fill=200000&te=chunked")) != seq(first)


def test_least_recently_used_entries_go_under_max_bytes(stack: CacheStack) -> None:
    kept = {name: stack.get("bob", f"/mine/lru{name}?body=400") for name in range(12)}
    assert seq(stack.get("bob", "/mine/lru0?body=400")) != seq(kept[0])  # evicted long ago
    assert seq(stack.get("bob", "/mine/lru11?body=400")) == seq(kept[11])


def test_a_revoked_token_gets_401_never_the_cached_body(stack: CacheStack) -> None:
    targets = ("/mine/secret?body=subject", "/team/secret?body=subject", "/everyone/secret?body=subject")
    cached = {target: stack.get("mallory", target) for target in targets}
    for target in targets:
        assert stack.get("mallory", target).get("X-Relay-Cache") == "hit"
    result = stack.ctl("--json", "revoke", "sub", "mallory", "--ttl", "1h")
    assert result.returncode == 0, result.stderr
    for target in targets:
        refused = stack.get("mallory", target)
        assert refused.status == 401 and seq(refused) is None and b"mallory" not in refused.body
        assert refused.get("X-Relay-Cache") is None
    # the public entry mallory stored still serves those who may see it
    assert stack.get("alice", targets[2]).body == cached[targets[2]].body == b"mallory"


def test_the_same_url_answered_differently_per_subject_is_never_crossed(stack: CacheStack) -> None:
    target = "/mine/whoami?body=subject"
    answers = {who: stack.get(who, target) for who in ("alice", "bob")}
    assert answers["alice"].body == b"alice" and answers["bob"].body == b"bob"
    for _ in range(2):
        for who in ("bob", "alice"):
            again = stack.get(who, target)
            assert again.get("X-Relay-Cache") == "hit" and again.body == who.encode()
    carol = stack.get("carol", "/team/whoami?body=subject")  # readers
    alice = stack.get("alice", "/team/whoami?body=subject")  # writers: not carol's group
    assert (carol.body, alice.body) == (b"carol", b"alice") and alice.get("X-Relay-Cache") == "miss"
    assert stack.get("bob", "/team/whoami?body=subject").body == b"alice"  # writers share


def test_an_answer_varying_on_relays_identity_headers_is_not_shared(stack: CacheStack) -> None:
    shared = "/everyone/personal?body=subject&header=Vary%3AX-Relay-Subject"
    answers = [stack.get(who, shared) for who in ("alice", "carol", "alice")]
    assert [a.body for a in answers] == [b"alice", b"carol", b"alice"]
    assert {a.get("X-Relay-Cache") for a in answers} == {"miss"}
    own = "/mine/personal?body=subject&header=Vary%3AX-Relay-Subject"
    stack.get("alice", own)
    again = stack.get("alice", own)
    assert again.get("X-Relay-Cache") == "hit" and again.body == b"alice"


def test_purge_by_subject_then_the_whole_flow(stack: CacheStack) -> None:
    target = "/mine/purged?body=subject"
    for who in ("alice", "bob"):
        stack.get(who, target)
        assert stack.get(who, target).get("X-Relay-Cache") == "hit"
    purged = stack.ctl("--json", "cache", "purge", "--flow", "mine", "--subject", "alice")
    assert purged.returncode == 0, purged.stderr
    assert json.loads(purged.stdout)["purged"] >= 1
    assert stack.get("alice", target).get("X-Relay-Cache") == "miss"
    assert stack.get("bob", target).get("X-Relay-Cache") == "hit"
    assert stack.ctl("cache", "purge", "--flow", "mine").returncode == 0
    for who in ("alice", "bob"):
        after = stack.get(who, target)
        assert after.get("X-Relay-Cache") == "miss" and after.body == who.encode()


def test_purge_refuses_what_it_cannot_do(stack: CacheStack) -> None:
    unknown = stack.ctl("cache", "purge", "--flow", "nope")
    assert unknown.returncode == 1 and "no flow 'nope'" in unknown.stderr
    no_flow = stack.ctl("cache", "purge", "--subject", "alice")
    assert no_flow.returncode == 2 and "--subject needs --flow" in no_flow.stderr


def test_metrics_show_lookups_hit_ratio_and_bytes(stack: CacheStack) -> None:
    for _ in range(3):
        stack.get("alice", "/everyone/counted?body=1000")
    text = stack.ctl("metrics").stdout
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
              for line in text.splitlines() if line.startswith("relay_response_cache_")}
    assert values['relay_response_cache_lookups_total{flow="everyone",result="hit"}'] >= 2
    assert values['relay_response_cache_lookups_total{flow="everyone",result="miss"}'] >= 1
    assert 0 < values['relay_response_cache_hit_ratio{flow="everyone"}'] < 1
    assert values['relay_response_cache_bytes{flow="everyone"}'] >= 1000
    assert values['relay_response_cache_served_bytes_total{flow="everyone"}'] >= 2000
    assert values['relay_response_cache_entries{flow="mine"}'] >= 0


NO_CACHE_V1 = "header=ETag%3A%22v1%22&header=Cache-Control%3Ano-cache"
LAST_MODIFIED = "header=Last-Modified%3ATue,%2001%20Dec%202026%2010:00:00%20GMT&header=Cache-Control%3Amax-age%3D0"


def test_a_stale_entry_is_revalidated_by_its_etag(stack: CacheStack) -> None:
    target = f"/mine/tag?body=64&validate=1&{NO_CACHE_V1}"
    first = stack.get("alice", target)
    assert first.get("X-Relay-Cache") == "miss" and len(first.body) == 64
    again = stack.get("alice", target)
    assert again.status == 200 and again.get("X-Relay-Cache") == "revalidated"
    assert again.body == first.body and again.get("ETag") == '"v1"'
    seen = stack.upstream_saw(target)
    assert len(seen) == 2 and "If-None-Match" not in dict(seen[0]["headers"])
    assert [v for k, v in seen[1]["headers"] if k.lower() == "if-none-match"] == ['"v1"']
    # another subject's request never revalidates (nor gets) alice's entry
    bob = stack.get("bob", target)
    assert bob.get("X-Relay-Cache") == "miss"
    assert "If-None-Match" not in dict(stack.upstream_saw(target)[-1]["headers"])


def test_a_stale_entry_is_revalidated_by_its_date(stack: CacheStack) -> None:
    target = f"/mine/dated?body=10&validate=1&{LAST_MODIFIED}"
    first = stack.get("alice", target)
    again = stack.get("alice", target)
    assert again.get("X-Relay-Cache") == "revalidated" and again.body == first.body
    asked = dict(stack.upstream_saw(target)[-1]["headers"])
    assert asked.get("If-Modified-Since") == "Tue, 01 Dec 2026 10:00:00 GMT"


def test_a_new_answer_to_a_revalidation_replaces_the_entry(stack: CacheStack) -> None:
    target = f"/mine/changing?body=8&{NO_CACHE_V1}"  # no validate: always a fresh 200
    first = stack.get("alice", target)
    second = stack.get("alice", target)
    assert second.get("X-Relay-Cache") == "miss" and seq(second) != seq(first)
    assert stack.get("alice", target).get("X-Relay-Cache") == "miss"


def test_a_client_conditional_on_a_stale_entry_goes_up_as_relays_own(stack: CacheStack) -> None:
    target = f"/mine/cond?body=16&validate=1&{NO_CACHE_V1}"
    stack.get("alice", target)
    matching = stack.get("alice", target, headers=(("If-None-Match", 'W/"v1"'),))
    assert matching.status == 304 and matching.body == b"" and matching.get("X-Relay-Cache") == "revalidated"
    other = stack.get("alice", target, headers=(("If-None-Match", '"v0"'),))
    assert other.status == 200 and len(other.body) == 16 and other.get("X-Relay-Cache") == "revalidated"
    for head in stack.upstream_saw(target)[1:]:
        assert [v for k, v in head["headers"] if k.lower() == "if-none-match"] == ['"v1"']


def test_a_client_conditional_that_misses_fetches_the_whole_answer_and_keeps_it(stack: CacheStack) -> None:
    target = "/mine/first-conditional?body=20&validate=1&header=ETag%3A%22v7%22"
    first = stack.get("bob", target, headers=(("If-None-Match", '"v7"'),))
    assert first.status == 304 and first.get("X-Relay-Cache") == "miss" and first.get("ETag") == '"v7"'
    assert "If-None-Match" not in dict(stack.upstream_saw(target)[0]["headers"])
    whole = stack.get("bob", target)
    assert whole.status == 200 and whole.get("X-Relay-Cache") == "hit" and len(whole.body) == 20


def test_a_client_if_modified_since_is_answered_from_a_fresh_entry(stack: CacheStack) -> None:
    target = "/mine/since?body=12&header=Last-Modified%3ATue,%2001%20Dec%202026%2010:00:00%20GMT"
    first = stack.get("alice", target)
    later = stack.get("alice", target, headers=(("If-Modified-Since", "Wed, 02 Dec 2026 10:00:00 GMT"),))
    assert later.status == 304 and later.get("X-Relay-Cache") == "hit" and later.get("Content-Type") is None
    earlier = stack.get("alice", target, headers=(("If-Modified-Since", "Mon, 30 Nov 2026 10:00:00 GMT"),))
    assert earlier.status == 200 and earlier.body == first.body
    garbage = stack.get("alice", target, headers=(("If-Modified-Since", "yesterday"),))
    assert garbage.status == 200 and len(stack.upstream_saw(target)) == 1


def test_the_audit_record_says_hit_or_miss(stack: CacheStack) -> None:
    stack.get("alice", "/mine/audited")
    stack.get("alice", "/mine/audited")
    lines = (stack.workdir / "audit.jsonl").read_text().splitlines()
    details = [r.get("detail") for r in map(json.loads, lines) if r.get("path", r.get("target", "")).startswith("/mine/audited")]
    assert details[-2:] == ["cache miss", "cache hit"], details


def test_the_audit_record_says_revalidated(stack: CacheStack) -> None:
    target = f"/mine/audited-tag?validate=1&{NO_CACHE_V1}"
    stack.get("alice", target)
    stack.get("alice", target)
    records = [json.loads(line) for line in (stack.workdir / "audit.jsonl").read_text().splitlines()]
    details = [r.get("detail") for r in records if r.get("path", "").startswith("/mine/audited-tag")]
    assert details[-2:] == ["cache miss", "cache revalidated"], details
