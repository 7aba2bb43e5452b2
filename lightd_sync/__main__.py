"""
The ``lightd-sync`` command (also ``python -m lightd_sync``).

Exit codes: 0 ok, 1 the thing checked, sent or served failed, 2 usage or
configuration error (``check`` included: 2 when the config cannot be used),
130 interrupted by Ctrl-C. Errors are one line on stderr; ``--debug`` adds
the traceback and the library's DEBUG log (one line per delivery attempt,
from the logger ``lightd_sync.engine``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import os
import sys
import traceback
from types import ModuleType
from typing import Any, Optional

from ._cli import COMMANDS
from ._cli._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    PROG,
    CliError,
    HelpFormatter,
    clean,
    debug_parent,
    print_error,
)
from ._exceptions import ConfigError
from ._version import version

__all__ = ["build_parser", "main"]

_EPILOG = """\
exit codes: 0 ok, 1 the thing checked, sent or served failed,
            2 usage or configuration error, 130 interrupted
--debug:    tracebacks, and the library's DEBUG log on stderr
            (each delivery attempt, logger lightd_sync.engine)

Start with `lightd-sync demo`; `lightd-sync COMMAND --help` tells more."""


def _modules() -> dict[str, ModuleType]:
    return {name: importlib.import_module(f"{__package__}._cli.{name}") for name in COMMANDS}


def build_parser(modules: Optional[dict[str, ModuleType]] = None) -> argparse.ArgumentParser:
    """Return the parser of the ``lightd-sync`` command with every subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Push Lightd container install status to a remote management server: "
        "try it, run a reference remote, and find out why nothing arrives.",
        epilog=_EPILOG,
        parents=[debug_parent()],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    subparsers.required = True
    for module in (modules or _modules()).values():
        module.add_parser(subparsers)
    return parser


class _Version(argparse.Action):
    """``--version``, with the version looked up only when asked for (it costs start-up time)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: Optional[str] = None,
    ) -> None:
        print(f"{PROG} {version()}")
        parser.exit()


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.level = record.levelname.lower()
        return super().format(record)


def _setup_logging(debug: bool) -> tuple[logging.Handler, int]:
    logger = logging.getLogger("lightd_sync")
    handler = logging.StreamHandler(sys.stderr)
    fmt = (
        "%(asctime)s %(name)s %(level)s: %(message)s"
        if debug
        else f"{PROG}: %(level)s: %(message)s"
    )
    handler.setFormatter(_Formatter(fmt))
    old_level = logger.level
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    logger.addHandler(handler)
    return handler, old_level


def _forgiving_output() -> None:
    """Show characters the terminal cannot encode as escapes instead of failing on them."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            with contextlib.suppress(ValueError, io.UnsupportedOperation):  # detached
                stream.reconfigure(errors="backslashreplace")


def _silence_stdout() -> None:
    """After a broken pipe (``lightd-sync tail x | head``), let the exit flush go nowhere."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):  # pragma: no cover
        pass


def main(argv: Optional[list[str]] = None) -> int:
    """
    Run the ``lightd-sync`` command with *argv* (``sys.argv[1:]`` when None).

    Returns:
        The exit code: 0 ok, 1 failed, 2 usage or configuration error, 130 interrupted.
    """
    _forgiving_output()
    modules = _modules()
    parser = build_parser(modules)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
    debug = bool(getattr(args, "debug", False))
    handler, old_level = _setup_logging(debug)
    try:
        return int(modules[args.command].run(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_FAILED
    except (CliError, ConfigError) as exc:
        if debug:
            traceback.print_exc()
        message = exc.message if isinstance(exc, CliError) else str(exc)
        print_error(clean(message))
        return exc.code if isinstance(exc, CliError) else EXIT_USAGE
    except Exception as exc:
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (run with --debug to see the traceback)"
        print_error(f"unexpected {type(exc).__name__}: {clean(exc)}{hint}")
        return EXIT_FAILED
    finally:
        logger = logging.getLogger("lightd_sync")
        logger.removeHandler(handler)
        logger.setLevel(old_level)


if __name__ == "__main__":
    sys.exit(main())
