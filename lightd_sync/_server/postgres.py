"""
The receiver's store on PostgreSQL: :class:`PostgresStore`, shared by several receivers.

Needs psycopg 3 and its pool (``pip install 'lightd-sync[postgres]'``). Every
decision is taken by the database inside one transaction (see
:mod:`lightd_sync._server.schema`), so any number of receiver processes on one
database behave as one receiver: an event id is stored once, and "newer wins"
is decided under the row lock of the server's latest state.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Optional

from .._exceptions import ConfigError, LightdSyncError
from .._threads import quiet_signals
from . import schema as sql
from .queries import Run, SqlStore, create_schema

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

__all__ = ["PostgresStore", "is_postgres_url", "redact_url"]

_SCHEMES = ("postgresql://", "postgres://")
# Taken while the schema is created or migrated, so receivers starting together
# do not race each other's CREATE TABLE.
_SCHEMA_LOCK = 0x6C696768  # "ligh"
_names = itertools.count(1)


def is_postgres_url(target: object) -> bool:
    """Whether *target* names a PostgreSQL database rather than a SQLite file."""
    return isinstance(target, str) and target.startswith(_SCHEMES)


def _pg(statement: str) -> str:
    return statement.replace("?", "%s")


class PostgresStore(SqlStore):
    """
    The updates a receiver took, in PostgreSQL; the same methods as :class:`ReceiverStore`.

    Thread-safe: connections come from a ``psycopg_pool.ConnectionPool``
    (threads named ``lightd-sync-pg-N-…``, ended by :meth:`close`).

    Args:
        url: ``postgresql://user@host/db`` or any libpq connection URL; a
            password in it is never shown (``repr``, errors, logs).
        history: Updates kept per server, the newest ones (``None``: all).
        pool_size: Connections open at most.
        connect_timeout: Seconds to wait for the first connection.

    Raises:
        ConfigError: psycopg is not installed.
        psycopg.Error: The database cannot be reached or migrated.
    """

    def __init__(
        self,
        url: str,
        *,
        history: Optional[int] = sql.DEFAULT_HISTORY,
        pool_size: int = 8,
        connect_timeout: float = 10.0,
    ) -> None:
        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError:
            raise ConfigError(
                "db: a postgresql:// URL needs psycopg 3 and psycopg_pool; "
                "pip install 'lightd-sync[postgres]'"
            ) from None
        self.history_limit = sql.check_history(history)
        self.memory = False
        self._postgres = True
        self.errors: tuple[type[Exception], ...] = (psycopg.Error,)
        self._shown = redact_url(url)
        # Set once by close() (the pool itself is thread-safe): later calls raise.
        self._closed = False
        self._pool: ConnectionPool[Any] = ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            name=f"lightd-sync-pg-{next(_names)}",
            open=False,
            timeout=connect_timeout,
        )
        # One connection of our own first: if the database cannot be reached,
        # its error says why at once (the pool would retry, and only time out).
        timeout = max(1, round(connect_timeout))
        with psycopg.connect(url, connect_timeout=timeout) as conn, conn.transaction():
            self._create_schema(conn)
        try:
            with quiet_signals():  # the pool's threads never take the daemon's signals
                self._pool.open(wait=False)
            self._pool.wait(timeout=connect_timeout)
        except BaseException:
            self._pool.close(timeout=1.0)
            raise

    @staticmethod
    def _create_schema(conn: psycopg.Connection[Any]) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        for statement in sql.tables(
            serial="BIGSERIAL",
            real="DOUBLE PRECISION",
            collate=' COLLATE "C"',  # ids sort by code point, as in SQLite
        ):
            conn.execute(statement)

        def columns(table: str) -> set[str]:
            return {
                row[0]
                for row in conn.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_name = %s AND table_schema = current_schema()",
                    (table,),
                )
            }

        def run(statement: str, params: Any = ()) -> Any:
            return conn.execute(_pg(statement), params)

        create_schema(run, columns("latest"), columns("updates"))

    def _check_open(self) -> None:
        if self._closed:
            raise LightdSyncError("the receiver's store is closed")

    @contextlib.contextmanager
    def _tx(self, *, write: bool) -> Iterator[Run]:
        self._check_open()
        with self._pool.connection() as conn, conn.transaction():

            def run(statement: str, params: Any = ()) -> Any:
                return conn.execute(_pg(statement), params)

            yield run

    def close(self) -> None:
        """Close every connection and end the pool's threads. Calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._pool.close(timeout=5.0)

    def __enter__(self) -> PostgresStore:
        """Use the store in a ``with`` block: it is closed on the way out.

        .. versionadded:: 0.2.0
        """
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PostgresStore {self._shown}{' closed' if self._closed else ''}>"


def redact_url(url: str) -> str:
    """*url* without its password, for reprs and messages."""
    scheme, _, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:***@{host}" if ":" in userinfo else url
