"""The pure parts of just-in-time grants: the config keys, a grant's forward-only states,
the book, the state file, and a grant as an entry of the shared state."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from relay.errors import StartupError
from relay.grants.file import FILE_NAME, GrantFile, documents
from relay.grants.model import RETAIN, Grant, GrantBook, Party, new_grant
from relay.grants.shared import entry_of
from relay.shared import SharedEntry
from test_config import doc, here, load, problems_of  # noqa: F401 (here is a fixture)
from test_tokens import TOKENS

APPROVAL = 'approval = { approvers = { groups = ["owners"] }, max_ttl = "1h" }'
FLOW = f'[[flow]]\nname = "vault"\npath = "/vault/"\nsink = "api"\nmax_token_ttl = "10m"\n{APPROVAL}'
ALICE, OLIVIA = Party("alice", "dev"), Party("olivia", "dev")


def test_approval_and_grants_keys(here: Path) -> None:
    config = load(here, doc(flows=FLOW + "\n\n" + TOKENS + '\ngrant_request_ttl = "10m"'))
    approval = config.flows[0].approval
    assert approval is not None and approval.max_ttl == 3600.0 and approval.approvers.groups == ("owners",)
    assert config.tokens is not None
    assert (config.tokens.grants_path, config.tokens.grant_request_ttl) == ("/oauth/grants", 600.0)
    assert load(here, doc()).flows[0].approval is None


@pytest.mark.parametrize("flow, tokens, key, words", [
    (FLOW, "", "flow[0].approval", "[tokens]"),
    (FLOW.replace('max_token_ttl = "10m"\n', ""), TOKENS, "flow[0].approval", "max_token_ttl"),
    (FLOW.replace('max_ttl = "1h"', 'max_ttl = "60d"'), TOKENS, "flow[0].approval.max_ttl", ""),
    (FLOW.replace('approvers = { groups = ["owners"] }, ', ""), TOKENS, "flow[0].approval.approvers", "missing"),
    (FLOW.replace(', max_ttl = "1h"', ""), TOKENS, "flow[0].approval.max_ttl", "missing"),
    (FLOW.replace("approvers", "aprovers"), TOKENS, "flow[0].approval.aprovers", "did you mean"),
    (FLOW + '\nauth = "none"', TOKENS, "flow[0].approval", "auth"),
    (FLOW, TOKENS + '\ngrant_request_ttl = "0s"', "tokens.grant_request_ttl", ""),
    (FLOW, TOKENS + '\ngrants_path = "/oauth/token"', "tokens.token_path", "must differ"),
    (FLOW.replace('"/vault/"', '"/oauth/grants/x"'), TOKENS, "tokens.grants_path", "overlaps"),
])
def test_approval_problems(here: Path, flow: str, tokens: str, key: str, words: str) -> None:
    problems = problems_of(here, doc(flows=flow + "\n\n" + tokens))
    assert any(p.key == key and words in p.message for p in problems), problems


def test_a_grant_moves_forward_only() -> None:
    book = GrantBook()
    asked = new_grant("vault", ALICE, "why", 60.0, 30.0, 1000.0)
    assert book.hold(asked) and not book.hold(asked)  # the same state again is no change
    approved = asked.decided("approved", OLIVIA, 1010.0)
    denied = asked.decided("denied", OLIVIA, 1010.0)
    assert book.hold(approved) and not book.hold(denied)  # the first decision wins
    assert not book.hold(asked)  # an older state never comes back
    assert book.live_for(ALICE, "vault", 1069.0) is approved and approved.expires_at == 1070.0
    assert book.live_for(ALICE, "vault", 1070.0) is None and book.live_for(OLIVIA, "vault", 1020.0) is None
    assert book.ended((asked.id,), 1020.0) is None and book.ended((asked.id, "other"), 1020.0) == "other"
    assert approved.due(1070.0) and not approved.due(1069.0) and asked.due(1030.0)
    revoked = approved.ended("revoked", ALICE, 1020.0)
    assert book.hold(revoked) and not book.hold(revoked.ended("expired", None, 1070.0))
    assert book.ended((asked.id,), 1021.0) == asked.id
    assert book.grants(1020.0 + RETAIN - 1) == [revoked] and book.grants(1020.0 + RETAIN) == []


def test_a_grant_reads_back_what_it_wrote() -> None:
    grant = new_grant("vault", ALICE, "", 60.0, 30.0, 1000.0).decided("approved", OLIVIA, 1001.0)
    assert Grant.from_json(grant.as_json()) == grant
    for broken in ({**grant.as_json(), "status": "maybe"}, {**grant.as_json(), "ttl": "1h"},
                   {**grant.as_json(), "requester": {"sub": "alice"}}, [1]):
        with pytest.raises(ValueError):
            Grant.from_json(broken)


def test_the_grants_file_round_trips_and_a_corrupt_one_stops_relayd(tmp_path: Path) -> None:
    grants = [new_grant("vault", ALICE, "why", 60.0, 30.0, 1000.0)]
    file = GrantFile(str(tmp_path / "state"))
    assert file.grants() == []
    asyncio.run(file.save(lambda: documents(grants)))
    assert GrantFile(str(tmp_path / "state")).grants() == grants
    (tmp_path / "state" / FILE_NAME).write_text('{"format": "relay-grants", "version": 1, "grants": [{}]}')
    with pytest.raises(StartupError, match="grants file .* is corrupt .*grants\\[0\\]"):
        file.grants()


def test_a_grant_as_a_shared_entry() -> None:
    grant = new_grant("vault", ALICE, "a reason with spaces", 60.0, 30.0, 1000.0)
    entry = entry_of(grant)
    assert entry.rank == 1.0 and entry.until == grant.until
    assert SharedEntry.parse(entry.stored()) == entry
    assert SharedEntry.parse("1767225600.0") == SharedEntry(1767225600.0, 1767225600.0)  # a revocation's
    assert SharedEntry(5.0, 5.0).stored() == "5.0"
    with pytest.raises(ValueError):
        SharedEntry.parse("1 2")
