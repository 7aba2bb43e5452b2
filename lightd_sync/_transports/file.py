"""The file transport: one JSON line per update, for offline tests and audits."""

from __future__ import annotations

import datetime
import errno
import json
import os
import stat
import threading
from collections.abc import Sequence
from typing import IO, Optional, Union

from .._exceptions import DeliveryError
from .._forksafe import after_fork_in_child
from .._model import Event
from .base import Transport

__all__ = ["FileTransport", "format_record"]


def format_record(update: Event, now: Optional[datetime.datetime] = None) -> str:
    """Return the JSON line (with its newline) the file transport writes for *update*."""
    moment = now or datetime.datetime.now(datetime.timezone.utc)
    ts = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps({"ts": ts, "body": update.body()}, ensure_ascii=False) + "\n"


#: The file objects a fork copied into a child, kept so that they are never flushed there.
_ORPHANS: list[IO[str]] = []


class FileTransport(Transport):
    """
    Append each update to *path* as one JSON line, ``{"ts": ..., "body": ...}``.

    ``ts`` is the RFC 3339 UTC time of writing; ``body`` is exactly what the
    HTTP transport would POST. Lines never interleave across threads and each
    is flushed when written, so another process can follow the file. Healthy
    while the file can be written; a *path* that is a folder, a FIFO or
    anything else but a regular file is unhealthy, and sending to it fails
    at once (a FIFO is never opened in a way that waits for a reader).

    :meth:`close` never waits for a write: a write stuck on a hung network
    mount keeps its own thread, and only that thread, until the mount answers.

    Args:
        path: The file to append to; it is created on the first update.

    .. versionchanged:: 0.2.0 folders and FIFOs are unhealthy; ``close`` never waits for a write.
    """

    name = "file"

    def __init__(self, path: Union[str, os.PathLike[str]]) -> None:
        self.path = os.fspath(path)
        # Guards _fh: opening, writing a whole line and flushing it (so lines never
        # interleave). close() does not take it: it must not wait for a write.
        self._lock = threading.Lock()
        self._fh: Optional[IO[str]] = None
        self._closed = False
        after_fork_in_child(self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # a parent's thread may have held it at fork time
        # The parent's file object too: its buffer has a lock of its own, which a
        # parent's thread may have held at fork time, and its buffer the parent's
        # lines. Never closed nor collected here (either would flush: hang, or write
        # the parent's lines twice); the child opens the file anew.
        if self._fh is not None:
            _ORPHANS.append(self._fh)
            self._fh = None

    def __repr__(self) -> str:
        return f"FileTransport({self.path!r})"

    def _open(self) -> IO[str]:
        if self._closed:
            fh, self._fh = self._fh, None
            if fh is not None:  # close() found the lock taken and left the file to us
                fh.close()
            raise DeliveryError(f"file transport for {self.path} is closed")
        if self._fh is None:
            # O_NONBLOCK: a FIFO without a reader fails (ENXIO) instead of waiting.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o666)
            try:
                kind = os.fstat(fd).st_mode
                if not stat.S_ISREG(kind):
                    raise OSError(errno.EINVAL, f"not a regular file ({_kind(kind)})")
                os.set_blocking(fd, True)
                # A lone surrogate (from a surrogateescape-decoded message) cannot be
                # UTF-8: written as \udcxx it is the very JSON escape of that character.
                self._fh = open(  # noqa: SIM115 - kept open
                    fd, "a", encoding="utf-8", errors="backslashreplace"
                )
            except BaseException:
                os.close(fd)
                raise
        return self._fh

    def send(self, update: Event) -> None:
        """Append *update* as one JSON line and flush it."""
        self._write(format_record(update))

    def _write(self, line: str) -> None:
        try:
            with self._lock:
                fh = self._open()
                try:
                    fh.write(line)
                    fh.flush()
                finally:
                    if self._closed:  # close() came while this line was being written
                        self._fh = None
                        fh.close()
        except OSError as exc:
            why = "it is a FIFO that no one reads" if exc.errno == errno.ENXIO else exc.strerror
            raise DeliveryError(f"cannot write to {self.path}: {why}") from exc

    def max_batch(self) -> int:
        """500: many events go to the file in one write.

        .. versionadded:: 0.2.0
        """
        return _BATCH

    def send_many(self, updates: Sequence[Event]) -> list[Optional[DeliveryError]]:
        """
        Append every event as its own JSON line, all in one write and one flush.

        Returns:
            ``None`` for each event when written; the same error for each when not.

        .. versionadded:: 0.2.0
        """
        if not updates:
            return []
        lines = "".join(format_record(update) for update in updates)
        try:
            self._write(lines)
        except DeliveryError as exc:
            return [exc] * len(updates)
        return [None] * len(updates)

    def check_health(self) -> None:
        """Healthy if the path is a writable regular file (or, before it exists, its folder)."""
        try:
            kind = os.stat(self.path).st_mode
        except FileNotFoundError:
            target = os.path.dirname(self.path) or "."
            if not os.access(target, os.W_OK):
                raise DeliveryError(
                    f"cannot write to {self.path}: permission denied or no such folder"
                ) from None
            return
        except OSError as exc:
            raise DeliveryError(f"cannot write to {self.path}: {exc.strerror}") from None
        if not stat.S_ISREG(kind):
            raise DeliveryError(f"cannot write to {self.path}: it is {_kind(kind)}, not a file")
        if not os.access(self.path, os.W_OK):
            raise DeliveryError(f"cannot write to {self.path}: permission denied")

    def close(self) -> None:
        """
        Close the file. Later sends fail.

        Never waits for a write in progress: if one holds the file, the thread
        that writes closes it when its write ends.
        """
        self._closed = True
        if not self._lock.acquire(blocking=False):
            return  # a send is writing; it sees _closed and closes the file after its line
        try:
            fh, self._fh = self._fh, None
        finally:
            self._lock.release()
        if fh is not None:
            fh.close()


#: The most events one send_many() call writes.
_BATCH = 500


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"
