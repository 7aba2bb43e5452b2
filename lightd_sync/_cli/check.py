"""
``lightd-sync check --config config.json``: walk the protocol's troubleshooting list.

Each step prints one line, ✓ / ! / ✗, as soon as it is done, and on ✗ the
fix; ``--json`` prints one document at the end instead. The steps themselves
are in :mod:`lightd_sync._cli._doctor`.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any, Optional, TextIO

from .._threads import start_quietly
from ._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    add_command,
    clean,
    marks_for,
    positive_float,
)
from ._doctor import FAIL, OK, STEPS, WARN, Doctor, Step

__all__ = ["STEPS", "Step", "add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Add the ``check`` subcommand."""
    parser = add_command(
        subparsers,
        "check",
        summary="find out why updates do not arrive: config, proxy, DNS, TCP, TLS, /health, token",
        description="Walk the troubleshooting list against the real remote, one line per "
        "step as soon as it is done (✓ passed, ! warning, ✗ failed, with the fix): the "
        "config parses and validates; remote.enabled is true; the transport talks HTTP; "
        "the URL is well formed (and HTTPS); the proxy, if any (remote.proxy, else "
        "HTTPS_PROXY/HTTP_PROXY minus NO_PROXY); the host connected to resolves; TCP "
        "connects; GET /health through the transport itself: TLS handshakes and the "
        "certificate verifies (unless remote.verify is false: then a warning), /health "
        "answers 200 with the expected body, the token is accepted; the round-trip "
        "latency. Stops at the first failure that makes later steps meaningless. "
        "The token is never printed.",
        epilog="exit codes: 0 every step passed (warnings allowed), 1 a step failed,\n"
        "            2 the config cannot be used, 130 interrupted (the steps done are shown)\n"
        "\n"
        "example:\n  lightd-sync check --config /etc/lightd/config.json --timeout 3",
    )
    parser.add_argument(
        "--config",
        required=True,
        metavar="FILE",
        help="Lightd's config.json (LIGHTD_REMOTE_* variables override it)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        metavar="SECONDS",
        help="limit of every network step (default: remote.timeout, 10 s)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object at the end: {"ok": ..., "exit": ..., "interrupted": ..., '
        '"config": ..., "steps": [{"name", "ok", "level", "detail", "fix"}, ...]}; '
        "level is ok, warn or fail",
    )


class _Printer:
    """Prints each step as it is recorded (text mode), flushed at once."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        marks = marks_for(stream)
        self.marks = marks
        self.mark = {OK: marks.ok, WARN: marks.warn, FAIL: marks.fail}
        self.width = max(len(name) for name in STEPS)
        self.mark_width = max(len(m) for m in self.mark.values())
        self.muted = False  # set by the main thread once Ctrl-C came; read by the walk's

    def header(self, config_path: str) -> None:
        self.line(f"checking {clean(config_path)}")

    def mute(self) -> None:
        """Print no more steps (the walk was interrupted; the summary says where)."""
        self.muted = True

    def step(self, step: Step) -> None:
        if self.muted:
            return
        mark = self.mark[step.level].ljust(self.mark_width)
        self.line(f"{mark} {step.name.ljust(self.width)}  {step.detail}")
        if step.fix and step.level != OK:
            pad = " " * (self.mark_width + 1 + self.width + 2)
            self.line(f"{pad}{'fix' if step.level == FAIL else 'hint'}: {step.fix}")

    def line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


def _summary(steps: list[Step], current: str, printer: _Printer, interrupted: bool) -> None:
    marks = printer.marks
    failed = [step for step in steps if not step.ok]
    warnings = sum(step.level == WARN for step in steps)
    also = f" ({warnings} warning{'s' if warnings != 1 else ''})" if warnings else ""
    if interrupted:
        done = len(steps)
        printer.line(
            f"{marks.warn} interrupted during {current}: {done} "
            f"check{'s' if done != 1 else ''} done{also}"
        )
    elif failed:
        printer.line(f"{marks.fail} failed at {failed[0].name}{also}: fix it and run check again")
    else:
        printer.line(f"{marks.ok} all {len(steps)} checks passed{also}")


def _walk(doctor: Doctor, printer: Optional[_Printer]) -> Optional[tuple[list[Step], str]]:
    """
    Run the steps in a ``lightd-sync-check`` thread; after Ctrl-C, what was done and where.

    The main thread only waits, so Ctrl-C lands there and never inside a
    request (where it would leave half-made objects behind). The steps done
    by then are kept, the printer is muted, and the transport is closed, which
    cuts the request in flight (the step it then fails is not shown).
    """
    failure: list[BaseException] = []

    def walk() -> None:
        try:
            doctor.run()
        except BaseException as exc:  # handed to the main thread, raised there
            failure.append(exc)

    worker = threading.Thread(target=walk, name="lightd-sync-check", daemon=True)
    try:
        start_quietly(worker)
        while worker.is_alive():
            worker.join(0.25)
    except KeyboardInterrupt:
        if printer is not None:
            printer.mute()
        return list(doctor.steps), doctor.current
    finally:
        doctor.close()
    if failure:
        raise failure[0]
    return None


def run(args: argparse.Namespace) -> int:
    """
    Walk the steps, printing each as it is done.

    Returns:
        0 if no step failed (warnings allowed), 1 if one did, 2 if the config
        (or the transport it names) cannot be used, 130 on Ctrl-C.
    """
    printer = None if args.json else _Printer(sys.stdout)
    doctor = Doctor(args.config, args.timeout, None if printer is None else printer.step)
    if printer is not None:
        printer.header(args.config)
    stopped = _walk(doctor, printer)
    interrupted = stopped is not None
    steps, current = stopped if stopped is not None else (doctor.steps, doctor.current)
    ok = all(step.ok for step in steps)
    if interrupted:
        code = EXIT_INTERRUPTED
    elif doctor.unusable_config:
        code = EXIT_USAGE
    else:
        code = EXIT_OK if ok else EXIT_FAILED
    if printer is None:
        document = {
            "ok": ok and not interrupted,
            "exit": code,
            "interrupted": interrupted,
            "config": doctor.config_path,
            "steps": [step.to_dict() for step in steps],
        }
        print(json.dumps(document, indent=2, ensure_ascii=False), flush=True)
    else:
        _summary(steps, current, printer, interrupted)
    return code
