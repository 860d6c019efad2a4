"""Talking to relayd's admin socket from the command line (relayctl's side of it).

:func:`ask` sends one request and returns the reply; :func:`admin_socket_of` finds the
socket named by a configuration file, even one relayd would refuse. Every failure to
ask is a :class:`CtlError`, which relayctl turns into exit status 2.
"""

from __future__ import annotations

import argparse
import re
import socket
import tomllib
from typing import Any

import orjson

from relay.admin import AdminRequest

__all__ = ["CtlError", "admin_call", "admin_socket_of", "ask", "socket_path"]


class CtlError(Exception):
    """relayctl could not do what was asked (exit status 2); the message says why."""


def admin_call(path: str, request: AdminRequest, timeout: float) -> bytes:
    """Send ``request`` to the admin socket at ``path``; the reply line, newline included."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            raise CtlError(f"cannot connect to the admin socket {path}: {exc.strerror or exc} "
                           "(is relayd running, and may this user use it?)") from None
        try:
            try:
                sock.sendall(orjson.dumps(request, option=orjson.OPT_APPEND_NEWLINE))
            except (BrokenPipeError, ConnectionResetError):
                pass  # a refused peer is told why before the server hangs up: read that
            with sock.makefile("rb") as reader:
                line = reader.readline()
        except TimeoutError:
            raise CtlError(f"no reply from {path} within {timeout:g}s") from None
        except OSError as exc:
            raise CtlError(f"lost the connection to {path}: {exc.strerror or exc}") from None
    if not line.endswith(b"\n"):
        raise CtlError(f"relayd closed the admin connection without a reply ({path})")
    return line


def socket_path(args: argparse.Namespace) -> str:
    """The admin socket relayctl's options name: ``--socket``, else the config's."""
    if args.socket:
        return str(args.socket)
    path = admin_socket_of(args.config)
    if path is None:
        raise CtlError(f"{args.config} configures no server.admin_socket; give --socket PATH")
    return path


def admin_socket_of(config_path: str) -> str | None:
    """``server.admin_socket`` of the file at ``config_path``, without validating the rest.

    A file relayd would refuse must still lead to the daemon (``reload`` is how the
    operator hears every problem in it), so only this one key is read; when the file is
    not even valid TOML, its ``[server]`` table is scanned line by line for it.
    """
    try:
        with open(config_path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise CtlError(f"cannot read {config_path}: {exc.strerror or exc}") from None
    text = raw.decode("utf-8", errors="replace")
    try:
        server = tomllib.loads(text).get("server", {})
    except tomllib.TOMLDecodeError:
        return _scan_admin_socket(text)
    value = server.get("admin_socket") if isinstance(server, dict) else None
    if value is not None and not isinstance(value, str):
        raise CtlError(f"{config_path}: server.admin_socket must be a string; give --socket PATH")
    return value


_TABLE = re.compile(r"\s*\[\s*([^\]]*?)\s*\]")
_ADMIN_SOCKET = re.compile(r"""\s*admin_socket\s*=\s*(?:"((?:[^"\\]|\\.)*)"|'([^']*)')\s*(?:#.*)?$""")


def _scan_admin_socket(text: str) -> str | None:
    """``admin_socket = "…"`` in the ``[server]`` table of a document tomllib refused."""
    table = ""
    for line in text.splitlines():
        header = _TABLE.match(line)
        if header:
            table = header.group(1)
            continue
        found = _ADMIN_SOCKET.match(line) if table == "server" else None
        if found:
            basic, literal = found.groups()
            if basic is None:
                return literal
            try:
                value: str = tomllib.loads(f'v = "{basic}"')["v"]  # TOML's own escapes
            except tomllib.TOMLDecodeError:
                return None
            return value
    return None


def ask(path: str, request: AdminRequest, timeout: float) -> tuple[dict[str, Any], bytes]:
    """Send ``request`` to ``path``: the reply (``ok`` checked to be there) and its line."""
    line = admin_call(path, request, timeout)
    try:
        reply = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise CtlError(f"relayd sent an unreadable reply: {line[:200]!r}") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise CtlError(f"relayd sent a reply without 'ok': {line[:200]!r}")
    return reply, line
