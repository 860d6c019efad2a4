"""relayctl: operate a running relayd through its admin socket, and check audit logs.

::

    relayctl [--socket PATH | -c relay.toml] [--json] [--timeout SECONDS] COMMAND [ARGS...]

Admin commands send one request line to the socket (``--socket``, else the config's
``server.admin_socket``) and print the reply readably: ``key: value`` lines for scalars,
tables for lists of records; ``--json`` prints the reply line as received. The options
may also follow the command (``relayctl flows --json``), as operators type them. The
socket is read from the config without validating the rest of it, so ``reload`` of a
broken file reaches relayd, which lists every problem. ``top`` refreshes per-flow rates
(:mod:`relay.ctl_top`). Local commands (``audit verify``) need no daemon.

Exit status: 0 success · 1 the command failed or found a problem (reason on stderr) ·
2 relayctl could not ask (usage, configuration, socket, timeout).

Adding a command family (``relayctl token ...``): write a function that takes the
sub-parsers object, adds its parsers and gives each a ``run`` default
(``Callable[[argparse.Namespace], int]`` returning the exit status, raising
:class:`CtlError` for exit 2), and list it in :data:`COMMAND_FAMILIES`. Use
:func:`relay.admin_client.ask` to reach the daemon.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import orjson

from relay.admin import AdminRequest
from relay.admin_client import CtlError, admin_call, ask, socket_path
from relay.audit import GENESIS
from relay.audit_verify import verify
from relay.cli import DEFAULT_CONFIG
from relay.ctl_top import top_commands
from relay.units import parse_duration

__all__ = ["COMMAND_FAMILIES", "CtlError", "admin_call", "format_reply", "relayctl_main", "socket_path"]

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]  # what add_subparsers() returns
Run = Callable[[argparse.Namespace], int]

#: reply fields holding wall-clock times, shown as local date and time
_TIMESTAMPS = frozenset({"until", "last_success", "started_at", "requested_at", "pending_until", "decided_at",
                         "expires_at", "ended_at", "created", "activates", "retires", "removes"})


def _remote(build: Callable[[argparse.Namespace], AdminRequest]) -> Run:
    """The ``run`` of an admin command whose request ``build`` makes from the arguments."""

    def run(args: argparse.Namespace) -> int:
        request = build(args)
        reply, line = ask(socket_path(args), request, args.timeout)
        if args.json:
            sys.stdout.write(line.decode())
        if not reply["ok"]:
            print(f"relayctl: {request['cmd']}: {reply.get('error', 'failed')}", file=sys.stderr)
            details = {k: v for k, v in reply.items() if k not in ("ok", "error")}
            if details and not args.json:
                print(format_reply(details), file=sys.stderr)
            return 1
        if not args.json:
            text = reply.get("text")
            if args.command == "metrics" and isinstance(text, str):
                sys.stdout.write(text)  # Prometheus text, exactly as relayd rendered it
            else:
                print(format_reply(reply))
        return 0

    return run


# --- readable output ------------------------------------------------------------------------

def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and key in _TIMESTAMPS:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, list):
        return ",".join(_cell(key, v) for v in value) or "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={_cell(k, v)}" for k, v in value.items()) or "-"
    return str(value)


def _table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(c, row.get(c)) for c in columns] for row in rows]
    numeric = [all(isinstance(row.get(c), (int, float)) and not isinstance(row.get(c), bool) for row in rows)
               for c in columns]
    header = [c.upper() for c in columns]
    widths = [max(len(line[i]) for line in (header, *cells)) for i in range(len(columns))]

    def fmt(line: list[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(line, widths, numeric)]
        return "  ".join(parts).rstrip()

    return [fmt(header), *(fmt(line) for line in cells)]


def _is_rows(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def format_reply(reply: Mapping[str, Any]) -> str:
    """A reply for people: ``key: value`` lines for scalars, then one table per list of records.

    A list of plain values is listed one per line, a nested record is a one-row table;
    an empty reply reads "ok".
    """
    scalars: list[str] = []
    tables: list[tuple[str, list[str]]] = []
    for key, value in reply.items():
        if key in ("ok", "error"):
            continue
        if _is_rows(value):
            tables.append((key, _table(value)))
        elif isinstance(value, dict) and value:
            tables.append((key, _table([value])))
        elif isinstance(value, list) and not value:
            tables.append((key, [f"(no {key})"]))
        elif isinstance(value, list):
            scalars.append(f"{key}:")
            scalars.extend(f"  {_cell(key, v)}" for v in value)
        else:
            scalars.append(f"{key}: {_cell(key, value)}")
    out = scalars
    for title, lines in tables:
        if out:
            out.append("")
        if scalars or len(tables) > 1:
            out.append(f"{title}:")
        out.extend(lines)
    return "\n".join(out) or "ok"


# --- commands -------------------------------------------------------------------------------

def _duration(text: str) -> str:
    """An argparse type: a duration relay accepts, passed on as written."""
    try:
        parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _admin_commands(sub: SubParsers) -> None:
    for name, help_text in (
        ("status", "the daemon's state: version, uptime, policy version, connections"),
        ("stats", "requests, errors and bytes per flow"),
        ("flows", "the routing table in force"),
        ("reload", "load the configuration again (the running one stays if it is invalid)"),
        ("drain", "stop accepting, finish requests in flight, then exit"),
        ("metrics", "the Prometheus metrics text"),
    ):
        sub.add_parser(name, help=help_text).set_defaults(run=_remote(lambda a: AdminRequest(cmd=a.command)))

    keys = sub.add_parser("keys", help="issuers' keys and relay's own signing keys; 'keys refresh' fetches "
                                       "the issuers' now, 'keys rotate' starts relay's next key")  # fmt: skip
    keys.add_argument("action", nargs="?", choices=("refresh", "rotate"))
    keys.add_argument("--now", action="store_true",
                      help="rotate: sign with the new key at once instead of once it has been published for "
                           "identity_jwks_refresh (verifiers holding an older JWKS refuse its tokens until they "
                           "fetch it again)")  # fmt: skip

    def keys_request(a: argparse.Namespace) -> AdminRequest:
        if a.now and a.action != "rotate":
            raise CtlError("--now goes with 'keys rotate' only")
        request = AdminRequest(cmd=" ".join(filter(None, ("keys", a.action))))
        if a.now:
            request["now"] = True
        return request

    keys.set_defaults(run=_remote(keys_request))

    cache = sub.add_parser("cache", help="the verified-token cache: 'cache stats' or 'cache purge'; "
                                         "'cache purge --flow F [--subject S]': a flow's response cache")
    cache.add_argument("action", choices=("stats", "purge"))
    cache.add_argument("--flow", help="purge this flow's response cache instead of the token cache")
    cache.add_argument("--subject", help="with --flow: only the entries this subject's requests stored")

    def cache_request(a: argparse.Namespace) -> AdminRequest:
        if a.action != "purge" and (a.flow or a.subject):
            raise CtlError("--flow and --subject go with 'cache purge'")
        if a.subject is not None and a.flow is None:
            raise CtlError("--subject needs --flow: a subject's entries live in a flow's response cache")
        request = AdminRequest(cmd=f"cache {a.action}")
        if a.flow is not None:
            request["flow"] = a.flow
        if a.subject is not None:
            request["subject"] = a.subject
        return request

    cache.set_defaults(run=_remote(cache_request))

    revoke = sub.add_parser("revoke", help="refuse tokens by jti, subject or key id for a while")
    revoke.add_argument("kind", choices=("jti", "sub", "kid"))
    revoke.add_argument("value")
    revoke.add_argument("--ttl", type=_duration, help="how long, e.g. 1h (default: relayd's)")

    def revoke_request(a: argparse.Namespace) -> AdminRequest:
        request = AdminRequest(cmd="revoke", kind=a.kind, value=a.value)
        if a.ttl is not None:
            request["ttl"] = a.ttl
        return request

    revoke.set_defaults(run=_remote(revoke_request))

    grants = sub.add_parser("grants", help="just-in-time grants: list, approve, deny or revoke one")
    actions = grants.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="every grant held, pending ones included").set_defaults(
        run=_remote(lambda a: AdminRequest(cmd="grants list")))
    for action, help_text in (("approve", "approve a pending grant"), ("deny", "deny a pending grant"),
                              ("revoke", "end a pending or approved grant now")):
        decide = actions.add_parser(action, help=help_text)
        decide.add_argument("grant_id", metavar="GRANT_ID")
        decide.set_defaults(run=_remote(lambda a: AdminRequest(cmd=f"grants {a.action}", grant_id=a.grant_id)))

    level = sub.add_parser("log-level", help="change relayd's log level")
    level.add_argument("level", choices=("debug", "info", "warning", "error"))
    level.set_defaults(run=_remote(lambda a: AdminRequest(cmd="log-level", level=a.level)))


def _audit_verify(args: argparse.Namespace) -> int:
    try:
        result = verify(args.files, after=args.after)
    except OSError as exc:
        raise CtlError(f"cannot read {exc.filename}: {exc.strerror or exc}") from None
    if args.json:
        problem = result.problem
        print(orjson.dumps({
            "ok": result.ok, "lines": result.lines, "chains": result.chains, "head": result.head,
            "problem": None if problem is None else {
                "path": problem.path, "line": problem.line, "reason": problem.reason, "detail": problem.detail,
            },
            "repairs": [
                {"path": r.path, "line": r.line, "offset": r.offset, "bytes": r.size, "kept_in": r.kept_in}
                for r in result.repairs
            ],
        }).decode())
    if result.problem is not None:
        print(f"relayctl: audit chain broken at {result.problem} "
              f"({result.lines} lines verified before it)", file=sys.stderr)
        return 1
    if not args.json:
        print(f"ok: {result.lines} lines in {len(args.files)} file(s), {result.chains} chain start(s); "
              f"head {result.head}")
        for repair in result.repairs:
            print(f"repaired: {repair}")
    return 0


def _audit_commands(sub: SubParsers) -> None:
    audit = sub.add_parser("audit", help="audit log tools (run locally, no daemon needed)")
    actions = audit.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser("verify", help="check the hash chain of audit files, oldest first")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument("--after", default=GENESIS, metavar="HASH",
                       help="the head printed for the older files, when they are not given")
    check.set_defaults(run=_audit_verify)


#: each adds one family of sub-commands to relayctl's parser
COMMAND_FAMILIES: tuple[Callable[[SubParsers], None], ...] = (_admin_commands, top_commands, _audit_commands)


def _global_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """relayctl's own options. Every command's parser takes them too (with ``defaults``
    false, so that only what is given there overrides what came before the command):
    ``relayctl flows --json`` and ``relayctl --json flows`` are the same."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", default=default(None),
                       help="the admin socket (default: from the config)")
    where.add_argument("-c", "--config", default=default(DEFAULT_CONFIG),
                       help=f"read server.admin_socket from this file (default: {DEFAULT_CONFIG})")
    parser.add_argument("--json", action="store_true", default=default(False), help="print replies as JSON")
    parser.add_argument("--timeout", type=float, default=default(30.0), metavar="SECONDS",
                        help="how long to wait for relayd's reply (default: 30)")


class _CommandParser(argparse.ArgumentParser):
    """The parser of one command (and, through add_subparsers, of its sub-commands)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _global_options(self, defaults=False)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relayctl",
        description="Operate a running relayd through its admin socket.",
        epilog="Exit status: 0 ok, 1 the command failed, 2 relayctl could not ask.",
    )
    _global_options(parser, defaults=True)
    sub: SubParsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser)
    for add in COMMAND_FAMILIES:
        add(sub)
    return parser


def relayctl_main(argv: list[str] | None = None) -> NoReturn:
    """Entry point: run one command and exit with its status."""
    args = _parser().parse_args(argv)
    run: Run = args.run
    try:
        status = run(args)
    except CtlError as exc:
        print(f"relayctl: {exc}", file=sys.stderr)
        status = 2
    sys.stdout.flush()
    sys.exit(status)


if __name__ == "__main__":
    relayctl_main()
