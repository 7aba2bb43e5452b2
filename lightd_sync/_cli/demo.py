"""
``lightd-sync demo``: the spec's three flows, end to end, with nothing to configure.

Starts the reference receiver on 127.0.0.1 (a free port, a fresh random
token), points a :class:`~lightd_sync.SyncEngine` at it, plays installation,
error and reinstall over a few servers, and prints what was sent next to
what the remote stored. ``--transport file`` plays the same through the file
transport and prints the lines written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import IO, TYPE_CHECKING, Any, Callable, Optional

import attrs

from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    CliError,
    add_command,
    clean,
    columns,
    marks_for,
)

if TYPE_CHECKING:
    from .._engine import SyncEngine
    from .._model import HealthState, SyncStats

__all__ = ["FLOWS", "Flow", "add_parser", "run"]

#: Seconds the flows may take in all, so that the demo ends well within 5 s whatever happens.
_BUDGET = 3.0
_CLOSE_TIMEOUT = 0.5
_HEALTH_INTERVAL = 1.0
_IMAGE_ERROR = "Docker container creation failed: image not found"


@attrs.frozen
class Flow:
    """One of the spec's typical flows: steps played one after the other."""

    name: str
    summary: str
    #: Each step: (server, lifecycle event value, data); one step's events go out together.
    steps: tuple[tuple[tuple[str, str, Optional[str]], ...], ...]


def _together(servers: tuple[str, ...], event: str) -> tuple[tuple[str, str, Optional[str]], ...]:
    return tuple((server, event, None) for server in servers)


_WEB, _CACHE, _DB = "demo-web-001", "demo-cache-002", "demo-db-003"

#: The demo's script: two installations side by side, one that fails, and two reinstalls.
FLOWS = (
    Flow(
        "installation",
        "installing → ready",
        (
            _together((_WEB, _CACHE), "Started"),
            _together((_WEB, _CACHE), "CreatingContainer"),
            _together((_WEB, _CACHE), "Ready"),
        ),
    ),
    Flow(
        "error",
        "installing → error update with data",
        (
            _together((_DB,), "Started"),
            _together((_DB,), "CreatingContainer"),
            ((_DB, "Error", _IMAGE_ERROR),),
        ),
    ),
    Flow(
        "reinstall",
        "installing → ready",
        (
            _together((_DB, _WEB), "ReinstallStarted"),
            _together((_DB, _WEB), "CreatingContainer"),
            _together((_DB, _WEB), "Ready"),
        ),
    ),
)


_SERVER_WIDTH = max(len(server) for flow in FLOWS for step in flow.steps for server, _, _ in step)
_EVENT_WIDTH = max(len(event) for flow in FLOWS for step in flow.steps for _, event, _ in step)


_STATUS_WIDTH = len("installing")
_DATA_OFFSET = 2 + _SERVER_WIDTH + 2 + _EVENT_WIDTH + 2


def _row(server: str, event: str, sent: str, seen: str) -> str:
    """One line of a flow's table; fixed widths, so that it can be printed as it happens."""
    return (
        f"  {server.ljust(_SERVER_WIDTH)}  {event.ljust(_EVENT_WIDTH)}  "
        f"{sent.ljust(_STATUS_WIDTH)}  {seen}"
    )


