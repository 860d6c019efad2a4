"""A files sink and response caches in one relayd behind the shipped lighttpd.conf, attacked.

One policy serves files (X-Sendfile through lighttpd, relayd's own delivery otherwise)
and caches upstream answers in every scope, next to a rate limit, token exchange and
just-in-time grants. Each test tries to make one of them leak into another: an answer
for one identity, virtual host or upstream target served for another; a cached answer
after its caller lost access; a file outside the root, or a file lighttpd was told to
send by someone other than relayd; a half-old half-new download.

The upstream numbers its answers (X-Upstream-Seq) and logs the target it received, so an
answer can be traced to the upstream request that made it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from support import Lighttpd, Relayd, Response, Upstream, exchange, poll_until, relay_config, request_bytes
from support.files import FILES_FLOWS, SECRET, SMALL, make_tree
from support.procs import ROOT, child_env
from support.rawhttp import Address, connect
from support.stack import token_flow
from test_e2e_tokens import ACCESS, EXCHANGE
from test_identity_support import AUD, ISS, Key, ec_key, good_claims, jwks

FLOWS = """
[tokens]
issuer = "https://relay.example.test"

[[flow]]
name = "pub"
path = "/pub/"
methods = ["GET", "HEAD"]
sink = "up"
cache = { scope = "public", ttl = "1h" }

[[flow]]
name = "mine"
path = "/mine/"
methods = ["GET", "HEAD"]
sink = "up"
cache = { scope = "subject", ttl = "1h" }

[[flow]]
name = "mirror"
path = "/mirror/"
methods = ["GET"]
sink = "up"

[[flow]]
name = "team"
path = "/team/"
methods = ["GET"]
allow = { groups = ["writers", "readers"] }
deny = { groups = ["suspended"] }
sink = "up"
cache = { scope = "group", ttl = "1h" }

[[flow]]
name = "fwd"
path = "/fwd/"
methods = ["GET"]
headers = { forward_authorization = true }
sink = "up"
cache = { scope = "public", ttl = "1h" }

[[flow]]
name = "limited"
path = "/limited/"
methods = ["GET"]
sink = "up"
rate_limit = { per = "subject", rate = "1/h", burst = 2 }
cache = { scope = "subject", ttl = "1h" }

