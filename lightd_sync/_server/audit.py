"""The receiver's audit log: one JSON line per request, :class:`AuditLog`."""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import threading
from collections.abc import Iterable
from typing import IO, Any, Optional, Union

from .._exceptions import ConfigError
from .._forksafe import after_fork_in_child
from .._logutil import Throttle, get_logger, safe_log

__all__ = ["AuditLog", "AuditTarget", "Scrubber", "rfc3339"]

#: Where audit lines go: a file path (appended to), an open text file, ``"-"`` for stderr.
AuditTarget = Union[IO[str], str, "os.PathLike[str]", None]

log = get_logger("receiver")


#: Runs of at least this many characters of the token are cut from what is written.
SCRUB_WINDOW = 8
_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class Scrubber:
    """
    Replace every piece of a secret in a text with ``<token>``, whatever its case.

    A piece is any run of :data:`SCRUB_WINDOW` characters of the secret (all of
    it, if shorter), so a value cut short, or an HTTP method upper-cased by
    the server, leaves nothing of the secret behind. Several secrets may be
    given (the receiver's nodes and operator); :meth:`add` adds more.
    """

    def __init__(self, secret: Union[str, Iterable[str]]) -> None:
        # Replaced whole by add() (one reference swap): piece size -> pieces.
        self._pieces: dict[int, frozenset[str]] = {}
        self.add([secret] if isinstance(secret, str) else secret)

    def add(self, secrets: Iterable[str]) -> None:
        """Scrub these secrets too, from now on."""
        pieces = {size: set(found) for size, found in self._pieces.items()}
        for secret in secrets:
            lowered = secret.translate(_LOWER)
            size = min(SCRUB_WINDOW, len(lowered))
            if size == 0:
                continue
            found = pieces.setdefault(size, set())
            found.update(lowered[i : i + size] for i in range(len(lowered) - size + 1))
        self._pieces = {size: frozenset(found) for size, found in sorted(pieces.items())}

    def __call__(self, text: str) -> str:
        """*text* with every run covered by pieces of a secret replaced by ``<token>``."""
        for size, pieces in self._pieces.items():
            text = self._scrub(text, size, pieces)
        return text

    @staticmethod
    def _scrub(text: str, size: int, pieces: frozenset[str]) -> str:
        if len(text) < size:
            return text
        lowered = text.translate(_LOWER)  # ASCII only: every index stays in place
        covered_to = -1
        spans: list[list[int]] = []
        for i in range(len(lowered) - size + 1):
            if lowered[i : i + size] in pieces:
                if spans and i <= covered_to:
                    spans[-1][1] = i + size
                else:
                    spans.append([i, i + size])
                covered_to = i + size
        if not spans:
            return text
        parts, at = [], 0
        for begin, end in spans:
            parts.append(text[at:begin])
            parts.append("<token>")
            at = end
        parts.append(text[at:])
        return "".join(parts)


def rfc3339(timestamp: float) -> str:
    """Format seconds since the epoch as RFC 3339 in UTC, to the millisecond."""
    when = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


class AuditLog:
    """
    Append one JSON object per line to a file, an open stream or stderr.

    Thread-safe: lines never interleave. A failing write is logged (at most
    one warning per ten seconds) and never raises.

    Args:
        target: A path to append to (opened now, closed by :meth:`close`), an
            open text stream (flushed after each line, never closed here),
            ``"-"`` for whatever ``sys.stderr`` is at each write, or ``None``
            for no audit at all.

    Raises:
        ConfigError: The file cannot be opened, or *target* is of another type.
    """

    def __init__(self, target: AuditTarget) -> None:
        self._to_stderr = isinstance(target, str) and target == "-"
        self._owned = False
        stream: Optional[IO[str]] = None
        if target is None or self._to_stderr:
            pass
        elif isinstance(target, (str, os.PathLike)):
            name = os.fspath(target)
            try:
                stream = open(name, "a", encoding="utf-8")  # noqa: SIM115  # closed by close()
            except OSError as exc:
                raise ConfigError(f"audit: cannot open {name!r}: {exc.strerror}") from None
            self._owned = True
        elif callable(getattr(target, "write", None)):
            stream = target
        else:
            raise ConfigError(
                f"audit: expected a file path, an open text file, '-' or None, "
                f"got {type(target).__name__}"
            )
        # Guards _stream, _closed and _failures: request threads write lines
        # concurrently, close() may come from any thread.
        self._lock = threading.Lock()
        self._stream = stream
        self._closed = False
        self._failures = Throttle()
        after_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # a parent's thread may have held it

    @property
    def enabled(self) -> bool:
        """Whether lines are written anywhere."""
        return self._to_stderr or self._stream is not None

    def write(self, record: dict[str, Any]) -> None:
        """Write *record* as one line of JSON (ASCII, so any encoding can hold it)."""
        if not self.enabled:
            return
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            if self._closed:
                return
            stream = sys.stderr if self._to_stderr else self._stream
            if stream is None:
                return
            try:
                stream.write(line)
                stream.flush()
            except (OSError, ValueError) as exc:  # disk full, closed by its owner, ...
                missed = self._failures.hit()
                if missed is not None:
                    safe_log(
                        log,
                        logging.WARNING,
                        "cannot write the audit log (%s); %d line(s) lost",
                        exc,
                        missed,
                    )

    def close(self) -> None:
        """Stop writing; close the file if this log opened it. Calling it again does nothing."""
        with self._lock:
            self._closed = True
            stream, self._stream = self._stream, None
            if self._owned and stream is not None:
                stream.close()
