"""Command-line entry points. The only module that exits the process."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from relay import __version__
from relay.config import load_config
from relay.errors import ConfigError, StartupError

DEFAULT_CONFIG = os.environ.get("RELAY_CONFIG", "conf/relay.toml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relayd",
        description="Identity-aware data relay daemon.",
        epilog="'relayd check -c FILE' validates a configuration without serving (like nginx -t).",
    )
    parser.add_argument("command", nargs="?", choices=("serve", "check", "init", "worker"), default="serve",
                        help="serve (default); check the configuration and exit; init DIR: write a "
                             "starter configuration and development keys into DIR; "
                             "'worker' is how the supervisor starts its workers")
    parser.add_argument("directory", nargs="?", help="for init: where to write (created if missing)")
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                        help="configuration file (default: %(default)s)")
    parser.add_argument("--log-level", default=os.environ.get("RELAY_LOG_LEVEL", "info"),
                        choices=("debug", "info", "warning", "error"))
    parser.add_argument("--version", action="version", version=f"relayd {__version__}")
    return parser


def relayd_main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.command == "init") != (args.directory is not None):
        parser.error("a directory goes with init, and only with init")
    if args.command == "init":
        _init(args.directory)
        return
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"relayd: {args.config}: {len(exc.problems)} problem(s), configuration rejected",
              file=sys.stderr)
        sys.exit(1)
    if args.command == "check":
        print(f"relayd: {args.config}: configuration ok "
              f"({len(config.flows)} flows, {len(config.sinks)} sinks, {len(config.issuers)} issuers)")
        return
    # imported here so that 'check' works without the event loop libraries loaded
    import uvloop

    from relay.heap import keep_body_buffers_on_heap
    from relay.server import Server
    from relay.supervisor import Supervisor
    from relay.workers import WorkerRole

    keep_body_buffers_on_heap()

    if args.command == "worker":
        main = Server(config, WorkerRole.from_environment()).run()
    elif config.server.workers > 1:
        main = Supervisor(config).run()
    else:
        main = Server(config).run()
    try:
        uvloop.run(main)
    except StartupError as exc:
        print(f"relayd: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


def _init(directory: str) -> None:
    from relay.starter import init

    try:
        written = init(Path(directory))
    except StartupError as exc:
        print(f"relayd: {exc}", file=sys.stderr)
        sys.exit(1)
    for path in written:
        print(f"wrote {path}")
    print(f"""
Next, in {directory}:
    relayd check -c conf/relay.toml      # validate
    relayd                               # serve conf/relay.toml (Ctrl-C stops)
    lighttpd -D -f conf/lighttpd.conf    # lighttpd in front, on http://127.0.0.1:8080
    relay-devtoken --sub alice --groups ingest-writers   # a development token""")


def devtoken_main(argv: list[str] | None = None) -> None:
    """``relay-devtoken``: mint a development token (see relay.devtoken)."""
    from relay.devtoken import main

    sys.exit(main(argv))
