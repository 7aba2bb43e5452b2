"""``lightd-sync receiver``: serve the reference remote until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import stat
from typing import Any, Optional

from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    PROG,
    CliError,
    add_command,
    positive_float,
    positive_int,
    print_warning,
    stop_on_signals,
)

__all__ = ["DEFAULT_TOKEN_ENV", "add_parser", "read_token", "run"]

#: Where the token is read from unless ``--token-env`` or ``--token-file`` says otherwise.
DEFAULT_TOKEN_ENV = "LIGHTD_REMOTE_TOKEN"  # noqa: S105 - a variable name, not a token
_MIN_TOKEN = 20
_OPTIONS = ("--audit", "--rate", "--burst", "--max-body", "--history", "--db")


class _RefuseToken(argparse.Action):
    """``--token VALUE`` is refused without echoing VALUE: it would sit in ``ps`` for all to see."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: Optional[str] = None,
    ) -> None:
        parser.error(
            "a token is never taken from the command line, which every user of the machine "
            "can read (ps); use --token-env NAME or --token-file PATH"
        )


def add_parser(subparsers: Any) -> None:
    """Add the ``receiver`` subcommand."""
    parser = add_command(
        subparsers,
        "receiver",
        summary="run the reference remote server (GET /health, POST /update, SQLite)",
        description="Serve the reference remote: GET /health, POST /update, GET /servers "
        "and GET /servers/ID, all behind Authorization: Bearer <token>, with body "
        "validation, a rate limit per client, an audit log and a SQLite store. Runs "
        "until SIGTERM or Ctrl-C, then stops cleanly (exit 0). The token is read from "
        "an environment variable or a file, never from the command line, where every "
        "user of the machine could read it.",
        epilog="example:\n"
        "  export LIGHTD_REMOTE_TOKEN=lightd_$(openssl rand -hex 16)\n"
        "  lightd-sync receiver --host 127.0.0.1 --port 8080 --db fleet.sqlite3",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8080,
        help="port to listen on; 0 picks a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--db",
        metavar="FILE|URL",
        help="SQLite file, or postgresql://... URL (several receivers may share one "
        "database; needs lightd-sync[postgres]), to keep the updates in "
        "(default: in memory, lost on exit)",
    )
    parser.add_argument(
        "--history",
        type=positive_int,
        default=1000,
        metavar="N",
        help="updates kept per server, the newest ones (default: %(default)s)",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--token-env",
        metavar="NAME",
        default=DEFAULT_TOKEN_ENV,
        help="read the token from this environment variable (default: %(default)s)",
    )
    source.add_argument(
        "--token-file",
        metavar="PATH",
        help="read the token from this file (surrounding whitespace is ignored)",
    )
    parser.add_argument("--token", action=_RefuseToken, help=argparse.SUPPRESS)
    parser.add_argument(
        "--rate",
        type=positive_float,
        default=50.0,
        metavar="R",
        help="requests per second allowed per client address, on average (default: %(default)g)",
    )
    parser.add_argument(
        "--burst",
        type=positive_int,
        default=200,
        metavar="B",
        help="requests a client may make at once before --rate applies (default: %(default)s)",
    )
    parser.add_argument(
        "--max-body",
        type=positive_int,
        default=65536,
        metavar="BYTES",
        help="largest request body accepted; larger ones get 413 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-connections",
        type=positive_int,
        default=1000,
        metavar="N",
        help="connections open at once; more wait in the listen backlog (default: %(default)s)",
    )
    parser.add_argument(
        "--request-timeout",
        type=positive_float,
        default=10.0,
        metavar="SECONDS",
        help="time a request may take to arrive in full, however it trickles; then the "
        "connection is closed (default: %(default)g)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=positive_float,
        default=10.0,
        metavar="SECONDS",
        help="time a connection may stay silent before it is closed (default: %(default)g)",
    )
    audit = parser.add_mutually_exclusive_group()
    audit.add_argument(
        "--audit",
        metavar="FILE",
        default="-",
        help="append one JSON line per request to FILE; - is stderr (default)",
    )
    audit.add_argument("--no-audit", action="store_true", help="keep no audit log of the requests")


