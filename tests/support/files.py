"""A files root with every kind of trap, relayd serving it, and lighttpd in front of it.

``make_tree`` fills ``root`` with files to serve and with ways out: symlinks leaving the
root (relative, absolute, through a directory), a directory, a FIFO, a Unix socket and a
link to a device; ``outside`` holds the secret none of them may reveal. ``FilesStack``
runs relayd (flows ``/files/`` public, ``/secure-files/`` for tokens of group "readers",
``/streamed/`` with ``delivery = "relay"``; the issuer is ``token_flow``'s), lighttpd (the shipped conf, x-sendfile-docroot
set to the root) and a second lighttpd serving the root as static files, the behaviour
relay is held to.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

from .procs import LIGHTTPD_CONF, Lighttpd, Relayd, Service, free_port
from .stack import relay_config, token_flow

SECRET = b"the secret outside the root\n"
SMALL = bytes(range(32, 127)) * 43 + b"\n"  # 4086 bytes
#: more than relay reads whole: sent with sendfile
MEDIUM = b"".join(b"%07d\n" % i for i in range(40_000))  # 320,000 bytes


def make_tree(root: Path, outside: Path) -> socket.socket:
    """Fill ``root`` and ``outside``; the returned socket keeps ``root/sock`` bound."""
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    root.mkdir()
    (root / "small.txt").write_bytes(SMALL)
    (root / "medium.bin").write_bytes(MEDIUM)
    (root / "empty.txt").write_bytes(b"")
    (root / "sub").mkdir()
    (root / "sub" / "inner.txt").write_bytes(b"inner\n")
    (root / "with space é.txt").write_bytes(b"spaced\n")
    (root / "link-in").symlink_to("small.txt")
    (root / "link-out").symlink_to("../outside/secret.txt")
    (root / "link-abs").symlink_to(outside / "secret.txt")
    (root / "link-dir-out").symlink_to("../outside")
    (root / "sub" / "link-up").symlink_to("../../outside/secret.txt")
    (root / "link-dev").symlink_to("/dev/zero")
    (root / "link-loop").symlink_to("link-loop")
    os.mkfifo(root / "pipe")
    try:
        os.mknod(root / "zero", 0o666 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero's numbers
    except PermissionError:
        pass  # not allowed here: the link to /dev/zero stands in
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(root / "sock"))
    return listener


FILES_FLOWS = """
[sink.files]
type = "files"
root = "{root}"

[sink.files_relay]
type = "files"
root = "{root}"
delivery = "relay"

[[flow]]
name = "files"
path = "/files/"
auth = "none"
sink = "files"

[[flow]]
name = "streamed"
path = "/streamed/"
auth = "none"
sink = "files_relay"

[[flow]]
name = "secure-files"
path = "/secure-files/"
allow = {{ groups = ["readers"] }}
sink = "files"
"""

STATIC_CONF = """
server.document-root = "{root}"
server.bind = "127.0.0.1"
server.port = {port}
mimetype.assign = ( ".txt" => "text/plain; charset=utf-8", ".bin" => "application/octet-stream" )
"""


class FilesStack:
    def __init__(self, workdir: Path, jwks: bytes, server: str = "", conf: Path = LIGHTTPD_CONF) -> None:
        """``server`` adds keys to relayd's [server]; ``conf`` is the front lighttpd's."""
        self.workdir = workdir
        self.root = workdir / "root"
        self._listener = make_tree(self.root, workdir / "outside")
        (workdir / "jwks.json").write_bytes(jwks)
        extra = FILES_FLOWS.format(root=self.root) + token_flow(workdir / "jwks.json")
        self.relayd = Relayd(workdir, relay_config(workdir, "http://127.0.0.1:9", extra=extra, server=server))
        try:
            self.lighttpd = Lighttpd(workdir, self.relayd.unix, conf=conf,
                                     extra_env={"RELAY_FILES_ROOTS": str(self.root)})
            port = free_port()
            conf = workdir / "static.conf"
            conf.write_text(STATIC_CONF.format(root=self.root, port=port))
            self.static = Service("static-lighttpd", ["lighttpd", "-D", "-f", str(conf)], workdir / "static.log")
            self.static_address = ("127.0.0.1", port)
            self.static.wait_ready([self.static_address])
        except BaseException:
            self.close()
            raise

    def audit(self) -> list[dict[str, Any]]:
        lines = (self.workdir / "audit.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    def close(self) -> None:
        for name in ("static", "lighttpd", "relayd"):
            if hasattr(self, name):
                getattr(self, name).stop()
        self._listener.close()
