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
    EXIT_FAILED,
    EXIT_OK,
    CliError,
    StopFlag,
    add_command,
    clean,
    positive_float,
    print_warning,
    stop_on_signals,
)

__all__ = ["add_parser", "format_record_line", "parse_record", "run"]

_MIN_SERVER_WIDTH = 16
_BILLING_SHOWN = (
    ("memory_gb", "memory {} GB"),
    ("cpu_vcpus", "{} vCPU"),
    ("storage_gb", "storage {} GB"),
    ("egress_gb", "egress {} GB"),
    ("duration_hours", "{} h"),
    ("estimated_cost", "cost {}"),
)


def _lines_count(text: str) -> int:
    """argparse type: a whole number >= 0 (``-n 0``: none of the lines already there)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def add_parser(subparsers: Any) -> None:
    """Add the ``tail`` subcommand."""
    parser = add_command(
        subparsers,
        "tail",
        summary="show a file-transport log, one line per update",
        description="Read the log the file transport writes "
        '({"ts": ..., "body": {...}} per line) and print one line per update: '
        "time, server, status (for an error update its error value and data, e.g. "
        "`failed: image not found`; for a billing event `billing: ...`). Malformed lines "
        "are reported on stderr with their line number and skipped; a file none of whose "
        "lines is such a record (a receiver's audit log, say) is refused in one line, "
        "exit 1.",
        epilog="examples:\n  lightd-sync tail updates.jsonl\n  lightd-sync tail -f updates.jsonl\n"
        "  lightd-sync tail -f -n 0 updates.jsonl     # only the updates still to come",
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
        type=_lines_count,
        metavar="N",
        help="start with the last N updates already in the file (default: all; "
        "0 with -f: only new ones)",
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

    ``what`` is the status; for an error update its error value and ``data``
    (``failed: <data>``, or the value alone without data); for a billing event
    ``billing:`` and its numbers.

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
    if body.get("event") == "billing":
        return ts, server, _billing_what(body)
    if "error" in body:
        error, data = body.get("error"), body.get("data")
        if not isinstance(error, str) or not (data is None or isinstance(data, str)):
            raise ValueError('an error body needs an "error" string ("data", if any, a string)')
        return ts, server, error if data is None else f"{error}: {data}"
    status = body.get("status")
    if not isinstance(status, str):
        raise ValueError('the body has neither "status" nor "error"')
    return ts, server, status


def _billing_what(body: dict[str, Any]) -> str:
    parts = []
    for key, shown in _BILLING_SHOWN:
        value = body.get(key)
        if type(value) not in (int, float):
            raise ValueError(f'a billing body needs a number "{key}"')
        parts.append(shown.format(f"{value:g}"))
    return "billing: " + ", ".join(parts)


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
        record, why = self.try_parse(raw)
        if why is not None:
            print_warning(f"{self.path}:{lineno}: skipped a malformed line: {clean(why)}")
        return record

    @staticmethod
    def try_parse(raw: bytes) -> tuple[Optional[tuple[str, str, str]], Optional[str]]:
        """Parse one line: ``(record, None)``, ``(None, why)``, or ``(None, None)`` if blank."""
        if not raw.strip():
            return None, None
        try:
            return parse_record(raw.decode("utf-8")), None
        except UnicodeDecodeError:
            return None, "not UTF-8 text"
        except ValueError as exc:
            return None, str(exc)

    def first(self, lines: list[tuple[int, bytes]]) -> list[tuple[str, str, str]]:
        """
        Parse what the file held at the start; refuse it if none of its lines is a record.

        Raises:
            CliError: Lines there are, but not one is a file-transport record (exit 1).
        """
        parsed = [(lineno, raw, *self.try_parse(raw)) for lineno, raw in lines]
        malformed = [(lineno, raw, why) for lineno, raw, _, why in parsed if why is not None]
        records = [record for _, _, record, _ in parsed if record is not None]
        if malformed and not records:
            lineno, raw, why = malformed[0]
            raise CliError(
                f"{self.path} is not a file-transport log: tail reads the lines the file "
                'transport writes to remote.path ({"ts": ..., "body": {...}}), and none of '
                f"its {len(malformed)} lines is one{_looks_like(raw)} "
                f"(line {lineno}: {clean(why)[:80]})",
                EXIT_FAILED,
            )
        for lineno, _, why in malformed:
            print_warning(f"{self.path}:{lineno}: skipped a malformed line: {clean(why)}")
        return records

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


def _looks_like(raw: bytes) -> str:
    """Say what a line looks like, when it is something lightd-sync writes elsewhere."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return ""
    if isinstance(doc, dict) and {"method", "path", "outcome"} <= set(doc):
        return "; it looks like a receiver's audit log"
    if isinstance(doc, dict) and "event" in doc and "server" in doc:
        return "; it looks like bare update bodies (agent input?)"
    return ""


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
            kept = collections.deque(tail.first(first), maxlen=args.lines)
            for record in kept:
                tail.show(record)
            sys.stdout.flush()
            if args.follow:
                _follow(tail, stop, args.interval)
    finally:
        tail.close()
    return EXIT_OK
