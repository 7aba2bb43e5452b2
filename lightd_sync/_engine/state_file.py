"""
The state file on disk: its lock, its SQLite schema, and one batch write.

Everything here runs on one thread at a time: :meth:`StateStore.open` on the
caller's thread, then only the store's writer thread. :mod:`lightd_sync._engine.state`
owns the threads and the in-memory side.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterable
from typing import Any, Optional

from .._exceptions import ConfigError
from .._forksafe import after_fork_in_child

__all__ = [
    "APPLICATION_ID",
    "StateFileError",
    "FileLock",
    "Row",
    "connect",
    "load",
    "write_batch",
]

#: ``PRAGMA application_id`` of a lightd-sync state file ("LdSy"): what tells
#: our file from any other SQLite database.
APPLICATION_ID = 0x4C645379
#: ``PRAGMA user_version``: the layout of the table below.
SCHEMA_VERSION = 2
TABLE = "lightd_sync_state"
_SCHEMA = (
    "CREATE TABLE lightd_sync_state ("
    " server TEXT PRIMARY KEY NOT NULL,"
    " status TEXT NOT NULL,"
    " data TEXT,"
    " event_id TEXT NOT NULL,"
    " acked INTEGER NOT NULL,"
    " seq INTEGER NOT NULL,"
    " error TEXT"
    ") WITHOUT ROWID",
    "CREATE INDEX lightd_sync_state_seq ON lightd_sync_state (seq)",
)
_OURS = {TABLE, TABLE + "_seq"}
# A whole batch is one JSON parameter and one statement: one sqlite3_step(),
# so the writer gives up and takes back the GIL once per batch, not once per
# row (executemany() of 10,000 rows took 0.1-4.8 s instead of 50 ms while the
# caller's thread kept the GIL busy).
_UPSERT = (
    "INSERT INTO lightd_sync_state (server, status, data, event_id, acked, seq, error)"
    " SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),"
    " json_extract(value, '$[2]'), json_extract(value, '$[3]'), 0, json_extract(value, '$[4]'),"
    " json_extract(value, '$[5]')"
    " FROM json_each(?) WHERE true"  # "WHERE true": an upsert from a SELECT needs a WHERE
    " ON CONFLICT (server) DO UPDATE SET status = excluded.status, data = excluded.data,"
    " event_id = excluded.event_id, acked = 0, seq = excluded.seq, error = excluded.error"
)
_ACK = (
    "UPDATE lightd_sync_state SET acked = 1 WHERE (server, event_id) IN"
    " (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?))"
)
_TRIM = (
    "DELETE FROM lightd_sync_state WHERE seq <="
    " (SELECT seq FROM lightd_sync_state ORDER BY seq DESC LIMIT 1 OFFSET ?)"
)
_MAGIC = b"SQLite format 3\x00"
_HEADER = 100
#: Rows per statement within a batch's transaction: one chunk's rows and its
#: JSON (about 50 KB) are all of a batch that exists at a time, whatever its size.
CHUNK = 500
#: How long SQLite waits for a lock some other program (an ``sqlite3`` shell)
#: holds on the file, at open and for each batch, before it reports an error.
BUSY_TIMEOUT = 2.0

#: (server, status, data, event_id, seq, error): one row as the writer writes it.
Row = tuple[str, str, Optional[str], str, int, Optional[str]]


class StateFileError(Exception):
    """The file cannot be used; *ours* says it is a damaged state file we may move aside."""

    def __init__(self, reason: str, *, ours: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.ours = ours


# -- the lock -------------------------------------------------------------------

# Guards _held: the (st_dev, st_ino) of every lock file some StateStore of this
# process holds. flock() alone would also refuse a second open in this process
# (it locks an open file description), but the registry says *who* holds it.
_registry_lock = threading.Lock()
_held: set[tuple[int, int]] = set()


def _reset_registry_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()  # the parent may have held it at fork()
    _held.clear()  # the child holds no lock: its stores are inactive


after_fork_in_child(_reset_registry_in_child)


class FileLock:
    """
    An exclusive ``flock`` on ``<path>.lock`` that dies with the process, with its pid inside.

    Raises:
        ConfigError: another process, or another store of this process, holds it.
        OSError: the lock file cannot be created or opened.
    """

    def __init__(self, path: str) -> None:
        self.path = path + ".lock"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            st = os.fstat(fd)
            self.key = (st.st_dev, st.st_ino)
            with _registry_lock:
                if self.key in _held:
                    raise ConfigError(
                        f"remote.state_path: {path} is already open in this process"
                        f" (pid {os.getpid()}) by another engine; give each engine its own file"
                    )
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise
                    holder = _read_pid(fd)
                    raise ConfigError(
                        f"remote.state_path: {path} is in use by another process"
                        f" (pid {holder}); each process needs its own state file"
                    ) from None
                _held.add(self.key)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self.fd: Optional[int] = fd

    def release(self) -> None:
        """Unlock and close; the lock file stays (deleting it would race a new holder)."""
        fd, self.fd = self.fd, None
        if fd is None:
            return
        with _registry_lock:
            _held.discard(self.key)
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def forget_in_child(self) -> None:
        """In a forked child: close our copy, leaving the parent's lock in place."""
        fd, self.fd = self.fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # not LOCK_UN: that would unlock the parent's description too


