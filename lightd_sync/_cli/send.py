"""
``lightd-sync send [--config config.json] SERVER STATUS``: one update (or billing event), now.

Also ``SERVER --error VALUE [--data MESSAGE]`` (the error form) and
``SERVER --billing JSON`` (a billing event). Without ``--config`` the
``LIGHTD_REMOTE_*`` variables are the whole config.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from .._config import RemoteConfig
    from .._model import Event

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Add the ``send`` subcommand."""
    parser = add_command(
        subparsers,
        "send",
        summary="send one status update now and say whether the remote accepted it",
        description="Send one update synchronously through the transport config.json "
        "selects (HTTP: POST {url}/update, with a fresh X-Lightd-Event-Id) and print the "
        "outcome. STATUS failed with --data MESSAGE, or --error VALUE (any error value: "
        "failed, timeout, a message; --data optional), sends the error form; --billing "
        "JSON sends a billing event instead of a status. Without --config, the "
        "LIGHTD_REMOTE_* variables give the whole config (LIGHTD_REMOTE_URL and "
        "LIGHTD_REMOTE_TOKEN at least). Exit 0 only if the remote accepted it, 1 if it "
        "refused it or could not be reached, 2 for bad arguments or configuration.",
        epilog="examples:\n"
        "  lightd-sync send --config config.json my-server-001 installing\n"
        "  lightd-sync send --config config.json my-server-001 failed "
        "--data 'image not found'\n"
        "  lightd-sync send --config config.json my-server-001 --error timeout\n"
        "  lightd-sync send --config config.json my-server-001 --billing "
        '\'{"memory_gb": 0.5, "cpu_vcpus": 0.25, "storage_gb": 2, "egress_gb": 0.01, '
        '"duration_hours": 1, "estimated_cost": 0.0123}\'\n'
        "  LIGHTD_REMOTE_URL=https://remote.example/api LIGHTD_REMOTE_TOKEN=... "
        "lightd-sync send my-server-001 ready",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="Lightd's config.json (LIGHTD_REMOTE_* variables override it); without it, "
        "the variables are the whole config",
    )
    parser.add_argument("server", metavar="SERVER", help="server id, e.g. my-server-001")
    parser.add_argument(
        "status",
        metavar="STATUS",
        nargs="?",
        help="installing, ready or failed (not needed with --error or --billing)",
    )
    parser.add_argument(
        "--data",
        metavar="MESSAGE",
        help="with STATUS failed or --error: send the error form with this message as data",
    )
    parser.add_argument(
        "--error",
        metavar="VALUE",
        help="send the error form with this error value (failed, timeout or a message)",
    )
    parser.add_argument(
        "--billing",
        metavar="JSON",
        help="send a billing event: a JSON object with memory_gb, cpu_vcpus, storage_gb, "
        "egress_gb, duration_hours, estimated_cost and optionally timestamp (default: now)",
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


def _event(args: argparse.Namespace) -> Event:
    """The update or billing event the arguments describe, with a fresh event id."""
    from .._ids import new_event_id
    from .._model import BillingEvent, Status, Update, check_server_id, parse_status
    from .agent import parse_event

    try:
        server = check_server_id(args.server)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    event_id = new_event_id()
    if args.billing is not None:
        extra = [f"--{name}" for name in ("data", "error") if getattr(args, name) is not None]
        if args.status is not None or extra:
            what = "STATUS" if args.status is not None else extra[0]
            raise CliError(f"--billing sends a billing event: {what} goes with a status update")
        numbers = _billing_numbers(args.billing, server)
        numbers.setdefault("timestamp", int(time.time()))
        return BillingEvent(server, **numbers, event_id=event_id)
    if args.status is None and args.error is None:
        raise CliError("give a STATUS (installing, ready, failed), --error VALUE or --billing JSON")
    try:
        status = parse_status(args.status if args.status is not None else "failed")
    except ValueError as exc:
        raise CliError(str(exc)) from None
    for name in ("data", "error"):
        if getattr(args, name) is not None and status is not Status.FAILED:
            raise CliError(f"--{name} is only sent with status 'failed', not with {status.value!r}")
    if args.error is not None:
        try:
            parse_event(json.dumps({"server": server, "error": args.error}))
        except ValueError as exc:
            raise CliError(f"--error: {exc}") from None
    return Update(server, status, args.data, error=args.error, event_id=event_id)


def _billing_numbers(text: str, server: str) -> dict[str, Any]:
    from .agent import parse_event

    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise CliError(f"--billing: not JSON ({clean(str(exc)[:80])})") from None
    if not isinstance(doc, dict):
        raise CliError(f"--billing: expected a JSON object, got {type(doc).__name__}")
    if doc.get("event", "billing") != "billing" or doc.get("server", server) != server:
        raise CliError('--billing: "event" and "server", if given, must be "billing" and SERVER')
    try:
        line = parse_event(json.dumps({**doc, "event": "billing", "server": server}))
    except ValueError as exc:
        raise CliError(f"--billing: {exc}") from None
    assert line.billing is not None
    return dict(line.billing)


def _load(args: argparse.Namespace) -> RemoteConfig:
    """The config file with its variables, or the variables alone (then sync is on)."""
    from .._config import ENV_OVERRIDES, load_config
    from .._exceptions import ConfigError

    if args.config is not None:
        return load_config(args.config)
    given = sorted({var for var in ENV_OVERRIDES if os.environ.get(var) is not None})
    if not given:
        raise CliError(
            "no config: give Lightd's config.json with --config, or set LIGHTD_REMOTE_URL "
            "and LIGHTD_REMOTE_TOKEN (or LIGHTD_REMOTE_TOKEN_FILE)"
        )
    try:
        return load_config({"remote": {"enabled": True}})
    except ConfigError as exc:
        raise CliError(
            f"{exc} (without --config the LIGHTD_REMOTE_* variables are the whole config: "
            f"set {_variable_for(str(exc))})"
        ) from None


def _variable_for(message: str) -> str:
    if message.startswith("remote.url"):
        return "LIGHTD_REMOTE_URL"
    if message.startswith("remote.token"):
        return "LIGHTD_REMOTE_TOKEN or LIGHTD_REMOTE_TOKEN_FILE"
    return "the variable named right"


def _not_found(config: RemoteConfig) -> str:
    """A 404: name the full URL, and the base URL when remote.url ends with an endpoint."""
    from ._doctor import base_candidates

    url = (config.url or "").rstrip("/")
    said = f"POST {url}/update answered HTTP 404: no such endpoint at that address"
    if url.endswith(("/update", "/health")):
        return (
            f"{said}; remote.url is the base URL, without /update or /health: "
            f"try {base_candidates(url)[0]}"
        )
    return f"{said}; remote.url is the base URL: /update and /health are appended to it"


def run(args: argparse.Namespace) -> int:
    """Send one update; 0 if the remote accepted it, 1 if not."""
    import attrs

    from .._exceptions import DeliveryError
    from .._transports.protocol import encode_body
    from .._transports.registry import make_transport

    event = _event(args)
    config = _load(args)
    if args.timeout is not None:
        config = attrs.evolve(config, timeout=args.timeout)
    if not config.enabled:
        where = (
            f"remote.enabled is false in {args.config}"
            if args.config is not None
            else "LIGHTD_REMOTE_ENABLED turns sync off"
        )
        raise CliError(
            f"{where}: Lightd would send nothing; "
            "set it to true (or LIGHTD_REMOTE_ENABLED=true for this one command)"
        )
    marks = marks_for(sys.stdout)
    print(f"{_target(config)} {encode_body(event).decode('ascii')}", flush=True)
    transport = make_transport(config)
    started = time.monotonic()
    try:
        transport.send(event)
    except DeliveryError as exc:
        message = _not_found(config) if getattr(exc, "status", None) == 404 else exc.message
        print_error(f"not accepted: {clean(scrub(message, config.token))}")
        return EXIT_FAILED
    finally:
        transport.close()
    elapsed = (time.monotonic() - started) * 1000
    outcome = "written" if config.effective_transport == "file" else "accepted"
    print(f"{marks.ok} {outcome} in {elapsed:.0f} ms")
    return EXIT_OK