def add_parser(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    parser = add_command(
        subparsers,
        "demo",
        summary="see remote sync work in a few seconds, with nothing to configure",
        description="Start the reference receiver on 127.0.0.1 (a free port, a fresh random "
        "token), point a SyncEngine at it and play the protocol's three flows "
        "(installation, error, reinstall) over a few servers, printing what was sent "
        "and what the remote stored, then the health state and the engine's stats. "
        "With --transport file, the same run goes through the file transport and the "
        "lines written are shown.",
        epilog="examples:\n  lightd-sync demo\n"
        "  lightd-sync demo --transport file --path /tmp/updates.jsonl",
    )
    parser.add_argument(
        "--transport",
        choices=("http", "file"),
        default="http",
        help="http: to the reference receiver (default); file: append to --path",
    )
    parser.add_argument(
        "--path",
        metavar="FILE",
        help="with --transport file: the file to append the updates to",
    )


#: What the remote (or the file) holds for a server: status, data, a note ("3 in history").
Observed = Optional[tuple[str, Optional[str], str]]


class _Run:
    """One demo run: the engine, what to show after each step, and whether it all matched."""

    def __init__(
        self, engine: SyncEngine, out: IO[str], observe: Callable[[str], Observed]
    ) -> None:
        self.engine = engine
        self.out = out
        self.observe = observe
        self.marks = marks_for(out)
        self.mismatches = 0
        self.deadline = time.monotonic() + _BUDGET

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def _flush(self) -> bool:
        return self.engine.flush(max(0.05, self.deadline - time.monotonic()))

    def _stored(self, server: str, status: str, data: Optional[str]) -> str:
        seen = self.observe(server)
        if seen is None:
            self.mismatches += 1
            return f"{self.marks.fail} nothing"
        got_status, got_data, note = seen
        mark = self.marks.ok
        if (got_status, got_data) != (status, data):
            self.mismatches += 1
            mark = self.marks.fail
        return f"{mark} {clean(got_status)} ({note})"

    def play(self, flow: Flow, heading: str) -> None:
        from .._model import Lifecycle

        rule = self.marks.rule * max(4, 60 - len(flow.name) - len(flow.summary))
        summary = flow.summary.replace("→", self.marks.arrow)
        self.say(f"{self.marks.rule * 2} {flow.name}: {summary} {rule}")
        self.say(_row("server", "event", "sent", heading))
        late = False
        for step in flow.steps:  # a step's updates go out together, then we look at the remote
            for server, event, data in step:
                self.engine.lifecycle(server, Lifecycle(event), data)
            late = not self._flush() or late
            for server, event, data in step:
                status = Lifecycle(event).status.value
                self.say(_row(server, event, status, self._stored(server, status, data)))
                if data is not None:
                    self.say(" " * _DATA_OFFSET + f"data: {clean(json.dumps(data))}")
        if late:
            self.say(f"  {self.marks.warn} some updates were still pending when the demo moved on")
        self.say()

    def finish(self) -> tuple[HealthState, SyncStats]:
        health = self.engine.health
        if health.healthy is None:  # the first check has not finished yet
            health = self.engine.check_health()
        if health.healthy:
            took = (health.latency or 0.0) * 1000
            state = f"{self.marks.ok} healthy (the last check took {took:.1f} ms)"
        else:
            state = f"{self.marks.fail} unhealthy: {clean(health.error)}"
        stats = self.engine.stats()
        counters = "  ".join(f"{name} {value}" for name, value in stats.to_dict().items())
        for line in columns([["health", state], ["stats", counters]], indent="  "):
            self.say(line)
        return health, stats

    def ok(self, health: HealthState, stats: SyncStats) -> bool:
        """True if the remote is healthy and every update arrived as sent."""
        return bool(health.healthy) and stats.delivered == stats.submitted and not self.mismatches


def _engine_line(config: Any) -> str:
    return f"{config.workers} workers, health check every {config.health_interval:g} s"


def _header(out: IO[str], title: str, rows: list[list[str]]) -> None:
    print(f"lightd-sync demo: {title}\n", file=out)
    for line in columns(rows, indent="  "):
        print(line, file=out)
    print(file=out, flush=True)


def _play_all(
    engine: SyncEngine, out: IO[str], observe: Callable[[str], Observed], heading: str
) -> _Run:
    demo = _Run(engine, out, observe)
    try:
        for flow in FLOWS:
            demo.play(flow, heading)
    except BaseException:
        engine.close(timeout=_CLOSE_TIMEOUT)
        raise
    return demo


def _run_http(out: IO[str]) -> int:
    import secrets

    from .._config import RemoteConfig, redact_token
    from .._engine import SyncEngine
    from .._server.http import serve
    from ..receiver import create_app

    token = "lightd_" + secrets.token_hex(16)
    with create_app(token) as app, serve(app, "127.0.0.1", 0) as server:
        config = RemoteConfig(
            enabled=True, url=server.url, token=token, health_interval=_HEALTH_INTERVAL
        )
        _header(
            out,
            "a SyncEngine sends to the reference receiver over HTTP",
            [
                ["receiver", f"{server.url} (SQLite in memory)"],
                ["token", f"{redact_token(token)} (fresh and random; never shown in full)"],
                ["engine", _engine_line(config)],
            ],
        )

        def stored(server_id: str) -> Observed:
            history = app.store.history(server_id)
            if not history:
                return None
            last = history[-1]
            return last["status"], last.get("data"), f"{len(history)} in history"

        engine = SyncEngine(config).start()
        demo = _play_all(engine, out, stored, "remote stored")
        try:
            rows = [["server", "latest", "updates"]]
            rows += [
                [clean(name), clean(state["status"]), str(len(app.store.history(name)))]
                for name, state in app.store.latest().items()
            ]
            demo.say(f"what the remote holds now (GET /servers): {app.store.count()} updates")
            for line in columns(rows, indent="  "):
                demo.say(line)
            demo.say()
            health, stats = demo.finish()
        finally:
            engine.close(timeout=_CLOSE_TIMEOUT)
    return _verdict(
        out,
        demo.ok(health, stats),
        "`lightd-sync receiver` runs this remote for real; "
        "`lightd-sync check --config config.json` tests yours",
    )


def _run_file(out: IO[str], path: str) -> int:
    from .._config import RemoteConfig
    from .._engine import SyncEngine

    if os.path.isdir(path):
        raise CliError(f"--path {path}: is a directory; give a file to append to")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CliError(f"--path {path}: the folder {folder} does not exist")
    config = RemoteConfig(
        enabled=True, transport="file", path=path, health_interval=_HEALTH_INTERVAL
    )
    start = os.path.getsize(path) if os.path.exists(path) else 0
    _header(
        out,
        "a SyncEngine writes through the file transport",
        [["file", f"{path} (appended to)"], ["engine", _engine_line(config)]],
    )
    read = [start]  # where the next unread line starts
    lines: list[str] = []
    latest: dict[str, tuple[str, Optional[str], str]] = {}

    def written(server_id: str) -> Observed:
        with open(path, "rb") as fh:
            fh.seek(read[0])
            for raw in fh:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                lines.append(line)
                try:
                    body = json.loads(line)["body"]
                    status = "failed" if "error" in body else body["status"]
                    latest[body["server"]] = (status, body.get("data"), f"line {len(lines)}")
                except (ValueError, KeyError, TypeError):
                    continue
            read[0] = fh.tell()
        return latest.get(server_id)

    engine = SyncEngine(config).start()
    demo = _play_all(engine, out, written, "written")
    try:
        demo.say(f"the {len(lines)} lines written to {path}:")
        for line in lines:
            demo.say(f"  {clean(line)}")
        demo.say()
        health, stats = demo.finish()
    finally:
        engine.close(timeout=_CLOSE_TIMEOUT)
    return _verdict(out, demo.ok(health, stats), f"read it back with `lightd-sync tail {path}`")


def _verdict(out: IO[str], ok: bool, next_step: str) -> int:
    marks = marks_for(out)
    if ok:
        print(f"\n{marks.ok} every update arrived as sent.\n  Next: {next_step}.", file=out)
        return EXIT_OK
    print(f"\n{marks.fail} some updates did not arrive as sent (see above)", file=out)
    return EXIT_FAILED


def run(args: argparse.Namespace) -> int:
    """Play the demo; 0 if every update arrived as sent."""
    started = time.monotonic()
    if args.transport == "file":
        if not args.path:
            raise CliError("--transport file needs --path FILE, the file to append the updates to")
        code = _run_file(sys.stdout, args.path)
    else:
        if args.path:
            raise CliError("--path is only used with --transport file")
        code = _run_http(sys.stdout)
    print(f"(done in {time.monotonic() - started:.2f} s)", flush=True)
    return code