def _check_token(token: str, source: str) -> str:
    if not token:
        raise CliError(
            f"no token: {source} is empty or unset; put there the token the Lightd nodes "
            "send (e.g. lightd_ followed by 32 random hex digits)"
        )
    if not (token.isascii() and token.isprintable()) or any(ch.isspace() for ch in token):
        raise CliError(
            f"the token in {source} contains whitespace or control characters; "
            "it must be usable as an HTTP header value"
        )
    if len(token) < _MIN_TOKEN:
        print_warning(
            f"the token in {source} has {len(token)} characters; Lightd tokens have at "
            f"least {_MIN_TOKEN}, and a short one is easy to guess"
        )
    return token


def read_token(token_env: str, token_file: Optional[str]) -> str:
    """
    Return the token from the file *token_file*, or else from the variable *token_env*.

    Raises:
        CliError: The token is missing, empty, or not usable as a header value.
    """
    if token_file is None:
        return _check_token(os.environ.get(token_env, "").strip(), f"${token_env}")
    try:
        with open(token_file, encoding="utf-8") as fh:
            text = fh.read()
            mode = os.fstat(fh.fileno()).st_mode
    except OSError as exc:
        raise CliError(f"--token-file {token_file}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"--token-file {token_file}: not UTF-8 text") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        print_warning(f"{token_file} can be read by other users; chmod 600 it")
    return _check_token(text.strip(), f"the file {token_file}")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; 0 after a clean stop, 1 if it cannot listen."""
    from .._config import redact_token
    from .._exceptions import ConfigError
    from .._server.http import serve
    from ..receiver import create_app

    if not 0 <= args.port <= 65535:
        raise CliError(f"--port {args.port}: expected 0 to 65535")
    # Requests waiting for a worker thread are the design (a bounded pool), not
    # a fault: waitress's "Task queue depth is N" would warn at every burst.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    token = read_token(args.token_env, args.token_file)
    audit = None if args.no_audit else args.audit
    with stop_on_signals() as stop:
        try:
            app = create_app(
                token,
                db_path=args.db,
                rate=args.rate,
                burst=args.burst,
                audit=audit,
                max_body=args.max_body,
                history=args.history,
            )
        except sqlite3.Error as exc:
            raise CliError(f"--db {args.db}: cannot open the database: {exc}") from None
        except ConfigError as exc:  # "audit: cannot open ...": name the option instead
            key, _, rest = str(exc).partition(": ")
            option = f"--{key.replace('_', '-')}"
            raise CliError(f"{option}: {rest}" if option in _OPTIONS else str(exc)) from None
        except Exception as exc:  # psycopg.Error: PostgreSQL unreachable, refused, ...
            if type(exc).__module__.split(".")[0] not in ("psycopg", "psycopg_pool"):
                raise
            raise CliError(
                f"--db {_shown_db(args.db)}: cannot open the database: {_first_line(exc)}"
            ) from None
        try:
            try:
                server = serve(
                    app,
                    args.host,
                    args.port,
                    request_timeout=args.request_timeout,
                    idle_timeout=args.idle_timeout,
                    connection_limit=args.max_connections,
                )
            except OSError as exc:
                raise CliError(
                    f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
                    EXIT_FAILED,
                ) from None
            with server:
                print(
                    f"{PROG} receiver: listening on {server.url} "
                    f"(db: {_shown_db(args.db) if args.db else 'in memory'}, "
                    f"history: {args.history}, token: {redact_token(token)}, "
                    f"rate: {args.rate:g}/s burst {args.burst}, "
                    f"audit: {'off' if audit is None else 'stderr' if audit == '-' else audit}); "
                    "stop with Ctrl-C or SIGTERM",
                    flush=True,
                )
                if args.host not in ("127.0.0.1", "::1", "localhost"):
                    print_warning(
                        f"serving plain HTTP on {args.host}: tokens cross the network readable; "
                        "put a TLS-terminating proxy in front of it in production"
                    )
                while not stop.wait(1.0):
                    pass
            stored = app.store.count()
        finally:
            app.close()
    why = f" by {stop.signal_name}" if stop.signal_name else ""
    plural = "" if stored == 1 else "s"
    print(f"{PROG} receiver: stopped{why} ({stored} update{plural} stored)", flush=True)
    return EXIT_OK


def _shown_db(db: str) -> str:
    """The --db value without a password in it."""
    from .._server.postgres import redact_url

    return redact_url(db)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
