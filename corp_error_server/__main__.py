"""``corp-error-server`` / ``python -m corp_error_server``: serve, ``demo``, or ``migrate SRC DST``."""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable, List, Optional


class _Parser(argparse.ArgumentParser):
    """Bad usage is one line naming what is wrong, and exit status 2, as in the agent's commands."""

    def error(self, message: str):
        self.exit(2, "%s: error: %s (see --help)\n" % (self.prog, message))


def _read_number(kind: type, text: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not %s" % (text, "an integer" if kind is int else "a number")) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError("%r is not a finite number" % text)
    return value


def _positive(kind: type) -> Callable[[str], float]:
    def parse(text: str):
        value = _read_number(kind, text)
        if value <= 0:
            raise argparse.ArgumentTypeError("%s is not more than 0" % text)
        return value

    return parse


def _port(text: str) -> int:
    value = _read_number(int, text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("%s is not a port number (0 to 65535)" % text)
    return value


def _parser() -> argparse.ArgumentParser:
    from . import DEFAULT_MAX_BODY, DEFAULT_RETENTION_DAYS
    from .ingest import DEFAULT_MAX_WAITING

    parser = _Parser(
        prog="corp-error-server",
        description="Serve the corp-error-agent backend (default), or run `corp-error-server demo ...`, or "
        "`corp-error-server migrate SRC DST` (copy a SQLite database into PostgreSQL).",
        epilog="The token may also come from $CORP_ERROR_SERVER_TOKEN (kept out of the process list), webhooks from "
        "$CORP_ERROR_SERVER_WEBHOOKS (separated by spaces).",
    )
    parser.add_argument("command", nargs="?", choices=["serve"], default="serve", help=argparse.SUPPRESS)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=_port, default=8000, help="port (0 picks a free one)")
    parser.add_argument(
        "--db",
        help="a SQLite database file, or a postgresql://user@host/dbname URL (PostgreSQL needs the "
        "package's [postgres] extra); also $CORP_ERROR_SERVER_DB (default: "
        "$XDG_DATA_HOME/corp_error_server/errors.db, XDG_DATA_HOME being ~/.local/share unless set)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("CORP_ERROR_SERVER_TOKEN") or None,
        help="require `Authorization: Bearer TOKEN` on every route but /healthz",
    )
    parser.add_argument(
        "--retention-days",
        type=_positive(float),
        default=DEFAULT_RETENTION_DAYS,
        help="delete beacons older than this (default: %(default)s)",
    )
    parser.add_argument(
        "--max-body",
        type=_positive(int),
        default=DEFAULT_MAX_BODY,
        help="request body limit in bytes (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive(float),
        default=10.0,
        help="per-connection socket timeout in seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--max-waiting",
        type=_positive(int),
        default=DEFAULT_MAX_WAITING,
        help="writes waiting for the database beyond which requests get 503 (default: %(default)s)",
    )
    parser.add_argument(
        "--webhook",
        action="append",
        metavar="[slack=|json=]URL",
        default=os.environ.get("CORP_ERROR_SERVER_WEBHOOKS", "").split(),
        help="POST an alert on a new error group, a regression, and a fix becoming available: "
        "slack= sends {\"text\": ...}, json= (the default) the event as JSON; repeatable",
    )
    return parser


def _demo(argv: List[str]) -> int:
    try:
        from . import demo
    except ImportError as error:
        print("corp-error-server: the demo is not available (%s)" % error, file=sys.stderr)
        return 1
    return demo.main(argv)


def _migrate(argv: List[str]) -> int:
    parser = _Parser(
        prog="corp-error-server migrate",
        description="Copy the database SRC (a SQLite file) into DST (a postgresql:// URL), ids and counts as they "
        "are, in one transaction: safe to run again after an interruption, and again later to copy "
        "what SRC received since. Stop the servers writing to SRC first, or run it again after.",
    )
    parser.add_argument("src", help="the SQLite database file to copy")
    parser.add_argument("dst", help="the database to copy into: a postgresql:// URL (or a SQLite file)")
    args = parser.parse_args(argv)
    from .storage import StorageError, UnsupportedDatabase, describe, open_storage
    from .storage_copy import copy_database

    if "://" not in args.src and not os.path.isfile(args.src):
        print("corp-error-server migrate: no database file %s" % args.src, file=sys.stderr)
        return 2
    source_name = describe(args.src) if "://" in args.src else os.path.realpath(args.src)
    if source_name == (describe(args.dst) if "://" in args.dst else os.path.realpath(args.dst)):
        print("corp-error-server migrate: SRC and DST are the same database", file=sys.stderr)
        return 2
    try:
        src, dst = open_storage(args.src), open_storage(args.dst)
    except UnsupportedDatabase as error:
        print("corp-error-server migrate: %s" % error, file=sys.stderr)
        return 2
    except StorageError as error:
        print("corp-error-server migrate: cannot open a database: %s" % error, file=sys.stderr)
        return 1
    try:
        copied = copy_database(src, dst, source_name, progress=lambda table: print("copying %s" % table, flush=True))
    except StorageError as error:
        print("corp-error-server migrate: nothing copied: %s" % error, file=sys.stderr)
        return 1
    finally:
        src.close()
        dst.close()
    print(
        "migrated %s into %s: %s"
        % (source_name, describe(args.dst), ", ".join("%d %s" % (n, table) for table, n in copied.items()))
    )
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:
        return _demo(argv[1:])
    if argv[:1] == ["migrate"]:
        return _migrate(argv[1:])
    args = _parser().parse_args(argv)
    from . import create_app, default_db_path
    from .alerts import parse_webhook
    from .app import INLINE_PATHS
    from .server import make_server, serve
    from .storage import UnsupportedDatabase, describe

    try:
        webhooks = [parse_webhook(spec) for spec in args.webhook]
    except ValueError as error:
        print("corp-error-server: %s" % error, file=sys.stderr)
        return 2
    args.db = args.db or default_db_path()
    try:
        app = create_app(
            args.db,
            token=args.token,
            retention_days=args.retention_days,
            max_body=args.max_body,
            max_waiting=args.max_waiting,
            webhooks=webhooks,
        )
    except UnsupportedDatabase as error:
        print("corp-error-server: --db %s: %s" % (describe(args.db), error), file=sys.stderr)
        return 2
    except Exception as error:  # StorageError, OSError from a path that cannot be created, ...
        print("corp-error-server: cannot open database %s: %s" % (describe(args.db), error), file=sys.stderr)
        return 1
    try:
        server = make_server(
            app, args.host, args.port, request_timeout=args.timeout, inline=INLINE_PATHS, max_body=args.max_body
        )
    except OSError as error:
        print("corp-error-server: cannot listen on %s:%d: %s" % (args.host, args.port, error), file=sys.stderr)
        return 1
    log_written = serve(server)
    app.close()
    if not log_written:  # stderr is a pipe nobody reads: the interpreter's last flush of it would never end
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