def _read_pid(fd: int) -> str:
    # The holder writes its pid right after it locks: give it a moment.
    deadline = time.monotonic() + 0.2
    while True:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return text
        if time.monotonic() >= deadline:
            return "unknown"
        time.sleep(0.01)


# -- opening --------------------------------------------------------------------


def _check_header(path: str) -> int:
    """Return the header's application_id (0 for a fresh file); raise StateFileError if foreign."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except IsADirectoryError:
        raise StateFileError("it is a folder, not a file") from None
    except OSError as exc:
        raise StateFileError(f"cannot open it for writing: {exc.strerror}") from None
    try:
        header = os.pread(fd, _HEADER, 0)
    except OSError as exc:
        raise StateFileError(f"cannot read it: {exc.strerror}") from None
    finally:
        os.close(fd)  # before SQLite opens it: a close drops this process's POSIX locks
    if not header:
        return 0
    if not header.startswith(_MAGIC):
        if _MAGIC.startswith(header[: len(_MAGIC)]):
            raise StateFileError(
                f"it is truncated ({len(header)} bytes, not a whole SQLite header)"
            )
        raise StateFileError("it is not a SQLite database (not a lightd-sync state file)")
    if len(header) < _HEADER:
        raise StateFileError(f"it is truncated ({len(header)} bytes, not a whole SQLite header)")
    app_id = int.from_bytes(header[68:72], "big")
    if app_id not in (0, APPLICATION_ID):
        raise StateFileError(
            f"it is another program's SQLite database (application_id {app_id:#x})"
        )
    return app_id


def connect(path: str) -> sqlite3.Connection:
    """
    Open (or create) the state file in WAL mode and check it is ours and whole.

    Raises:
        StateFileError: foreign, corrupt, truncated, unwritable or a folder.
    """
    header_id = _check_header(path)
    try:
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise StateFileError(f"SQLite cannot open it: {exc}") from None
    try:
        _prepare(conn, header_id == APPLICATION_ID)
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection, ours: bool) -> None:
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.OperationalError as exc:
        raise StateFileError(f"SQLite cannot read it: {exc}") from None
    except sqlite3.DatabaseError as exc:
        if ours:
            raise StateFileError(f"it is corrupt ({exc})", ours=True) from None
        raise StateFileError(f"it is not a readable SQLite database ({exc})") from None
    ours = ours or app_id == APPLICATION_ID
    if app_id == 0 and names:
        raise StateFileError(
            "it is another program's SQLite database (tables " + ", ".join(sorted(names)[:5]) + ")"
        )
    try:
        conn.execute("SELECT json_extract('[1]', '$[0]')")
    except sqlite3.OperationalError:
        raise StateFileError(
            f"this Python's SQLite {sqlite3.sqlite_version} has no JSON functions"
        ) from None
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise StateFileError(f"SQLite cannot put it in WAL mode (got {mode!r})")
        # FULL: each batch is fsync()ed, so it survives a power cut too, not only a kill -9.
        conn.execute("PRAGMA synchronous=FULL")
        # Checkpoint at ~1 MB of WAL and truncate it back to 1 MB: the -wal stays small.
        conn.execute("PRAGMA wal_autocheckpoint=256")
        conn.execute("PRAGMA journal_size_limit=1048576")
        # 256 KiB of page cache, in the writer thread's malloc arena: a batch
        # that touches more pages reads them back from the OS's cache (and the
        # WAL), which costs no more in a batch's time than the GIL does.
        conn.execute("PRAGMA cache_size=-256")
        if app_id == 0:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
            return
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 1 and TABLE in names:  # 0.2.0-dev: add the error column
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN error TEXT")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
            version = SCHEMA_VERSION
        if version != SCHEMA_VERSION:
            raise StateFileError(
                f"it was written by another version of lightd-sync (layout {version},"
                f" this one reads {SCHEMA_VERSION})"
            )
        check = [r[0] for r in conn.execute("PRAGMA quick_check")]
        if check != ["ok"]:
            raise StateFileError(f"it is corrupt ({'; '.join(check[:3])})", ours=True)
        if not _OURS <= names:
            raise StateFileError("it is a lightd-sync state file without its table", ours=True)
    except sqlite3.OperationalError as exc:
        raise StateFileError(f"SQLite cannot use it: {exc}") from None
    except sqlite3.DatabaseError as exc:  # malformed, not a database: damage under our header
        raise StateFileError(f"it is corrupt ({exc})", ours=ours) from None


def move_aside(path: str) -> str:
    """Rename a damaged state file (and its -wal and -shm) out of the way; return the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = f"{path}.bad-{stamp}-{os.getpid()}"
    for suffix in ("-wal", "-shm", ""):
        with contextlib.suppress(FileNotFoundError):
            os.rename(path + suffix, target + suffix)
    return target


