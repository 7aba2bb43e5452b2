"""What every subcommand shares: exit codes, one-line errors, marks, columns and stop signals."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import textwrap
import threading
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import IO, Any, Optional

__all__ = [
    "CliError",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "HelpFormatter",
    "Marks",
    "PROG",
    "StopFlag",
    "add_command",
    "clean",
    "columns",
    "debug_parent",
    "marks_for",
    "positive_float",
    "positive_int",
    "print_error",
    "print_warning",
    "stop_on_signals",
]

PROG = "lightd-sync"

#: Everything went well.
EXIT_OK = 0
#: The thing checked, sent or served failed.
EXIT_FAILED = 1
#: The command line or the configuration is wrong.
EXIT_USAGE = 2
#: Interrupted by Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


class HelpFormatter(argparse.HelpFormatter):
    """
    Wrap prose paragraphs to the terminal, but keep indented lines (examples) as written.

    argparse either rewraps everything (examples become one line) or nothing
    (long descriptions run off the screen); this does both right.
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = []
        for line in text.splitlines():
            if not line.strip() or line.startswith("  "):
                lines.append(indent + line if line.strip() else "")
            else:
                lines.append(
                    textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent)
                )
        return "\n".join(lines)


class CliError(Exception):
    """
    An error that the command reports as one line on stderr, then exits with *code*.

    Args:
        message: What went wrong and, where it helps, what to do about it.
        code: The exit code; 2 (usage or configuration) unless told otherwise.
    """

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def print_error(message: str, stream: Optional[IO[str]] = None) -> None:
    """Print ``lightd-sync: error: message`` on stderr."""
    print(f"{PROG}: error: {message}", file=stream or sys.stderr, flush=True)


def print_warning(message: str, stream: Optional[IO[str]] = None) -> None:
    """Print ``lightd-sync: warning: message`` on stderr."""
    print(f"{PROG}: warning: {message}", file=stream or sys.stderr, flush=True)


def debug_parent() -> argparse.ArgumentParser:
    """
    A parent parser with ``--debug``, so that it is accepted before or after the subcommand.

    The default is suppressed, so that a subcommand's parser does not reset
    a ``--debug`` given before it.
    """
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks and the library's DEBUG log on stderr",
    )
    return parent


def add_command(
    subparsers: Any,
    name: str,
    *,
    summary: str,
    description: str,
    epilog: Optional[str] = None,
) -> argparse.ArgumentParser:
    """Add the parser of subcommand *name*, with ``--help`` and ``--debug``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        parents=[debug_parent()],
        formatter_class=HelpFormatter,
    )
    return parser


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number > 0, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a whole number > 0, got {text!r}")
    return value


def clean(text: object) -> str:
    """
    Return *text* safe to print on one terminal line.

    Control and other non-printable characters (newlines, escape sequences
    that could repaint the terminal) are shown as Python escapes.
    """
    value = str(text)
    if value.isprintable():
        return value
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in value)


class Marks:
    """The marks of a result line: ✓ ✗ ! (or ASCII words where the terminal cannot show them)."""

    def __init__(self, ok: str, fail: str, warn: str, arrow: str, rule: str) -> None:
        self.ok = ok
        self.fail = fail
        self.warn = warn
        self.arrow = arrow
        self.rule = rule


def marks_for(stream: IO[str]) -> Marks:
    """Return the marks that *stream*'s encoding can show."""
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        "✓✗→─…".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return Marks("ok", "FAIL", "!", "->", "-")
    return Marks("✓", "✗", "!", "→", "─")


def columns(rows: Sequence[Sequence[str]], *, indent: str = "", gap: int = 2) -> list[str]:
    """Lay *rows* out in left-aligned columns; the last column is never padded."""
    if not rows:
        return []
    ncols = max(len(row) for row in rows)
    widths = [0] * ncols
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        cells.append(row[-1] if row else "")
        lines.append((indent + (" " * gap).join(cells)).rstrip())
    return lines


class StopFlag:
    """Set by SIGINT or SIGTERM while :func:`stop_on_signals` is active."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: Optional[str] = None

    def set(self, signal_name: Optional[str] = None) -> None:
        """Ask the command to stop."""
        if self.signal_name is None:
            self.signal_name = signal_name
        self._event.set()

    def is_set(self) -> bool:
        """True once a stop was asked for."""
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for a stop; True if one was asked for."""
        return self._event.wait(timeout)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """
    Turn SIGINT and SIGTERM into a :class:`StopFlag` for the duration of the block.

    Long-running subcommands (``receiver``, ``tail --follow``) poll the flag
    and stop cleanly instead of dying mid-write. Outside the main thread
    (where signals cannot be handled) the flag is only set by hand.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Optional[FrameType]) -> None:
        flag.set(signal.Signals(signum).name)

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