[[flow]]
name = "vault"
path = "/vault/"
methods = ["GET"]
allow = { groups = ["vault-users"] }
approval = { approvers = { groups = ["data-owners"] }, max_ttl = "1h" }
max_token_ttl = "10m"
sink = "up"
cache = { scope = "subject", ttl = "1h" }
"""


class Hostile:
    """upstream, relayd with FILES_FLOWS (/files/, /streamed/, /secure-files/ for group
    "readers") and FLOWS, lighttpd (the shipped conf) with the files root as its
    x-sendfile-docroot; tokens are minted per call."""

    def __init__(self, workdir: Path, key: Key, server: str = "") -> None:
        self.workdir = workdir
        self.key = key
        self.root = workdir / "root"
        self._listener = make_tree(self.root, workdir / "outside")
        (workdir / "jwks.json").write_bytes(jwks(key))
        self.upstream = Upstream(workdir)
        extra = token_flow(workdir / "jwks.json", ISS, AUD, "ES256") + FILES_FLOWS.format(root=self.root) + FLOWS
        text = relay_config(workdir, self.upstream.url, extra=extra,
                            server=f'identity_key = "{workdir / "identity.pem"}"\n{server}')
        try:
            self.relayd = Relayd(workdir, text)
            self.lighttpd = Lighttpd(workdir, self.relayd.unix, extra_env={"RELAY_FILES_ROOTS": str(self.root)})
        except BaseException:
            self.close()
            raise

    def token(self, sub: str, groups: list[str], jti: str | None = None) -> str:
        now = good_claims()["iat"]
        claims = good_claims(sub=sub, jti=jti or f"jti-{sub}-{'-'.join(groups)}", groups=groups, exp=now + 3600)
        return self.key.token(claims).decode()

    def get(self, token: str | None, target: str, method: str = "GET", headers: tuple[tuple[str, str], ...] = (),
            via: Address | None = None, host: str = "relay.test") -> Response:
        auth = (("Authorization", "Bearer " + token),) if token else ()
        return exchange(via or self.lighttpd.address, request_bytes(method, target, auth + headers, host=host))

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "relay.ctl", "--socket", str(self.workdir / "admin.sock"), "--json", *args],
            capture_output=True, text=True, timeout=60, cwd=ROOT, env=child_env())

    def target_of(self, response: Response) -> str:
        """The target the upstream received for the request that made ``response``."""
        seq = int(response.get("X-Upstream-Seq") or 0)
        return next(r["target"] for r in self.upstream.records() if r.get("seq") == seq and "target" in r)

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (self.workdir / "audit.jsonl").read_text().splitlines()]

    def close(self) -> None:
        for part in ("lighttpd", "relayd", "upstream"):
            if hasattr(self, part):
                getattr(self, part).stop()
        self._listener.close()


@pytest.fixture(scope="module")
def key() -> Key:
    return ec_key("ec-hostile")


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, key: Key) -> Iterator[Hostile]:
    running = Hostile(tmp_path_factory.mktemp("hostile"), key)
    yield running
    running.close()


def seq(response: Response) -> str | None:
    return response.get("X-Upstream-Seq")


def test_files_and_cached_answers_are_served_by_one_config(front: Hostile) -> None:
    reader = front.token("rita", ["readers"])
    sent = front.get(reader, "/secure-files/small.txt")
    assert (sent.status, sent.body, sent.get("X-Sendfile")) == (200, SMALL, None)
    record = next(r for r in front.audit() if r.get("request_id") == sent.get("X-Relay-Request-Id"))
    assert (record["delivery"], record["bytes_out"]) == ("x-sendfile", 0)  # lighttpd sent it
    first = front.get(reader, "/pub/one?body=64")
    again = front.get(reader, "/pub/one?body=64")
    assert (first.get("X-Relay-Cache"), again.get("X-Relay-Cache")) == ("miss", "hit")
    assert again.body == first.body and len(first.body) == 64
    assert front.get(None, "/secure-files/small.txt").status == 401
    assert front.get(front.token("olga", ["others"]), "/secure-files/small.txt").status == 403


@pytest.mark.parametrize("field", ["X-Sendfile", "X-Sendfile2", "X-LIGHTTPD-send-file", "x-sendfile", "X_Sendfile"])
def test_an_upstream_answer_cannot_make_lighttpd_send_a_file_cached_or_not(front: Hostile, field: str) -> None:
    path = str(front.root / "small.txt")
    value = f"{path} 0-10" if field == "X-Sendfile2" else path
    target = f"/pub/sendfile-{field}?body=32&header={quote(f'{field}:{value}', safe='')}"
    reader = front.token("rita", ["readers"])
    for expected in ("miss", "hit"):
        answer = front.get(reader, target)
        assert answer.status == 200 and answer.get("X-Relay-Cache") == expected, str(answer)
        assert len(answer.body) == 32 and SMALL[:10] not in answer.body
        assert all(name.lower().replace("_", "-") not in ("x-sendfile", "x-sendfile2", "x-lighttpd-send-file")
                   for name, _ in answer.headers)


def test_a_client_sent_x_sendfile_header_is_not_obeyed(front: Hostile) -> None:
    secret = str(front.workdir / "outside" / "secret.txt")
    reader = front.token("rita", ["readers"])
    for field in ("X-Sendfile", "X-LIGHTTPD-send-file", "X-Accel-Redirect"):
        own = front.get(reader, "/secure-files/small.txt", headers=((field, secret),))
        assert (own.status, own.body) == (200, SMALL)
        relayed = front.get(reader, "/pub/client-sendfile?body=16", headers=((field, secret),))
        assert relayed.status == 200 and len(relayed.body) == 16 and SECRET not in relayed.body
    # the front replaces a client's X-Sendfile-Type: lighttpd still sends the file
    asked_other = front.get(reader, "/secure-files/small.txt", headers=(("X-Sendfile-Type", "X-Accel-Redirect"),))
    assert (asked_other.status, asked_other.body) == (200, SMALL)


@pytest.mark.parametrize("asks", [
    (("X-Sendfile-Type", "X-Sendfile"),),
    (("x-sendfile-type", "x-sendfile"),),
    (("X-Sendfile-Type", "X-Sendfile"), ("X-Forwarded-For", "127.0.0.1")),
    (("X_Sendfile_Type", "X-Sendfile"),),
])
def test_a_direct_client_asking_for_x_sendfile_gets_the_file_itself(front: Hostile, asks: tuple[tuple[str, str], ...]) -> None:
    reader = front.token("rita", ["readers"])
    answer = front.get(reader, "/secure-files/small.txt", headers=asks, via=front.relayd.tcp)
    assert (answer.status, answer.body, answer.get("X-Sendfile")) == (200, SMALL, None)


def test_a_group_entry_follows_the_group_of_each_token(front: Hostile) -> None:
    target = "/team/board?body=subject"
    as_writer = front.get(front.token("alice", ["writers"]), target)
    assert (as_writer.body, as_writer.get("X-Relay-Cache")) == (b"alice", "miss")
    as_reader = front.get(front.token("alice", ["readers"]), target)  # alice moved to readers
    assert as_reader.get("X-Relay-Cache") == "miss" and seq(as_reader) != seq(as_writer)
    assert seq(front.get(front.token("carol", ["readers"]), target)) == seq(as_reader)
    # holding both: the first of the flow's allow.groups decides, as for every other caller
    both = front.get(front.token("alice", ["readers", "writers"]), target)
    assert seq(both) == seq(as_writer)
    for groups in ([], ["others"], ["writers", "suspended"]):
        refused = front.get(front.token("alice", groups), target)
        assert refused.status == 403 and seq(refused) is None and b"alice" not in refused.body
        assert refused.get("X-Relay-Cache") is None


#: requests for one upstream resource, spelled apart; the upstream logs what it received
SPELLINGS = [
    "/n/a?x=1&y=2", "/n/a?y=2&x=1", "/n/%61?x=1&y=2", "/n/b/../a?x=1&y=2", "/n/./a?x=1&y=2",
    "/n/a?x=%31&y=2", "/n/a?x=1&amp;y=2", "/n/a?x=1&y=2&",
    "/n/a%3Bb", "/n/a;b", "/n/a%2Bb", "/n/a+b", "/n/%C3%A9", "/n/%c3%a9", "/n/a?q=a+b", "/n/a?q=a%20b",
    "/n/a?q=a%2Bb", "/n/a?q=%c3%a9", "/n/a?q=%C3%A9", "/n/A", "/n/a/", "/n/a?", "/n/a",
]


@pytest.mark.parametrize("way", ["lighttpd", "tcp"])
def test_an_entry_serves_only_requests_the_upstream_sees_as_the_same(front: Hostile, way: str) -> None:
    via = front.lighttpd.address if way == "lighttpd" else front.relayd.tcp
    alice, bob = front.token("alice", ["writers"]), front.token("bob", ["writers"])
    tag = f"/{way}"
    for spelling in SPELLINGS:
        # what the upstream receives for this spelling, through a flow that does not cache
        mirrored = front.target_of(front.get(alice, f"/mirror{tag}{spelling}", via=via))
        expected = mirrored.replace("/mirror/", "/mine/", 1)
        for who in (alice, bob):
            for _ in range(2):
                answer = front.get(who, f"/mine{tag}{spelling}", via=via)
                assert answer.status == 200, f"{spelling}: {answer}"
                assert front.target_of(answer) == expected, f"{spelling} was answered for {front.target_of(answer)}"
                record = next(r for r in front.upstream.records() if r.get("seq") == int(seq(answer) or 0))
                subject = dict((k.lower(), v) for k, v in record["headers"]).get("x-relay-subject")
                assert subject == ("alice" if who == alice else "bob"), f"{spelling}: another subject's entry"


def test_one_entry_never_serves_another_virtual_host(front: Hostile) -> None:
    reader = front.token("rita", ["readers"])
    first = front.get(reader, "/pub/vhost?body=host", host="a.example.test")
    assert (first.body, first.get("X-Relay-Cache")) == (b"a.example.test", "miss")
    other = front.get(reader, "/pub/vhost?body=host", host="b.example.test")
    assert other.body == b"b.example.test", "an entry for one Host served another"
    again = front.get(reader, "/pub/vhost?body=host", host="a.example.test")
    assert (again.body, again.get("X-Relay-Cache")) == (b"a.example.test", "hit")


def test_an_entry_stored_under_one_vary_is_not_found_under_another(front: Hostile) -> None:
    target = "/pub/vary-shift?body=subject&header_from=X-Answer-Field"
    alice = front.get(front.token("alice", ["writers"]), target,
                      headers=(("X-Answer-Field", "Vary: X-Team"), ("X-Team", "k")))
    assert alice.body == b"alice"
    front.get(front.token("carol", ["readers"]), target,
              headers=(("X-Answer-Field", "Vary: X-Locale"), ("X-Locale", "z")))
    # mallory's X-Locale has the value of alice's X-Team: the values match, the names do not
    mallory = front.get(front.token("mallory", ["readers"]), target,
                        headers=(("X-Answer-Field", "Vary: X-Locale"), ("X-Locale", "k")))
    assert mallory.body == b"mallory" and mallory.get("X-Relay-Cache") == "miss"


def test_vary_cookie_keys_on_the_cookie(front: Hostile) -> None:
    target = "/pub/vary-cookie?body=subject&header=Vary%3ACookie"
    alice = front.get(front.token("alice", ["writers"]), target, headers=(("Cookie", "s=alice"),))
    carol = front.get(front.token("carol", ["readers"]), target, headers=(("Cookie", "s=carol"),))
    assert (alice.body, carol.body) == (b"alice", b"carol")
    same_cookie = front.get(front.token("mallory", ["readers"]), target, headers=(("Cookie", "s=carol"),))
    assert seq(same_cookie) == seq(carol)  # public: the upstream said the cookie alone decides
    no_cookie = front.get(front.token("mallory", ["readers"]), target)
    assert no_cookie.body == b"mallory"


@pytest.mark.parametrize("flow", ["pub", "fwd", "team"])
def test_vary_authorization_never_shares_an_answer_between_callers(front: Hostile, flow: str) -> None:
    target = f"/{flow}/vary-auth?body=subject&header=Vary%3AAuthorization"
    answers = [front.get(front.token(who, ["writers"]), target) for who in ("alice", "bob", "alice")]
    assert [a.body for a in answers] == [b"alice", b"bob", b"alice"]
    assert answers[1].get("X-Relay-Cache") == "miss"


def test_get_after_head_fetches_the_whole_body_and_head_after_get_is_a_hit(front: Hostile) -> None:
    alice = front.token("alice", ["writers"])
    target = "/mine/head-first?body=100"
    head = front.get(alice, target, method="HEAD")
    assert (head.status, head.body, head.get("Content-Length")) == (200, b"", "100")
    whole = front.get(alice, target)
    assert whole.status == 200 and len(whole.body) == 100 and whole.get("X-Relay-Cache") == "miss"
    for method in ("HEAD", "GET"):
        again = front.get(alice, target, method=method)
        assert again.get("X-Relay-Cache") == "hit" and seq(again) == seq(whole)
        assert again.get("Content-Length") == "100" and again.body == (b"" if method == "HEAD" else whole.body)


def test_after_sub_revocation_no_cached_answer_head_or_304(front: Hostile) -> None:
    token = front.token("revokee", ["writers"])
    targets = ["/mine/rv?body=subject&header=ETag%3A%22r1%22", "/team/rv?body=subject&header=ETag%3A%22r1%22",
               "/pub/rv?body=subject&header=ETag%3A%22r1%22"]
    for target in targets:
        front.get(token, target)
        assert front.get(token, target).get("X-Relay-Cache") == "hit"
    assert front.ctl("revoke", "sub", "revokee", "--ttl", "1h").returncode == 0
    fresh = front.token("revokee", ["writers"], jti="another-jti")
    for target in targets:
        for who in (token, fresh):
            for method, headers in (("GET", ()), ("HEAD", ()), ("GET", (("If-None-Match", '"r1"'),))):
                refused = front.get(who, target, method=method, headers=headers)
                assert refused.status == 401 and seq(refused) is None, f"{method} {target} {headers}: {refused}"
                assert b"revokee" not in refused.body and refused.get("X-Relay-Cache") is None


def _swap(front: Hostile, token: str) -> str:
    form = f"grant_type={EXCHANGE}&subject_token={token}&subject_token_type={ACCESS}&scope=flow:vault"
    answer = exchange(front.lighttpd.address, request_bytes(
        "POST", "/oauth/token", [("Content-Type", "application/x-www-form-urlencoded")], form.encode()))
    assert answer.status == 200, str(answer)
    return str(json.loads(answer.body)["access_token"])


def _grant_call(front: Hostile, path: str, token: str, body: dict[str, str] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else b""
    answer = exchange(front.lighttpd.address, request_bytes(
        "POST", path, [("Authorization", "Bearer " + token), ("Content-Type", "application/json")], data))
    assert answer.status in (200, 202), str(answer)
    return dict(json.loads(answer.body))


def test_after_a_grant_is_revoked_its_cached_answers_are_refused(front: Hostile) -> None:
    asker, owner = front.token("gina", ["analysts"]), front.token("olivia", ["data-owners"])
    grant = _grant_call(front, "/oauth/grants", asker, {"flow": "vault", "reason": "audit", "ttl": "30m"})
    _grant_call(front, f"/oauth/grants/{grant['grant_id']}/approve", owner)
    granted = _swap(front, asker)
    target = "/vault/ledger?body=subject&header=ETag%3A%22g1%22"
    first = front.get(granted, target)
    assert (first.status, first.body, first.get("X-Relay-Cache")) == (200, b"gina", "miss")
    assert front.get(granted, target).get("X-Relay-Cache") == "hit"
    assert front.ctl("grants", "revoke", grant["grant_id"]).returncode == 0
    for method, headers in (("GET", ()), ("HEAD", ()), ("GET", (("If-None-Match", '"g1"'),))):
        refused = front.get(granted, target, method=method, headers=headers)
        assert refused.status == 401 and seq(refused) is None and b"gina" not in refused.body, str(refused)


def test_a_cache_hit_still_counts_against_the_rate_limit(front: Hostile) -> None:
    token = front.token("rlimit", ["writers"])
    answers = [front.get(token, "/limited/x?body=8") for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 429]
    assert [a.get("X-Relay-Cache") for a in answers[:2]] == ["miss", "hit"]
    assert answers[2].get("Retry-After") and seq(answers[2]) is None
    assert len([r for r in front.upstream.records() if r.get("target") == "/limited/x?body=8"]) == 1


@pytest.mark.parametrize("status", [401, 403, 407])
@pytest.mark.parametrize("flow", ["pub", "mine"])
def test_refusals_from_the_upstream_are_never_kept(front: Hostile, status: int, flow: str) -> None:
    target = f"/{flow}/refused-{status}?status={status}&header=Cache-Control%3Apublic,%20max-age%3D600"
    token = front.token("alice", ["writers"])
    first, second = front.get(token, target), front.get(token, target)
    assert (first.status, second.status) == (status, status)
    assert second.get("X-Relay-Cache") == "miss" and seq(second) != seq(first)


def test_relays_own_refusals_never_reach_or_fill_the_cache(front: Hostile) -> None:
    target = "/mine/own-refusal?body=subject"
    for headers in ((), (("Authorization", "Bearer not-a-token"),)):
        refused = exchange(front.lighttpd.address, request_bytes("GET", target, headers))
        assert refused.status == 401 and refused.get("X-Relay-Cache") is None
    stored = front.get(front.token("alice", ["writers"]), target)
    assert stored.get("X-Relay-Cache") == "miss" and stored.body == b"alice"


def _download_in_two_parts(address: Address, target: str, headers: list[tuple[str, str]],
                           between: Any, timeout: float = 20) -> tuple[int, dict[str, str], bytes, bool]:
    """A download read up to its head (the file is open by then: lighttpd and relayd open it
    before they answer), then ``between()``, then to its end; (status, head fields, body,
    whether the connection closed before Content-Length bytes came)."""
    sock = connect(address, timeout)
    try:
        sock.sendall(request_bytes("GET", target, headers + [("Connection", "close")]))
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(fields["content-length"])
        between()
        while len(body) < length:
            piece = sock.recv(1 << 20)
            if not piece:
                return int(lines[0].split()[1]), fields, body, True
            body += piece
        return int(lines[0].split()[1]), fields, body, False
    finally:
        sock.close()


OLD = bytes(range(256)) * (16 * 1024)  # 4 MiB
NEW = bytes(reversed(range(256))) * (16 * 1024)


@pytest.mark.parametrize("flow", ["secure-files", "streamed"])
def test_a_ranged_download_while_the_file_is_replaced_is_all_old(front: Hostile, flow: str) -> None:
    name = f"replaced-{flow}.bin"
    (front.root / name).write_bytes(OLD)
    staged = front.root / f".{name}.new"

    def replace() -> None:
        staged.write_bytes(NEW)
        os.replace(staged, front.root / name)

    reader = front.token("rita", ["readers"])
    status, fields, body, cut = _download_in_two_parts(
        front.lighttpd.address, f"/{flow}/{name}",
        [("Authorization", "Bearer " + reader), ("Range", "bytes=1000-3999999")], replace)
    assert (status, cut, fields.get("content-range")) == (206, False, f"bytes 1000-3999999/{len(OLD)}")
    assert body == OLD[1000:4000000]
    # lighttpd's stat cache may serve the old file for its next second, as it does static files
    poll_until(lambda: front.get(reader, f"/{flow}/{name}", headers=(("Range", "bytes=1000-1999"),)).body
               == NEW[1000:2000], 5, "the new file")


def test_relay_cuts_a_download_whose_file_shrinks_instead_of_hanging(front: Hostile) -> None:
    name = "shrinking.bin"
    (front.root / name).write_bytes(OLD)
    started = time.monotonic()
    status, fields, body, cut = _download_in_two_parts(
        front.relayd.tcp, f"/streamed/{name}", [], lambda: os.truncate(front.root / name, 4096))
    # what was sent is not held against the file: sendfile hands the socket page-cache pages,
    # and a truncated file's pages may change before they go out (lighttpd's the same)
    assert status == 200 and fields["content-length"] == str(len(OLD))
    assert cut and len(body) < len(OLD)
    assert time.monotonic() - started < 15


@pytest.mark.parametrize("way", ["lighttpd", "tcp"])
def test_a_symlink_swapped_in_after_the_first_request_is_refused(front: Hostile, way: str) -> None:
    via = front.lighttpd.address if way == "lighttpd" else front.relayd.tcp
    name, folder = f"swap-{way}.txt", front.root / f"dir-{way}"
    (front.root / name).write_bytes(b"inside\n")
    folder.mkdir()
    (folder / "secret.txt").write_bytes(b"inside too\n")
    for target, content in ((f"/streamed/{name}", b"inside\n"), (f"/streamed/dir-{way}/secret.txt", b"inside too\n")):
        assert front.get(None, target, via=via).body == content
    link = front.root / f".{name}.link"
    link.symlink_to(front.workdir / "outside" / "secret.txt")
    os.replace(link, front.root / name)
    (folder / "secret.txt").unlink()
    folder.rmdir()
    (front.root / f"dir-{way}").symlink_to("../outside")
    for target in (f"/streamed/{name}", f"/streamed/dir-{way}/secret.txt"):
        for method in ("GET", "HEAD"):
            refused = front.get(None, target, method=method, via=via)
            assert refused.status == 404 and SECRET not in refused.body, f"{method} {target}: {refused}"
    inside = front.root / f".{name}.inside"
    inside.symlink_to("small.txt")
    os.replace(inside, front.root / name)
    assert front.get(None, f"/streamed/{name}", via=via).body == SMALL  # a link that stays inside is followed


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory, key: Key) -> Iterator[Hostile]:
    running = Hostile(tmp_path_factory.mktemp("workers"), key, server="workers = 2")
    yield running
    running.close()


def _upstream_count(stack: Hostile, target: str) -> int:
    return len([r for r in stack.upstream.records() if r.get("target") == target])


def _until_both_workers_hold(stack: Hostile, token: str, target: str, already: int) -> None:
    """Ask over fresh TCP connections (SO_REUSEPORT spreads them over the workers) until each
    worker has fetched ``target`` once more than ``already`` times in all."""
    for _ in range(60):
        stack.get(token, target, via=stack.relayd.tcp)
        if _upstream_count(stack, target) >= already + 2:
            return
    raise AssertionError("the requests never reached both workers")


def test_a_purge_reaches_both_workers(workers: Hostile) -> None:
    alice, bob = workers.token("alice", ["writers"]), workers.token("bob", ["writers"])
    target = "/mine/both?body=subject"
    for token in (alice, bob):
        _until_both_workers_hold(workers, token, target, _upstream_count(workers, target))
    fetched = _upstream_count(workers, target)
    for _ in range(10):  # every worker holds both entries now: nothing more reaches the upstream
        assert workers.get(alice, target, via=workers.relayd.tcp).get("X-Relay-Cache") == "hit"
    assert _upstream_count(workers, target) == fetched
    purged = workers.ctl("cache", "purge", "--flow", "mine", "--subject", "alice")
    assert purged.returncode == 0 and json.loads(purged.stdout)["purged"] == 2, purged.stdout + purged.stderr
    _until_both_workers_hold(workers, alice, target, fetched)
    for _ in range(10):
        answer = workers.get(bob, target, via=workers.relayd.tcp)
        assert (answer.get("X-Relay-Cache"), answer.body) == ("hit", b"bob")
    whole = workers.ctl("cache", "purge", "--flow", "mine")
    assert whole.returncode == 0 and json.loads(whole.stdout)["purged"] == 4, whole.stdout
    poll_until(lambda: workers.get(bob, target, via=workers.relayd.tcp).get("X-Relay-Cache") == "miss", 5,
               "a miss after the purge")