def load(conn: sqlite3.Connection, max_servers: int) -> tuple[list[tuple[Any, ...]], int]:
    """Trim to *max_servers* rows; return the unacknowledged rows (oldest first) and the top seq."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_TRIM, (max_servers,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    top = conn.execute("SELECT max(seq) FROM lightd_sync_state").fetchone()[0] or 0
    rows = conn.execute(
        "SELECT server, status, data, event_id, error FROM lightd_sync_state"
        " WHERE acked = 0 ORDER BY seq"
    ).fetchall()
    return rows, int(top)


def write_batch(
    conn: sqlite3.Connection,
    chunks: Iterable[list[Row]],
    acks: list[tuple[str, str]],
    max_servers: int,
    count: int,
) -> int:
    """
    Write the rows of *chunks*, then *acks*, in one transaction; trim to *max_servers*.

    Each chunk (at most :data:`CHUNK` rows) is one statement: only one
    chunk's JSON exists at a time. *count* is the number of rows before;
    the number after is returned. Raises :class:`sqlite3.Error` with the
    transaction rolled back.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        written = 0
        for chunk in chunks:
            if chunk:
                conn.execute(_UPSERT, (json.dumps(chunk, separators=(",", ":")),))
                written += len(chunk)
        for start in range(0, len(acks), CHUNK):
            conn.execute(_ACK, (json.dumps(acks[start : start + CHUNK], separators=(",", ":")),))
        if written:
            count += written  # at most: some rows were updates of servers already there
            if count > max_servers:
                count = conn.execute("SELECT count(*) FROM lightd_sync_state").fetchone()[0]
                if count > max_servers:
                    conn.execute(_TRIM, (max_servers,))
                    count = max_servers
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return count


def summary(path: str) -> tuple[int, int]:
    """Return (rows, unacknowledged) of the state file at *path*, read-only, without its lock."""
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT)
    try:
        rows, unacked = conn.execute(
            "SELECT count(*), count(*) - coalesce(sum(acked), 0) FROM lightd_sync_state"
        ).fetchone()
        return int(rows), int(unacked)
    finally:
        conn.close()
