"""``lightd-sync send --config config.json SERVER STATUS [--data MESSAGE]``: one update, now."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from .._secrets import scrub
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    CliError,
    add_command,
    clean,
    marks_for,
    positive_float,
    print_error,
)

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Add the ``send`` subcommand."""
    parser = add_command(
        subparsers,
        "send",
        summary="send one status update now and say whether the remote accepted it",
        description="Send one update synchronously through the transport config.json "
        "selects (HTTP: POST {url}/update) and print the outcome. Exit 0 only if the "
        "remote accepted it, 1 if it refused it or could not be reached, 2 for bad "
        "arguments or configuration.",
        epilog="examples:\n"
        "  lightd-sync send --config config.json my-server-001 installing\n"
        "  lightd-sync send --config config.json my-server-001 failed "
        "--data 'image not found'",
    )
    parser.add_argument(
        "--config",
        required=True,
        metavar="FILE",
        help="Lightd's config.json (LIGHTD_REMOTE_* variables override it)",
    )
    parser.add_argument("server", metavar="SERVER", help="server id, e.g. my-server-001")
    parser.add_argument("status", metavar="STATUS", help="installing, ready or failed")
    parser.add_argument(
        "--data",
        metavar="MESSAGE",
        help="with STATUS failed: send the error form with this message as data",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        metavar="SECONDS",
        help="give up after this long (default: remote.timeout, 10 s)",
    )


def _target(config: Any) -> str:
    if config.effective_transport == "http":
        return f"POST {config.url}/update"
    if config.effective_transport == "file":
        return f"append to {config.path}"
    return f"send through the {config.effective_transport!r} transport"


def run(args: argparse.Namespace) -> int:
    """Send one update; 0 if the remote accepted it, 1 if not."""
    import attrs

    from .._config import load_config
    from .._exceptions import DeliveryError
    from .._model import Status, Update, check_server_id, parse_status
    from .._transports.protocol import encode_body
    from .._transports.registry import make_transport

    try:
        status = parse_status(args.status)
        server = check_server_id(args.server)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.data is not None and status is not Status.FAILED:
        raise CliError(f"--data is only sent with status 'failed', not with {status.value!r}")
    config = load_config(args.config)
    if args.timeout is not None:
        config = attrs.evolve(config, timeout=args.timeout)
    if not config.enabled:
        raise CliError(
            f"remote.enabled is false in {args.config}: Lightd would send nothing; "
            "set it to true (or LIGHTD_REMOTE_ENABLED=true for this one command)"
        )
    update = Update(server, status, args.data)
    marks = marks_for(sys.stdout)
    print(f"{_target(config)} {encode_body(update).decode('ascii')}", flush=True)
    transport = make_transport(config)
    started = time.monotonic()
    try:
        transport.send(update)
    except DeliveryError as exc:
        print_error(f"not accepted: {clean(scrub(exc.message, config.token))}")
        return EXIT_FAILED
    finally:
        transport.close()
    elapsed = (time.monotonic() - started) * 1000
    outcome = "written" if config.effective_transport == "file" else "accepted"
    print(f"{marks.ok} {outcome} in {elapsed:.0f} ms")
    return EXIT_OK
