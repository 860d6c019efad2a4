"""State files in ``state_dir``: what a relayd killed while saving one leaves is cleared at start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from relay import durable
from relay.state_document import StateFile


def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def state_file(directory: Path) -> StateFile[object]:
    return StateFile(str(directory), "grants.json", "relay-grants", 1, "grants", lambda entries: entries,
                     "grants file", "which grants were made")


def test_the_temporary_files_of_dead_writers_are_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    durable.replace(str(tmp_path / "grants.json"), b'{"format": "relay-grants", "version": 1, "grants": [1]}')
    dead = tmp_path / f"grants.json.{dead_pid()}.tmp"
    dead.write_bytes(b'{"format": "relay-grants", "vers')  # a save cut short by a kill
    alive = tmp_path / f"grants.json.{os.getpid()}.tmp"
    alive.write_bytes(b"being written")
    unrelated = tmp_path / "revocations.json.1.tmp"
    unrelated.write_bytes(b"another file's")
    assert state_file(tmp_path).open() == [1]
    assert not dead.exists()
    assert alive.exists() and unrelated.exists()


def test_a_save_after_a_crash_leaves_one_file(tmp_path: Path) -> None:
    (tmp_path / f"grants.json.{dead_pid()}.tmp").write_bytes(b"torn")
    state = state_file(tmp_path)
    assert state.open() == []
    durable.replace(state.path, b'{"format": "relay-grants", "version": 1, "grants": []}')
    assert sorted(os.listdir(tmp_path)) == ["grants.json"]
