"""``relayd init DIR`` (relay/starter.py): outside a checkout, a working starting point —
the shipped configuration, its lighttpd pairings and fresh development keys that
``relay-devtoken`` signs with and the "dev" issuer accepts; nothing existing overwritten."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from relay.config import load_config
from support.procs import ROOT, child_env
from test_identity_devtoken import authenticate


#: the console scripts the package installs beside this interpreter
COMMANDS = {"relayd": [sys.executable, "-m", "relay"], "relay-devtoken": [str(Path(sys.executable).parent / "relay-devtoken")]}


def run(command: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMANDS[command], *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env=child_env())


def test_init_writes_a_configuration_that_accepts_its_own_development_tokens(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    made = run("relayd", "init", str(tmp_path / "site"), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    site = tmp_path / "site"
    assert (site / "conf" / "relay.toml").read_bytes() == (ROOT / "conf" / "relay.toml").read_bytes()
    assert os.access(site / "conf" / "lighttpd-tls.sh", os.X_OK)
    assert (site / "var" / "run").is_dir() and (site / "var" / "lighttpd" / "uploads").is_dir()
    for kid in ("dev-rs256", "dev-es256", "dev-eddsa"):
        assert (site / "conf" / "keys" / f"{kid}.pem").stat().st_mode & 0o077 == 0  # private keys stay private
    published = json.loads((site / "conf" / "keys" / "dev-jwks.json").read_text())
    assert {key["kid"] for key in published["keys"]} == {"dev-rs256", "dev-es256", "dev-eddsa"}
    assert all("d" not in key for key in published["keys"])  # public halves only
    # fresh keys, not the checkout's
    assert published != json.loads((ROOT / "conf" / "keys" / "dev-jwks.json").read_text())

    checked = run("relayd", "check", cwd=site)
    assert checked.returncode == 0, checked.stderr

    for alg in ("RS256", "ES256", "EdDSA"):
        minted = run("relay-devtoken", "--sub", "alice", "--groups", "ingest-writers", "--alg", alg, cwd=site)
        assert minted.returncode == 0, minted.stderr
        monkeypatch.chdir(site)
        identity = authenticate(load_config("conf/relay.toml"), minted.stdout.strip().encode())
        assert (identity.subject, identity.groups) == ("alice", ("ingest-writers",))


def test_init_keeps_what_is_there(tmp_path: Path) -> None:
    site = tmp_path / "site"
    assert run("relayd", "init", str(site), cwd=tmp_path).returncode == 0
    (site / "conf" / "relay.toml").write_text("# mine\n")
    keys = (site / "conf" / "keys" / "dev-jwks.json").read_bytes()
    again = run("relayd", "init", str(site), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (site / "conf" / "relay.toml").read_text() == "# mine\n"
    assert (site / "conf" / "keys" / "dev-jwks.json").read_bytes() == keys
    assert "wrote" not in again.stdout


def test_init_needs_a_directory(tmp_path: Path) -> None:
    refused = run("relayd", "init", cwd=tmp_path)
    assert refused.returncode == 2 and "a directory goes with init" in refused.stderr
