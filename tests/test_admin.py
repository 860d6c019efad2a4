"""The admin control socket: permissions, peer checks, framing, isolation between clients.

The server runs on its own event-loop thread (uvloop and asyncio both) and the tests talk
to it with plain blocking sockets, the way relayctl does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from relay.admin import (
    MAX_LINE, AdminReply, AdminRequest, AdminServer, CommandError, CommandTable, Handler, StatusReply,
)
from relay.errors import StartupError

NOBODY = 65534


class AdminThread:
    """An AdminServer serving on its own event-loop thread until close()."""

    def __init__(self, path: Path, dispatch: Handler, allowed_uids: frozenset[int] = frozenset(),
                 new_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop) -> None:
        self.path = path
        self.loop = new_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server = AdminServer(str(path), allowed_uids, dispatch)
        try:
            self.run(self.server.start())
        except BaseException:
            self._stop_loop()
            raise

    def run(self, coro: Any) -> Any:
        """Run ``coro`` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def close(self) -> None:
        self.run(self.server.close())
        self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class Client:
    """A blocking admin client: one socket, JSON lines."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(path))
        self.reader = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> dict[str, Any]:
        line = self.reader.readline()
        assert line.endswith(b"\n"), f"no complete reply line: {line!r}"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        self.send(json.dumps(request).encode() + b"\n")
        return self.reply()

    def at_eof(self) -> bool:
        return self.reader.readline() == b""

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def make_commands() -> CommandTable:
    """A small dispatch: status answers, drain waits for ``release``, log-level breaks."""
    table = CommandTable()

    async def status(request: AdminRequest) -> AdminReply:
        return StatusReply(ok=True, version="test", pid=os.getpid(), draining=False)

    async def revoke(request: AdminRequest) -> AdminReply:
        if "value" not in request:
            raise CommandError("revoke needs a value")
        return AdminReply(ok=True)

    async def broken(request: AdminRequest) -> AdminReply:
        raise RuntimeError("boom")

    async def echo(request: AdminRequest) -> AdminReply:
        return {"ok": True, "cmd": request["cmd"], "args": request.get("args", [])}  # type: ignore[typeddict-unknown-key]

    table.register("status", status)
    table.register("revoke", revoke)
    table.register("log-level", broken)
    table.register("keys refresh", echo)
    table.register("cache stats", echo)
    return table


@pytest.fixture(params=["uvloop", "asyncio"])
def new_loop(request: pytest.FixtureRequest) -> Callable[[], asyncio.AbstractEventLoop]:
    return uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop


@pytest.fixture
def admin(new_loop: Callable[[], asyncio.AbstractEventLoop], tmp_path: Path) -> Iterator[AdminThread]:
    running = AdminThread(tmp_path / "run" / "admin.sock", make_commands(), new_loop=new_loop)
    yield running
    running.close()


def test_socket_is_private(admin: AdminThread) -> None:
    st = os.stat(admin.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()


def test_status_round_trip(admin: AdminThread) -> None:
    client = Client(admin.path)
    assert client.ask({"cmd": "status"}) == {"ok": True, "version": "test", "pid": os.getpid(), "draining": False}
    client.close()


def test_malformed_input_keeps_the_connection_usable(admin: AdminThread) -> None:
    client = Client(admin.path)
    cases = [
        (b"{not json\n", "malformed JSON"),
        (b"[1, 2]\n", "a request must be a JSON object"),
        (b'"status"\n', "a request must be a JSON object"),
        (b"{}\n", "missing 'cmd'"),
        (b'{"cmd": 7}\n', "'cmd' must be a string"),
        (b'{"cmd": "revoke", "ttl": 3600}\n', "'ttl' must be a string"),
        (b'{"cmd": "keys", "args": "refresh"}\n', "'args' must be a list of strings"),
        (b'{"cmd": "keys", "args": [1]}\n', "'args' must be a list of strings"),
        (b'{"cmd": "status", "verbose": true}\n', "unknown field 'verbose'"),
        (b'{"cmd": "frobnicate"}\n', "unknown command 'frobnicate'"),
        (b'{"cmd": "cache"}\n', "unknown command 'cache'"),
        (b'{"cmd": "drain"}\n', "command 'drain' is not available"),
        (b'{"cmd": "revoke"}\n', "revoke needs a value"),
    ]
    for line, error in cases:
        client.send(b"\n")  # blank lines are ignored, not answered
        client.send(line)
        reply = client.reply()
        assert reply["ok"] is False, line
        assert reply["error"].startswith(error), (line, reply)
    assert client.ask({"cmd": "status"})["ok"] is True
    client.close()


def test_two_word_commands_arrive_canonical(admin: AdminThread) -> None:
    client = Client(admin.path)
    expected = {"ok": True, "cmd": "keys refresh", "args": []}
    assert client.ask({"cmd": "keys refresh"}) == expected
    assert client.ask({"cmd": "keys", "args": ["refresh"]}) == expected
    assert client.ask({"cmd": "cache", "args": ["stats", "extra"]}) == {"ok": True, "cmd": "cache stats",
                                                                        "args": ["extra"]}
    client.close()


def test_handler_exception_is_an_internal_error(admin: AdminThread, caplog: pytest.LogCaptureFixture) -> None:
    client = Client(admin.path)
    with caplog.at_level(logging.ERROR, logger="relay.admin"):
        assert client.ask({"cmd": "log-level", "level": "debug"}) == {"ok": False, "error": "internal error"}
    assert any(r.exc_info and str(r.exc_info[1]) == "boom" for r in caplog.records)
    assert client.ask({"cmd": "status"})["ok"] is True
    client.close()


def test_overlong_line_is_refused_and_closed(admin: AdminThread) -> None:
    client = Client(admin.path)
    client.send(b'{"cmd": "status", "value": "' + b"x" * MAX_LINE + b'"}\n')
    reply = client.reply()
    assert reply == {"ok": False, "error": f"request line longer than {MAX_LINE} bytes"}
    assert client.at_eof()
    client.close()


def test_stalled_command_does_not_block_another_client(tmp_path: Path) -> None:
    table = make_commands()
    started = threading.Event()
    release: asyncio.Event | None = None

    async def drain(request: AdminRequest) -> AdminReply:
        nonlocal release
        release = asyncio.Event()
        started.set()
        await release.wait()
        return AdminReply(ok=True)

    table.register("drain", drain)
    admin = AdminThread(tmp_path / "admin.sock", table)
    try:
        stuck = Client(admin.path)
        stuck.send(b'{"cmd": "drain"}\n')
        assert started.wait(timeout=30)
        half = Client(admin.path)
        half.send(b'{"cmd": "sta')  # a line that never ends
        other = Client(admin.path)
        assert other.ask({"cmd": "status"})["ok"] is True
        assert release is not None
        admin.loop.call_soon_threadsafe(release.set)
        assert stuck.reply() == {"ok": True}
        for client in (stuck, half, other):
            client.close()
    finally:
        admin.close()


def test_client_that_never_reads_does_not_block_another(admin: AdminThread) -> None:
    greedy = Client(admin.path)
    greedy.sock.setblocking(False)
    request = b'{"cmd": "status"}\n' * 1000
    sent = 0
    # keep asking without reading until the kernel refuses more: the server's replies
    # to this client have filled every buffer between the two
    while True:
        try:
            sent += greedy.sock.send(request)
        except BlockingIOError:
            break
    assert sent > len(request)
    other = Client(admin.path)
    assert other.ask({"cmd": "status"})["ok"] is True
    other.close()
    greedy.close()


def test_close_removes_the_socket_and_ends_connections(tmp_path: Path) -> None:
    admin = AdminThread(tmp_path / "admin.sock", make_commands())
    client = Client(admin.path)
    assert client.ask({"cmd": "status"})["ok"] is True
    admin.close()
    assert not admin.path.exists()
    assert client.at_eof()
    client.close()


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))  # bound, never listening: what a crashed daemon leaves behind
    leftover.close()
    admin = AdminThread(path, make_commands())
    try:
        assert Client(path).ask({"cmd": "status"})["ok"] is True
    finally:
        admin.close()


def test_path_in_use_or_not_a_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    admin = AdminThread(path, make_commands())
    try:
        with pytest.raises(StartupError, match="in use"):
            AdminThread(path, make_commands())
        assert Client(path).ask({"cmd": "status"})["ok"] is True  # the first one is untouched
    finally:
        admin.close()
    regular = tmp_path / "notes.txt"
    regular.write_text("keep me")
    with pytest.raises(StartupError, match="not a socket"):
        AdminThread(regular, make_commands())
    assert regular.read_text() == "keep me"


# --- peer credentials -----------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="running a client as another uid needs root")


def ask_as(uid: int, path: Path) -> str:
    """Connect from a forked child running as ``uid``; the reply line, or the connect error."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery from here on, always _exit
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(30)
                    sock.connect(str(path))
                    try:
                        sock.sendall(b'{"cmd": "status"}\n')
                    except BrokenPipeError:
                        pass  # refused before it could ask: the answer is waiting all the same
                    result = sock.makefile("rb").readline()
            except OSError as exc:
                result = f"{type(exc).__name__}".encode()
            os.write(write_end, result)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        result = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return result.decode()


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory anyone may traverse (pytest's own are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="relay-admin-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@needs_root
def test_other_uid_cannot_even_connect(public_dir: Path) -> None:
    admin = AdminThread(public_dir / "admin.sock", make_commands())
    try:
        assert ask_as(NOBODY, admin.path) == "PermissionError"  # the 0600 file mode alone stops it
    finally:
        admin.close()


@needs_root
def test_other_uid_is_refused_by_peer_credentials(public_dir: Path,
                                                  new_loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
    admin = AdminThread(public_dir / "admin.sock", make_commands(), new_loop=new_loop)
    try:
        # loosen the file mode, as a careless operator might: the uid check still holds
        os.chmod(admin.path, 0o666)
        assert json.loads(ask_as(NOBODY, admin.path)) == {"ok": False, "error": "permission denied"}
        assert Client(admin.path).ask({"cmd": "status"})["ok"] is True  # root still is served
    finally:
        admin.close()


@needs_root
def test_allowed_uid_is_served(public_dir: Path) -> None:
    admin = AdminThread(public_dir / "admin.sock", make_commands(), allowed_uids=frozenset({NOBODY}))
    try:
        os.chmod(admin.path, 0o666)
        assert json.loads(ask_as(NOBODY, admin.path))["version"] == "test"
    finally:
        admin.close()


# --- the command table on its own -----------------------------------------------------------

def test_command_table_knows_its_commands() -> None:
    table = CommandTable()
    with pytest.raises(ValueError, match="not an admin command"):
        table.register("frobnicate", make_commands())
    reply = asyncio.run(table({"cmd": "frobnicate"}))
    assert reply["ok"] is False and "known: status, stats, flows" in reply["error"]
