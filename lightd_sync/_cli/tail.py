"""``lightd-sync tail FILE [--follow]``: read a file-transport log, one readable line per update."""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys
from typing import IO, Any, Optional

from ._common import (
    EXIT_OK,
    CliError,
    StopFlag,
    add_command,
    clean,
    positive_float,
    positive_int,
    print_warning,
    stop_on_signals,
)

__all__ = ["add_parser", "format_record_line", "parse_record", "run"]

_MIN_SERVER_WIDTH = 16


def add_parser(subparsers: Any) -> None:
    """Add the ``tail`` subcommand."""
    parser = add_command(
        subparsers,
        "tail",
        summary="show a file-transport log, one line per update",
        description="Read the log the file transport writes "
        '({"ts": ..., "body": {...}} per line) and print one line per update: '
        "time, server, status (or `failed: message` for an error update). "
        "Malformed lines are reported on stderr with their line number and skipped.",
        epilog="examples:\n  lightd-sync tail updates.jsonl\n  lightd-sync tail -f updates.jsonl",
    )
    parser.add_argument("file", metavar="FILE", help="the file-transport log (remote.path)")
    parser.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing updates as they are appended, until Ctrl-C or SIGTERM",
    )
    parser.add_argument(
        "-n",
        "--lines",
        type=positive_int,
        metavar="N",
        help="start with the last N updates already in the file (default: all)",
    )
    parser.add_argument(
        "--interval",
        type=positive_float,
        default=0.2,
        metavar="SECONDS",
        help="how often --follow looks for new lines (default: %(default)s)",
    )


def parse_record(line: str) -> tuple[str, str, str]:
    """
    Parse one file-transport line into ``(ts, server, what)``.

    ``what`` is the status, or ``failed: <data>`` for an error update.

    Raises:
        ValueError: The line is not a file-transport record; the message says why.
    """
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # an int of 5000 digits, nesting too deep
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    ts, body = doc.get("ts"), doc.get("body")
    if not isinstance(ts, str):
        raise ValueError('no "ts" string')
    if not isinstance(body, dict):
        raise ValueError('no "body" object')
    server = body.get("server")
    if not isinstance(server, str) or not server:
        raise ValueError('the body has no "server"')
    if "error" in body:
        error, data = body.get("error"), body.get("data")
        if not isinstance(error, str) or not isinstance(data, str):
            raise ValueError('an error body needs "error" and "data" strings')
        return ts, server, f"{error}: {data}"
    status = body.get("status")
    if not isinstance(status, str):
        raise ValueError('the body has neither "status" nor "error"')
    return ts, server, status


def format_record_line(ts: str, server: str, what: str, server_width: int) -> str:
    """Return the printed line of one update (control characters escaped)."""
    return f"{clean(ts)}  {clean(server).ljust(server_width)}  {clean(what)}"


class _Tail:
    """Reads a log from one open file, remembering line numbers and a partial last line."""

    def __init__(self, path: str, out: IO[str]) -> None:
        self.path = path
        self.out = out
        self.fh = self._open()
        self.lineno = 0
        self.partial = b""
        self.width = _MIN_SERVER_WIDTH

    def _open(self) -> IO[bytes]:
        try:
            return open(self.path, "rb")
        except FileNotFoundError:
            raise CliError(
                f"{self.path}: no such file (the file transport creates it on the first update)"
            ) from None
        except IsADirectoryError:
            raise CliError(f"{self.path}: is a directory, not a file-transport log") from None
        except OSError as exc:
            raise CliError(f"{self.path}: cannot open: {exc.strerror}") from None

    def close(self) -> None:
        self.fh.close()

    def lines(self) -> list[tuple[int, bytes]]:
        """Return the complete lines appended since the last call (a partial one waits)."""
        found: list[tuple[int, bytes]] = []
        while True:
            raw = self.fh.readline()
            if not raw:
                return found
            if not raw.endswith(b"\n"):
                self.partial += raw
                continue
            self.lineno += 1
            found.append((self.lineno, self.partial + raw))
            self.partial = b""

    def rest(self) -> list[tuple[int, bytes]]:
        """Return an unterminated last line, if any (when not following)."""
        if not self.partial:
            return []
        self.lineno += 1
        last, self.partial = self.partial, b""
        return [(self.lineno, last)]

    def parse(self, lineno: int, raw: bytes) -> Optional[tuple[str, str, str]]:
        """Parse one line; report it on stderr and return None if malformed."""
        if not raw.strip():
            return None
        try:
            return parse_record(raw.decode("utf-8"))
        except UnicodeDecodeError:
            why = "not UTF-8 text"
        except ValueError as exc:
            why = str(exc)
        print_warning(f"{self.path}:{lineno}: skipped a malformed line: {clean(why)}")
        return None

    def show(self, record: tuple[str, str, str]) -> None:
        ts, server, what = record
        self.width = max(self.width, len(clean(server)))
        print(format_record_line(ts, server, what, self.width), file=self.out)

    def reopen_if_replaced(self) -> None:
        """Start over when the file was truncated, or replaced by a new one (rotation)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return  # removed for now: keep the old one open, and keep looking
        if st.st_ino != os.fstat(self.fh.fileno()).st_ino:
            print_warning(f"{self.path} was replaced; following the new file")
            try:
                new = open(self.path, "rb")  # noqa: SIM115 - kept open while following
            except OSError:
                return
            self.fh.close()
            self.fh = new
        elif st.st_size < self.fh.tell():
            print_warning(f"{self.path} was truncated; reading it from the start")
            self.fh.seek(0)
        else:
            return
        self.lineno = 0
        self.partial = b""


def _follow(tail: _Tail, stop: StopFlag, interval: float) -> None:
    while not stop.is_set():
        for lineno, raw in tail.lines():
            record = tail.parse(lineno, raw)
            if record is not None:
                tail.show(record)
        tail.out.flush()
        if stop.wait(interval):
            return
        tail.reopen_if_replaced()


def run(args: argparse.Namespace) -> int:
    """Print the updates of ``args.file``; with ``--follow``, keep printing new ones."""
    tail = _Tail(args.file, sys.stdout)
    # With --follow, SIGINT/SIGTERM are the normal way to stop: handle them from
    # the start, so that a stop asked for early still ends cleanly.
    signals = stop_on_signals() if args.follow else contextlib.nullcontext(StopFlag())
    try:
        with signals as stop:
            first = tail.lines() if args.follow else tail.lines() + tail.rest()
            records = (tail.parse(lineno, raw) for lineno, raw in first)
            kept = collections.deque((r for r in records if r is not None), maxlen=args.lines)
            for record in kept:
                tail.show(record)
            sys.stdout.flush()
            if args.follow:
                _follow(tail, stop, args.interval)
    finally:
        tail.close()
    return EXIT_OK
