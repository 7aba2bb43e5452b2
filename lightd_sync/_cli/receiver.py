"""``lightd-sync receiver``: serve the reference remote until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sqlite3
import stat
import threading
from collections.abc import Iterator
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
_OPTIONS = ("--audit", "--rate", "--burst", "--max-body", "--history", "--db", "--nodes",
            "--webhook", "--stale-after", "--stuck-after", "--retain-days", "--batch-max",
            "--max-batch-body")  # fmt: skip
#: Where the operator token is read from unless ``--operator-token-file`` is given.
OPERATOR_TOKEN_ENV = "LIGHTD_RECEIVER_OPERATOR_TOKEN"  # noqa: S105 - a variable name
_OPTION_OF = {"operator token": "--operator-token-file", "webhook": "--webhook",
              "retain_days": "--retain-days", "batch_max": "--batch-max",
              "stale_after": "--stale-after", "stuck_after": "--stuck-after",
              "max_batch_body": "--max-batch-body", "nodes": "--nodes"}  # fmt: skip


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
        "--nodes",
        metavar="FILE",
        help='JSON file mapping node names to their tokens ({"node-a": "lightd_..."}); '
        "each request is attributed to its node, node tokens may only send, and reading "
        "needs the operator token. SIGHUP re-reads the file",
    )
    parser.add_argument(
        "--operator-token-file",
        metavar="PATH",
        help=f"file holding the operator token, which reads (/servers, /nodes, /summary, "
        f"/metrics, the status page); default: ${OPERATOR_TOKEN_ENV}. Required with --nodes",
    )
    parser.add_argument(
        "--stale-after",
        type=positive_float,
        default=90.0,
        metavar="SECONDS",
        help="a node is stale when its last request is older than this (default: %(default)g)",
    )
    parser.add_argument(
        "--stuck-after",
        type=positive_float,
        default=1800.0,
        metavar="SECONDS",
        help="a server installing for longer than this is stuck (default: %(default)g)",
    )
    parser.add_argument(
        "--secure-cookies",
        action="store_true",
        help="mark the status page's session cookie Secure even over plain HTTP: behind a "
        "proxy that terminates TLS (over HTTPS it is always Secure)",
    )
    parser.add_argument(
        "--webhook",
        action="append",
        default=[],
        metavar="URL",
        help="POST alerts (server_failed, server_recovered, node_stale, node_online) to this "
        "URL as JSON; may be given more than once",
    )
    parser.add_argument(
        "--retain-days",
        type=positive_float,
        metavar="N",
        help="delete status and billing history older than N days (default: keep; "
        "--history still bounds each server)",
    )
    parser.add_argument(
        "--batch-max",
        type=int,
        default=500,
        metavar="N",
        help="updates one POST /updates may carry, offered in /health; 0 offers no batches "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-batch-body",
        type=positive_int,
        default=8 << 20,
        metavar="BYTES",
        help="largest POST /updates body accepted (default: %(default)s)",
    )
    parser.add_argument(
        "--rate",
        type=positive_float,
        default=200.0,
        metavar="R",
        help="requests per second allowed per node (per client address without --nodes), "
        "on average (default: %(default)g)",
    )
    parser.add_argument(
        "--burst",
        type=positive_int,
        default=1000,
        metavar="B",
        help="requests a node may make at once before --rate applies (default: %(default)s)",
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


def read_operator_token(path: Optional[str]) -> Optional[str]:
    """The operator token from *path*, else ``$LIGHTD_RECEIVER_OPERATOR_TOKEN``, else None."""
    if path is not None:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read().strip()
                mode = os.fstat(fh.fileno()).st_mode
        except OSError as exc:
            raise CliError(
                f"--operator-token-file {path}: cannot read it: {exc.strerror}"
            ) from None
        except UnicodeDecodeError:
            raise CliError(f"--operator-token-file {path}: not UTF-8 text") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            print_warning(f"{path} can be read by other users; chmod 600 it")
        if not text:
            raise CliError(f"--operator-token-file {path}: the file is empty")
        return text
    return os.environ.get(OPERATOR_TOKEN_ENV, "").strip() or None


def _credentials(
    args: argparse.Namespace,
) -> tuple[Optional[str], Optional[dict[str, str]], Optional[str]]:
    """The single token, or the nodes; and the operator token."""
    from .._exceptions import ConfigError
    from .._server.nodes import load_nodes

    operator = read_operator_token(args.operator_token_file)
    if args.nodes is None:
        return read_token(args.token_env, args.token_file), None, operator
    if args.token_file is not None:
        raise CliError("--token-file and --nodes: give one (with --nodes each node has its own)")
    if operator is None:
        raise CliError(
            f"--nodes needs the operator token (node tokens only send): give "
            f"--operator-token-file PATH or set ${OPERATOR_TOKEN_ENV}"
        )
    try:
        nodes = load_nodes(args.nodes, operator=operator)
    except ConfigError as exc:
        raise CliError(f"--nodes {args.nodes}: {str(exc).partition(': ')[2]}") from None
    return None, nodes, operator


def _listening(url: str, host: str, port: int) -> str:
    """Where the receiver listens, truly: ``0.0.0.0`` is every IPv4 address, not 127.0.0.1."""
    if host in ("", "0.0.0.0"):  # noqa: S104 - naming it, not binding it
        return f"http://0.0.0.0:{port} (every IPv4 address; from this machine {url})"
    if host == "::":
        return f"http://[::]:{port} (every address; from this machine {url})"
    return url


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; 0 after a clean stop, 1 if it cannot listen."""
    from .._config import redact_token
    from .._exceptions import ConfigError
    from .._server.http import serve
    from .._server.page import StatusPage
    from ..receiver import create_app

    if not 0 <= args.port <= 65535:
        raise CliError(f"--port {args.port}: expected 0 to 65535")
    # Requests waiting for a worker thread are the design (a bounded pool), not
    # a fault: waitress's "Task queue depth is N" would warn at every burst.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    if not 0 <= args.batch_max <= 10_000:
        raise CliError(f"--batch-max {args.batch_max}: expected 0 (no batches) to 10000")
    token, nodes, operator = _credentials(args)
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
                nodes=nodes,
                operator_token=operator,
                stale_after=args.stale_after,
                stuck_after=args.stuck_after,
                webhooks=args.webhook,
                retain_days=args.retain_days,
                batch_max=args.batch_max,
                max_batch_body=args.max_batch_body,
            )
        except sqlite3.Error as exc:
            raise CliError(f"--db {args.db}: cannot open the database: {exc}") from None
        except ConfigError as exc:  # "audit: cannot open ...": name the option instead
            key, _, rest = str(exc).partition(": ")
            option = _OPTION_OF.get(key) or f"--{key.replace('_', '-')}"
            known = option in _OPTIONS or option == "--operator-token-file"
            raise CliError(f"{option}: {rest}" if known else str(exc)) from None
        except Exception as exc:  # psycopg.Error: PostgreSQL unreachable, refused, ...
            if type(exc).__module__.split(".")[0] not in ("psycopg", "psycopg_pool"):
                raise
            raise CliError(
                f"--db {_shown_db(args.db)}: cannot open the database: {_first_line(exc)}"
            ) from None
        try:
            try:
                # The status page at / (operator token: the single one without --nodes).
                page = StatusPage(
                    app, operator_token=operator or token or "", secure_cookies=args.secure_cookies
                )
                server = serve(
                    page,
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
            with server, _reload_on_sighup() as reload:
                who = (
                    f"token: {redact_token(token)}"
                    if nodes is None
                    else f"nodes: {len(nodes)} from {args.nodes}"
                )
                print(
                    f"{PROG} receiver: listening on "
                    f"{_listening(server.url, args.host, server.port)} "
                    f"(db: {_shown_db(args.db) if args.db else 'in memory'}, "
                    f"history: {args.history}, {who}, "
                    f"rate: {args.rate:g}/s burst {args.burst}, "
                    f"batches: {args.batch_max or 'off'}, "
                    f"audit: {'off' if audit is None else 'stderr' if audit == '-' else audit}); "
                    "stop with Ctrl-C or SIGTERM",
                    flush=True,
                )
                if args.host not in ("127.0.0.1", "::1", "localhost"):
                    print_warning(
                        f"serving plain HTTP on {args.host}: tokens cross the network readable; "
                        "put a TLS-terminating proxy in front of it in production"
                    )
                while not stop.wait(0.2):
                    if reload.is_set():
                        reload.clear()
                        _reload(app, args.nodes)
            stored, billed = app.stored, app.billing_stored
        finally:
            app.close()
    print(_stopped(stop.signal_name, stored, billed), flush=True)
    return EXIT_OK


def _stopped(signal_name: Optional[str], stored: int, billed: int) -> str:
    """The stop line: what this run stored (not what the database held before)."""
    why = f" by {signal_name}" if signal_name else ""
    plural = "" if stored == 1 else "s"
    billing = f", {billed} billing event{'' if billed == 1 else 's'}" if billed else ""
    return f"{PROG} receiver: stopped{why} ({stored} update{plural}{billing} stored)"


@contextlib.contextmanager
def _reload_on_sighup() -> Iterator[threading.Event]:
    """An event SIGHUP sets, for the main loop to re-read the nodes file."""
    flag = threading.Event()
    hup = getattr(signal, "SIGHUP", None)
    if hup is None or threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(hup, lambda signum, frame: flag.set())
    try:
        yield flag
    finally:
        signal.signal(hup, previous if previous is not None else signal.SIG_DFL)


def _reload(app: Any, path: Optional[str]) -> None:
    if path is None:
        print(f"{PROG} receiver: SIGHUP: no --nodes file to re-read", flush=True)
        return
    from .._exceptions import ConfigError

    try:
        app.reload_nodes(path)
    except ConfigError as exc:
        print_warning(f"SIGHUP: kept the previous nodes; {exc}")
        return
    print(f"{PROG} receiver: SIGHUP: {len(app.node_names)} nodes from {path}", flush=True)


def _shown_db(db: str) -> str:
    """The --db value without a password in it."""
    from .._server.postgres import redact_url

    return redact_url(db)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
