"""
The reference remote: a WSGI application keeping Lightd's updates in SQLite or PostgreSQL.

It implements the contract's two endpoints, ``GET /health`` and
``POST /update`` (status updates, error updates with any ``error`` value,
and Lightd's billing events), the batch extension ``POST /updates`` (offered
in ``/health`` as ``{"batch": {"max": N}}``), and the operator's views:
``GET /servers`` (the latest state of every server, a page at a time with
``?limit=N&after=ID``, filtered by ``status=``, ``node=`` and ``prefix=``),
``GET /servers.csv`` (the same as CSV), ``GET /servers/<id>`` (one server's
state and history), ``GET /servers/<id>/usage`` (its billing events, newest
first), ``GET /nodes`` (each node's heartbeat state), ``GET /summary`` (the
fleet at a glance) and ``GET /metrics`` (Prometheus text).
Every request needs ``Authorization: Bearer <token>``: with *nodes*, a node's
token sends and the operator's token reads (the status page's middleware may
also set ``environ["lightd_sync.operator"] = True``); without, the single
token does both. Every body is validated; every node (or client address) is
rate-limited; every attempt is audited. Errors are JSON
``{"success": false, "error": "..."}`` naming the field at fault, and never
echo what was sent.

An update may carry the ``X-Lightd-Event-Id`` header (an extension, at most 64
printable ASCII characters): it is stored, and an update whose id its server
already sent is acknowledged without being stored twice. Time-ordered ids
(UUIDv7, as lightd-sync makes them) also keep a stale update that arrives late
from replacing a newer state; an id that is not time-ordered, or lies more
than five minutes ahead of the receiver's clock, orders nothing.

Each audit line is a JSON object with ``ts`` (RFC 3339, UTC), ``client``,
``method``, ``path``, ``server`` (or null), ``status`` and ``outcome``: one of
``ok``, ``stored``, ``duplicate``, ``unauthorized``, ``forbidden`` (403: a
node's token reading, or the operator's sending), ``invalid`` (400, 411,
415), ``too_large``, ``not_found``, ``method_not_allowed``, ``rate_limited``,
``unavailable`` (503: storage failed or closed) or ``error`` (500: a bug,
logged to ``lightd_sync.receiver``); plus ``error`` and ``event_id`` when
there are any, and ``node`` when a node's token sent it. No audit or log
line holds a token, nor any 8 characters of one in a row.

Serve it with any WSGI server: :func:`serve` runs it on waitress in
background threads (what the receiver command, the demo and the testing kit
do), and :func:`create_app_from_env` builds it for gunicorn and the like:

>>> from lightd_sync import receiver
>>> from lightd_sync.receiver import serve
>>> app = receiver.create_app("lightd_ad2f7fc49ed640429c450e14ed07c8d5")
>>> with app, serve(app) as server:
...     server.url.startswith("http://127.0.0.1:")
True
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Callable, Optional, Union

from ._exceptions import ConfigError
from ._server.app import DEFAULT_BATCH_BODY, DEFAULT_BATCH_MAX, ReceiverApp
from ._server.audit import AuditTarget
from ._server.http import WsgiServer, serve
from ._server.nodes import load_nodes
from ._server.store import DEFAULT_HISTORY, ReceiverStore

__all__ = [
    "ReceiverApp",
    "ReceiverStore",
    "WsgiServer",
    "create_app",
    "create_app_from_env",
    "serve",
]

#: The variables :func:`create_app_from_env` reads.
TOKEN_ENV = "LIGHTD_RECEIVER_TOKEN"  # noqa: S105 - a variable name, not a token
TOKEN_FILE_ENV = "LIGHTD_RECEIVER_TOKEN_FILE"  # noqa: S105
DB_ENV = "LIGHTD_RECEIVER_DB"
HISTORY_ENV = "LIGHTD_RECEIVER_HISTORY"
AUDIT_ENV = "LIGHTD_RECEIVER_AUDIT"
RATE_ENV = "LIGHTD_RECEIVER_RATE"
BURST_ENV = "LIGHTD_RECEIVER_BURST"
NODES_ENV = "LIGHTD_RECEIVER_NODES"
OPERATOR_TOKEN_ENV = "LIGHTD_RECEIVER_OPERATOR_TOKEN"  # noqa: S105 - a variable name
OPERATOR_TOKEN_FILE_ENV = "LIGHTD_RECEIVER_OPERATOR_TOKEN_FILE"  # noqa: S105
WEBHOOKS_ENV = "LIGHTD_RECEIVER_WEBHOOKS"
STALE_AFTER_ENV = "LIGHTD_RECEIVER_STALE_AFTER"
STUCK_AFTER_ENV = "LIGHTD_RECEIVER_STUCK_AFTER"
RETAIN_DAYS_ENV = "LIGHTD_RECEIVER_RETAIN_DAYS"
BATCH_MAX_ENV = "LIGHTD_RECEIVER_BATCH_MAX"


def create_app(
    token: Optional[str],
    *,
    db_path: Union[str, os.PathLike[str], None] = None,
    rate: float = 200.0,
    burst: int = 1000,
    audit: AuditTarget = None,
    max_body: int = 65536,
    clock: Callable[[], float] = time.monotonic,
    history: Optional[int] = DEFAULT_HISTORY,
    nodes: Optional[Mapping[str, str]] = None,
    operator_token: Optional[str] = None,
    stale_after: float = 90.0,
    stuck_after: float = 1800.0,
    webhooks: Sequence[str] = (),
    retain_days: Optional[float] = None,
    batch_max: int = DEFAULT_BATCH_MAX,
    max_batch_body: int = DEFAULT_BATCH_BODY,
) -> ReceiverApp:
    """
    Build the receiver's WSGI application.

    Args:
        token: The shared secret clients must send as ``Authorization: Bearer <token>``.
        db_path: Where to keep updates: a SQLite file (created if missing), a
            ``postgresql://`` URL (needs ``lightd-sync[postgres]``; several
            receivers may share the database), or ``None`` for memory, gone
            on :meth:`ReceiverApp.close`. The schema is created, or migrated
            from an older version, on open.
        rate: Requests per second each client address may make on average
            (``math.inf``: no limit); beyond, 429 with ``Retry-After``.
        burst: Requests a client may make at once before *rate* applies.
        audit: Where to write one JSON line per request: a file path
            (appended to), an open text file, ``"-"`` for stderr, or ``None``.
            Lines never contain the token.
        max_body: Largest ``POST /update`` body accepted, in bytes; beyond, 413.
        clock: Monotonic seconds for the rate limiter (tests inject their own).
        history: Updates (and billing events) kept per server, the newest
            ones; ``None`` keeps all.

            .. versionadded:: 0.2.0
        nodes: Node name -> token (names 1-64 of ``[A-Za-z0-9._-]``, tokens
            of at least 20 printable ASCII characters, none shared). Each
            request is attributed to the node whose token it carries; node
            tokens may only send (``/health``, ``/update``, ``/updates``).
            Give ``token=None`` with it.

            .. versionadded:: 0.2.0
        operator_token: The token that reads (``/servers``, ``/nodes``,
            ``/summary``, ``/metrics``, ...); required with *nodes*.

            .. versionadded:: 0.2.0
        stale_after: Seconds after its last request a node turns ``stale``.

            .. versionadded:: 0.2.0
        stuck_after: Seconds in ``installing`` after which a server is ``stuck``.

            .. versionadded:: 0.2.0
        webhooks: URLs alerts are POSTed to (``server_failed``,
            ``server_recovered``, ``node_stale``, ``node_online``).

            .. versionadded:: 0.2.0
        retain_days: Delete status and billing history older than this many days.

            .. versionadded:: 0.2.0
        batch_max: Items one ``POST /updates`` may hold, offered in
            ``/health``; 0 offers no batches.

            .. versionadded:: 0.2.0
        max_batch_body: Largest ``POST /updates`` body accepted, in bytes.

            .. versionadded:: 0.2.0

    Raises:
        ConfigError: An argument is invalid, the audit file cannot be opened,
            or psycopg is missing for a ``postgresql://`` URL.
        sqlite3.Error: The SQLite database cannot be opened.
        psycopg.Error: The PostgreSQL database cannot be reached.
    """
    return ReceiverApp(
        token,
        db_path=db_path,
        rate=rate,
        burst=burst,
        audit=audit,
        max_body=max_body,
        clock=clock,
        history=history,
        nodes=nodes,
        operator_token=operator_token,
        stale_after=stale_after,
        stuck_after=stuck_after,
        webhooks=webhooks,
        retain_days=retain_days,
        batch_max=batch_max,
        max_batch_body=max_batch_body,
    )


def _env_number(env: Mapping[str, str], name: str, kind: type, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"${name}: expected a {kind.__name__}, got {raw[:40]!r}") from None
    if not value > 0:
        raise ConfigError(f"${name}: must be > 0")
    return float(value)


def _env_token(env: Mapping[str, str]) -> str:
    path = env.get(TOKEN_FILE_ENV, "").strip()
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                token = fh.read().strip()
                mode = os.fstat(fh.fileno()).st_mode
        except OSError as exc:
            raise ConfigError(f"${TOKEN_FILE_ENV}: cannot read {path!r}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"${TOKEN_FILE_ENV}: {path!r} is not UTF-8 text") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            from ._logutil import get_logger

            get_logger("receiver").warning("%s can be read by other users; chmod 600 it", path)
        source = f"the file in ${TOKEN_FILE_ENV}"
    else:
        token = env.get(TOKEN_ENV, "").strip()
        source = f"${TOKEN_ENV}"
    if not token:
        raise ConfigError(
            f"no token: set ${TOKEN_ENV}, or ${TOKEN_FILE_ENV} to a file holding it "
            "(a token is never read from the command line)"
        )
    if not (token.isascii() and token.isprintable()) or any(ch.isspace() for ch in token):
        raise ConfigError(f"the token in {source} contains whitespace or control characters")
    return token


def create_app_from_env(environ: Optional[Mapping[str, str]] = None) -> ReceiverApp:
    """
    Build the receiver from environment variables: what gunicorn and other WSGI servers call.

    ``gunicorn 'lightd_sync.receiver:create_app_from_env()'`` runs it; each
    worker process builds its own app (and its own database connections).
    The token comes from the environment or a file, never from the command
    line, where every user of the machine can read it (``ps``).

    Variables:
        ``LIGHTD_RECEIVER_TOKEN``, or ``LIGHTD_RECEIVER_TOKEN_FILE`` (a file
        holding the token; it wins if both are set);
        ``LIGHTD_RECEIVER_DB`` (a SQLite file or a ``postgresql://`` URL;
        unset: memory, one per worker, so set it under gunicorn);
        ``LIGHTD_RECEIVER_HISTORY`` (updates kept per server, default 1000);
        ``LIGHTD_RECEIVER_AUDIT`` (a file, or ``-`` for stderr; unset: none);
        ``LIGHTD_RECEIVER_RATE`` and ``LIGHTD_RECEIVER_BURST``;
        ``LIGHTD_RECEIVER_NODES`` (a nodes file, as ``--nodes``) with
        ``LIGHTD_RECEIVER_OPERATOR_TOKEN`` or ``LIGHTD_RECEIVER_OPERATOR_TOKEN_FILE``;
        ``LIGHTD_RECEIVER_WEBHOOKS`` (URLs separated by spaces),
        ``LIGHTD_RECEIVER_STALE_AFTER``, ``LIGHTD_RECEIVER_STUCK_AFTER``,
        ``LIGHTD_RECEIVER_RETAIN_DAYS`` and ``LIGHTD_RECEIVER_BATCH_MAX``.

    Under gunicorn a bad variable stops it with one line naming it (gunicorn's
    "app failed to load"), not a traceback.

    Args:
        environ: Where to read the variables; default ``os.environ``.

    Raises:
        ConfigError: A variable is missing or invalid, naming it.

    .. versionadded:: 0.2.0
    """
    env = os.environ if environ is None else environ
    try:
        return _from_env(env)
    except ConfigError as exc:
        # Under gunicorn, its own error for an app that cannot load: one clear
        # line and a stop, instead of a traceback and a worker boot loop.
        errors = sys.modules.get("gunicorn.errors")
        if errors is not None and "gunicorn.arbiter" in sys.modules:
            raise errors.AppImportError(f"lightd-sync receiver: {exc}") from None
        raise


def _from_env(env: Mapping[str, str]) -> ReceiverApp:
    nodes_path = env.get(NODES_ENV, "").strip()
    operator = _env_operator(env)
    nodes = None
    token: Optional[str] = None
    if nodes_path:
        if operator is None:
            raise ConfigError(
                f"${NODES_ENV} needs the operator token: set ${OPERATOR_TOKEN_ENV} "
                f"or ${OPERATOR_TOKEN_FILE_ENV}"
            )
        try:
            nodes = load_nodes(nodes_path, operator=operator)
        except ConfigError as exc:
            raise ConfigError(f"${NODES_ENV}: {str(exc).partition(': ')[2]}") from None
    else:
        token = _env_token(env)
    history = int(_env_number(env, HISTORY_ENV, int, DEFAULT_HISTORY))
    retain = env.get(RETAIN_DAYS_ENV, "").strip()
    batch = env.get(BATCH_MAX_ENV, "").strip()
    if batch and not (batch.isdigit() and int(batch) <= 10_000):
        raise ConfigError(f"${BATCH_MAX_ENV}: expected 0 (no batches) to 10000")
    return create_app(
        token,
        db_path=env.get(DB_ENV, "").strip() or None,
        rate=_env_number(env, RATE_ENV, float, 200.0),
        burst=int(_env_number(env, BURST_ENV, int, 1000)),
        audit=env.get(AUDIT_ENV, "").strip() or None,
        history=history,
        nodes=nodes,
        operator_token=operator,
        stale_after=_env_number(env, STALE_AFTER_ENV, float, 90.0),
        stuck_after=_env_number(env, STUCK_AFTER_ENV, float, 1800.0),
        webhooks=env.get(WEBHOOKS_ENV, "").split(),
        retain_days=_env_number(env, RETAIN_DAYS_ENV, float, 0.0) if retain else None,
        batch_max=int(batch) if batch else DEFAULT_BATCH_MAX,
    )


def _env_operator(env: Mapping[str, str]) -> Optional[str]:
    path = env.get(OPERATOR_TOKEN_FILE_ENV, "").strip()
    if not path:
        return env.get(OPERATOR_TOKEN_ENV, "").strip() or None
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError as exc:
        raise ConfigError(
            f"${OPERATOR_TOKEN_FILE_ENV}: cannot read {path!r}: {exc.strerror}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"${OPERATOR_TOKEN_FILE_ENV}: {path!r} is not UTF-8 text") from None
