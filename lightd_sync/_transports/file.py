"""The file transport: one JSON line per update, for offline tests and audits."""

from __future__ import annotations

import datetime
import json
import os
import threading
from typing import IO, Optional, Union

from .._exceptions import DeliveryError
from .._model import Update
from .base import Transport

__all__ = ["FileTransport", "format_record"]


def format_record(update: Update, now: Optional[datetime.datetime] = None) -> str:
    """Return the JSON line (with its newline) the file transport writes for *update*."""
    moment = now or datetime.datetime.now(datetime.timezone.utc)
    ts = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps({"ts": ts, "body": update.body()}, ensure_ascii=False) + "\n"


class FileTransport(Transport):
    """
    Append each update to *path* as one JSON line, ``{"ts": ..., "body": ...}``.

    ``ts`` is the RFC 3339 UTC time of writing; ``body`` is exactly what the
    HTTP transport would POST. Lines never interleave across threads and each
    is flushed when written, so another process can follow the file. Healthy
    while the file can be written.

    Args:
        path: The file to append to; it is created on the first update.
    """

    name = "file"

    def __init__(self, path: Union[str, os.PathLike[str]]) -> None:
        self.path = os.fspath(path)
        # Guards _fh: opening, writing a whole line, flushing and closing.
        self._lock = threading.Lock()
        self._fh: Optional[IO[str]] = None
        self._closed = False

    def __repr__(self) -> str:
        return f"FileTransport({self.path!r})"

    def _open(self) -> IO[str]:
        if self._closed:
            raise DeliveryError(f"file transport for {self.path} is closed")
        if self._fh is None:
            # A lone surrogate (from a surrogateescape-decoded message) cannot be
            # UTF-8: written as \udcxx it is the very JSON escape of that character.
            self._fh = open(  # noqa: SIM115 - kept open
                self.path, "a", encoding="utf-8", errors="backslashreplace"
            )
        return self._fh

    def send(self, update: Update) -> None:
        """Append *update* as one JSON line and flush it."""
        line = format_record(update)
        try:
            with self._lock:
                fh = self._open()
                fh.write(line)
                fh.flush()
        except OSError as exc:
            raise DeliveryError(f"cannot write to {self.path}: {exc.strerror}") from exc

    def check_health(self) -> None:
        """Healthy if the file (or, before it exists, its folder) is writable."""
        target = self.path if os.path.exists(self.path) else os.path.dirname(self.path) or "."
        if not os.access(target, os.W_OK):
            raise DeliveryError(f"cannot write to {self.path}: permission denied or no such folder")

    def close(self) -> None:
        """Close the file. Later sends fail."""
        with self._lock:
            self._closed = True
            if self._fh is not None:
                fh, self._fh = self._fh, None
                fh.close()
