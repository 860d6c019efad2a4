"""tools/install-system as an operator runs it, into a scratch root: relay installed
normally (not editable) in opt/relay, the production configuration valid as shipped, the
user and group made with lighttpd's user in the group, and the systemd unit accepted by
``systemd-analyze verify`` with the commands it names in place."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from support.procs import ROOT

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="installs as root does (users, groups, ownership)"),
    pytest.mark.skipif(shutil.which("systemd-sysusers") is None or shutil.which("systemd-analyze") is None,
                       reason="needs systemd's tools"),
    # the install builds its own copy of relay: the same whichever implementation the suite runs
    pytest.mark.skipif(os.environ.get("RELAY_NO_EXTENSIONS") == "1", reason="run once, with the extension"),
]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sysroot")
    done = subprocess.run([str(ROOT / "tools" / "install-system"), "--root", str(root)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return root


def entry(path: Path, name: str) -> list[str]:
    return next(line.split(":") for line in path.read_text().splitlines() if line.split(":")[0] == name)


def test_relay_is_installed_normally_and_its_configuration_is_valid(installed: Path) -> None:
    relayd = installed / "opt" / "relay" / "bin" / "relayd"
    where = subprocess.run([str(installed / "opt" / "relay" / "bin" / "python"), "-c",
                            "import relay, relay._fastpath; print(relay.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd="/")
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(installed / "opt" / "relay")), where.stdout  # not the checkout
    checked = subprocess.run([str(relayd), "check", "-c", str(installed / "etc" / "relay" / "relay.toml")],
                             capture_output=True, text=True, timeout=60, cwd="/")
    assert checked.returncode == 0, checked.stderr


def test_the_user_group_and_configuration_permissions(installed: Path) -> None:
    user = entry(installed / "etc" / "passwd", "relay")
    group = entry(installed / "etc" / "group", "relay")
    assert user[3] == group[2] and user[5] == "/var/lib/relay"
    assert "www-data" in group[3].split(",")  # lighttpd may reach relayd's socket
    config = (installed / "etc" / "relay" / "relay.toml").stat()
    assert stat.S_IMODE(config.st_mode) == 0o640 and config.st_uid == 0 and str(config.st_gid) == group[2]


def test_the_unit_passes_systemd_analyze_verify(installed: Path, tmp_path: Path) -> None:
    unit = (installed / "etc" / "systemd" / "system" / "relayd.service").read_text()
    assert "/opt/relay/bin/relayd -c /etc/relay/relay.toml" in unit
    # verify checks that every command exists: point it at the scratch root's
    staged = tmp_path / "relayd.service"
    staged.write_text(unit.replace("/opt/relay/", f"{installed}/opt/relay/"))
    verified = subprocess.run(["systemd-analyze", "verify", str(staged)], capture_output=True, text=True,
                              timeout=60)
    assert verified.returncode == 0, verified.stderr
    assert verified.stderr == "", verified.stderr


def test_the_installed_package_can_start_a_site(installed: Path, tmp_path: Path) -> None:
    # relayd init from the installed wheel: the starter files travel as package data
    bin_dir = installed / "opt" / "relay" / "bin"
    made = subprocess.run([str(bin_dir / "relayd"), "init", str(tmp_path / "site")], capture_output=True,
                          text=True, timeout=60, cwd="/")
    assert made.returncode == 0, made.stderr
    checked = subprocess.run([str(bin_dir / "relayd"), "check"], capture_output=True, text=True, timeout=60,
                             cwd=tmp_path / "site")
    assert checked.returncode == 0, checked.stderr
    minted = subprocess.run([str(bin_dir / "relay-devtoken"), "--sub", "alice"], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path / "site")
    assert minted.returncode == 0 and minted.stdout.count(".") == 2, minted.stderr
