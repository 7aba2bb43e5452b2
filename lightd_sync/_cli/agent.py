"""
``lightd-sync agent --config config.json``: the sidecar for Lightd nodes whose daemon is not Python.

It runs a :class:`~lightd_sync.SyncEngine` from ``config.json``, serves the
local API (:mod:`lightd_sync.api`) and reads lifecycle events as JSON lines
on stdin. A bad line is reported on stderr with its line number and skipped.
End of input, SIGTERM or SIGINT flush (bounded), close and exit 0; SIGHUP
reloads the config file.

Signals only write a byte to a pipe; the main loop, which also reads stdin,
acts on them. So a SIGHUP reload never runs inside a signal handler that
interrupted the engine halfway through queueing an update.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import selectors
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, NamedTuple, Optional, Union

from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    PROG,
    CliError,
    add_command,
    clean,
    positive_float,
    print_warning,
)

if TYPE_CHECKING:
    from .._engine import SyncEngine
    from .._server.http import WsgiServer

__all__ = [
    "DEFAULT_LISTEN",
    "MAX_LINE",
    "AgentLine",
    "add_parser",
    "parse_event",
    "parse_listen",
    "run",
]

#: Where the routes are served unless ``--listen`` says otherwise.
DEFAULT_LISTEN = "127.0.0.1:8071"
#: The longest stdin line read, in bytes; longer ones are reported and skipped.
MAX_LINE = 65536
_MIN_TOKEN = 20
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


class AgentLine(NamedTuple):
    """
    One stdin line, parsed: what to send for which server.

    *kind* is ``event`` (a lifecycle event; *value* its name), ``status``
    (*value* the status), ``error`` (the error form; *value* the error value)
    or ``billing`` (*value* ``"billing"``, *billing* the numbers and maybe
    ``timestamp``). *error* is an error value given with ``event: Error`` or
    ``status: failed``.
    """

    server: str
    kind: str
    value: str
    data: Optional[str] = None
    error: Optional[str] = None
    billing: Optional[dict[str, Any]] = None


def add_parser(subparsers: Any) -> None:
    """Add the ``agent`` subcommand."""
    parser = add_command(
        subparsers,
        "agent",
        summary="run as a sidecar: lifecycle events as JSON lines on stdin, local API over HTTP",
        description="Run a sync engine from config.json for a daemon that is not written in "
        "Python. Read one lifecycle event per line on stdin: "
        '{"server": ID, "event": "Started"}, {"server": ID, "event": "Error", "data": MESSAGE}, '
        '{"server": ID, "status": "ready"} (with "status": "failed", "data" sends the '
        'error form), {"server": ID, "error": "timeout"} (any error value, "data" optional) '
        'or a billing event {"event": "billing", "server": ID, "memory_gb": N, "cpu_vcpus": N, '
        '"storage_gb": N, "egress_gb": N, "duration_hours": N, "estimated_cost": N} '
        '("timestamp" optional: now). A malformed line is reported on stderr with its line '
        "number and skipped. Serve the local API (GET /remote/config, POST /remote/reload, "
        "POST /remote/config/reload, "
        "GET /remote/health, GET /remote/stats, GET /metrics) behind "
        "Authorization: Bearer <API token>: authorization.token of config.json "
        "(or $LIGHTD_API_TOKEN), or the variable --api-token-env names; without a token the "
        "agent does not start. End of input, SIGTERM or Ctrl-C flush what is queued (at "
        "most --flush-timeout seconds), print a summary and exit 0; SIGHUP reloads "
        "config.json. The URL of the routes is printed on stderr at start-up.",
        epilog="example:\n"
        "  lightd-sync agent --config /etc/lightd/config.json --listen 127.0.0.1:8071\n"
        '  echo \'{"server": "my-server-001", "event": "Started"}\' | '
        "lightd-sync agent --config config.json",
    )
    parser.add_argument(
        "--config",
        required=True,
        metavar="FILE",
        help="Lightd's config.json (LIGHTD_REMOTE_* variables override it)",
    )
    parser.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help="where to serve the local API; port 0 picks a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--api-token-env",
        metavar="NAME",
        help="read the API token from this environment variable instead of "
        "authorization.token in config.json",
    )
    parser.add_argument(
        "--flush-timeout",
        type=positive_float,
        default=5.0,
        metavar="SECONDS",
        help="on exit, wait at most this long for queued updates (default: %(default)g)",
    )


def parse_listen(text: str) -> tuple[str, int]:
    """
    Split ``HOST:PORT`` (``[::1]:8071`` for IPv6) into a host and a port.

    Raises:
        CliError: Not of that form, no host, or a port outside 0-65535.
    """
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host:
        raise CliError(
            f"--listen {clean(text)}: expected HOST:PORT, e.g. {DEFAULT_LISTEN} "
            "(0.0.0.0:PORT for every interface)"
        )
    if not (port.isascii() and port.isdigit() and int(port) <= 65535):
        raise CliError(f"--listen {clean(text)}: the port must be a number from 0 to 65535")
    return host, int(port)


def _show(value: object) -> str:
    text = repr(value)
    return clean(text if len(text) <= 40 else text[:37] + "...")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise ValueError(f"duplicate key {_show(key)}")
        doc[key] = value
    return doc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_UPDATE_KEYS = ("server", "event", "status", "error", "data")


def _load(line: str) -> dict[str, Any]:
    try:
        doc = json.loads(line, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    except (RecursionError, ValueError) as exc:  # nesting too deep; an int of 5000 digits
        raise ValueError(f"not JSON ({clean(str(exc)[:80])})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"expected a JSON object, got {type(doc).__name__}")
    return doc


def _server(doc: dict[str, Any]) -> str:
    from .._model import server_id_problem

    problem = server_id_problem(doc.get("server"))
    if problem is not None:
        raise ValueError("no server id" if "server" not in doc else problem)
    return str(doc["server"])


def _parse_billing(doc: dict[str, Any]) -> AgentLine:
    from .._model import BILLING_FIELDS, billing_number_problem, timestamp_problem

    unknown = [key for key in doc if key not in ("event", "server", *BILLING_FIELDS, "timestamp")]
    if unknown:
        raise ValueError(
            f"unknown key {_show(unknown[0])} in a billing event; expected server, "
            f"{', '.join(BILLING_FIELDS)} and optionally timestamp"
        )
    server = _server(doc)
    numbers: dict[str, Any] = {}
    for name in BILLING_FIELDS:
        if name not in doc:
            raise ValueError(f"{name}: missing (a billing event needs {', '.join(BILLING_FIELDS)})")
        problem = billing_number_problem(name, doc[name])
        if problem is not None:
            raise ValueError(problem)
        numbers[name] = doc[name]
    if doc.get("timestamp") is not None:
        problem = timestamp_problem(doc["timestamp"])
        if problem is not None:
            raise ValueError(problem)
        numbers["timestamp"] = doc["timestamp"]
    return AgentLine(server, "billing", "billing", billing=numbers)


def parse_event(line: str) -> AgentLine:
    """
    Parse one stdin line into an :class:`AgentLine`.

    The forms: ``{"server", "event": LIFECYCLE}`` (``Error`` may have
    ``data`` and ``error``), ``{"server", "status": STATUS}`` (``failed`` may
    have ``data`` and ``error``), ``{"server", "error": VALUE}`` with optional
    ``data`` (the protocol's error form; ``"event": "update"`` may come with it,
    as with ``status``), and ``{"event": "billing", "server", memory_gb,
    cpu_vcpus, storage_gb, egress_gb, duration_hours, estimated_cost}`` with
    an optional ``timestamp``. ``null`` counts as absent for ``data`` and ``error``.

    Raises:
        ValueError: The line is not one of the accepted forms; the message says why.
    """
    from .._model import Lifecycle, Status, error_value_problem, parse_lifecycle, parse_status

    doc = _load(line)
    if doc.get("event") == "billing":
        return _parse_billing(doc)
    unknown = [key for key in doc if key not in _UPDATE_KEYS]
    if unknown:
        raise ValueError(
            f"unknown key {_show(unknown[0])}; expected server, event or status or error, data"
        )
    server = _server(doc)
    if doc.get("event") == "update":  # the body as the protocol sends it
        del doc["event"]
        if "status" not in doc and doc.get("error") is None:
            raise ValueError('"event": "update" needs "status" or "error"')
    data = doc.get("data")
    if data is not None and not isinstance(data, str):
        raise ValueError(f"data: expected a string, got {type(data).__name__}")
    error = doc.get("error")
    if error is not None:
        problem = error_value_problem(error)
        if problem is not None:
            raise ValueError(clean(problem))
    kinds = [key for key in ("event", "status") if key in doc]
    if len(kinds) > 1 or (not kinds and error is None):
        raise ValueError('expected exactly one of "event", "status" and "error"')
    if not kinds:
        assert error is not None
        return AgentLine(server, "error", error, data)
    kind = kinds[0]
    value = doc[kind]
    if not isinstance(value, str):
        raise ValueError(f"{kind}: expected a string, got {type(value).__name__}")
    try:
        if kind == "event":
            event = parse_lifecycle(value)
            if event is not Lifecycle.ERROR:
                extra = "data" if data is not None else "error" if error is not None else None
                if extra:
                    raise ValueError(f'"{extra}" goes only with event Error, not with {value}')
        elif parse_status(value) is not Status.FAILED:
            extra = "data" if data is not None else "error" if error is not None else None
            if extra:
                raise ValueError(f'"{extra}" goes only with status failed, not with {value}')
    except ValueError as exc:
        raise ValueError(clean(str(exc)[:200])) from None
    return AgentLine(server, kind, value, data, error)


def _submit(engine: SyncEngine, line: AgentLine) -> None:
    if line.kind == "billing":
        assert line.billing is not None
        engine.billing(line.server, **line.billing)
    elif line.kind == "error" or line.error is not None:
        engine.error(line.server, line.data, error=line.error or line.value)
    elif line.kind == "event":
        engine.lifecycle(line.server, line.value, line.data)
    elif line.data is not None:
        engine.error(line.server, line.data)
    else:
        engine.update(line.server, line.value)


class _Wakeup:
    """
    Turns SIGTERM, SIGINT and SIGHUP into bytes on a pipe the main loop selects on.

    The kernel gives a process's signal to any of its threads that does not
    block it, and Python runs the handler in the main thread only once that
    thread wakes up: a main thread asleep in ``select`` would not. So the
    interpreter's own wakeup file descriptor (:func:`signal.set_wakeup_fd`) is
    the pipe: whichever thread takes the signal writes its number there at
    once, and the select wakes up. The handlers themselves do nothing.
    """

    SIGNALS = tuple(
        getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name)
    )

    def __init__(self) -> None:
        self.reader, self._writer = os.pipe()
        os.set_blocking(self.reader, False)
        os.set_blocking(self._writer, False)  # set_wakeup_fd needs it
        self._previous: dict[int, Any] = {}
        self._previous_fd: Optional[int] = None

    @staticmethod
    def _handler(signum: int, frame: Optional[FrameType]) -> None:
        """Nothing: the interpreter wrote *signum* to the wakeup pipe already."""

    def __enter__(self) -> _Wakeup:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
            # warn_on_full_buffer: a full pipe means a signal is waiting already.
            self._previous_fd = signal.set_wakeup_fd(self._writer, warn_on_full_buffer=False)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._previous_fd is not None:
            signal.set_wakeup_fd(self._previous_fd)
        for sig, old in self._previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        os.close(self.reader)
        os.close(self._writer)


def _selector() -> selectors.BaseSelector:
    # poll() takes regular files (stdin redirected from a file), which epoll refuses;
    # macOS's poll() does not take terminals, so select() there.
    if hasattr(selectors, "PollSelector") and sys.platform != "darwin":
        return selectors.PollSelector()
    return selectors.SelectSelector()


_Item = tuple[str, Union[bytes, int, None]]


def _from_fd(fd: int, wake: _Wakeup) -> Iterator[_Item]:
    """Yield ``("line", bytes)``, ``("long", None)``, ``("signal", signum)``, ``("eof", None)``."""
    buffer = bytearray()
    skipping = False  # inside a line that was too long, until its newline
    with _selector() as selector:
        selector.register(wake.reader, selectors.EVENT_READ, "wake")
        selector.register(fd, selectors.EVENT_READ, "input")
        while True:
            ready = {key.data for key, _ in selector.select()}
            if "wake" in ready:  # first: a SIGTERM stops reading at once
                try:
                    signums = os.read(wake.reader, 64)
                except BlockingIOError:
                    signums = b""
                for signum in signums:
                    yield "signal", signum
                continue
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:  # a parent left stdin non-blocking: wait for more
                continue
            except OSError as exc:  # EIO: the terminal went away; EBADF: closed under us
                print_warning(f"cannot read stdin any more ({exc.strerror}); stopping")
                chunk = b""
            if not chunk:
                if buffer and not skipping:
                    yield "line", bytes(buffer)
                yield "eof", None
                return
            buffer += chunk
            while True:
                end = buffer.find(b"\n")
                if end < 0:
                    break
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                if skipping:
                    skipping = False
                elif len(line) > MAX_LINE:
                    yield "long", None
                else:
                    yield "line", line
            if len(buffer) > MAX_LINE and not skipping:
                yield "long", None
                skipping = True
            if skipping:
                buffer.clear()


def _from_stream(stream: IO[str]) -> Iterator[_Item]:
    """Stdin without a file descriptor (an embedding test's ``StringIO``): no signals."""
    for line in stream:
        yield "line", line.rstrip("\n").encode("utf-8", "surrogateescape")
    yield "eof", None


def _stdin_items(wake: _Wakeup) -> Iterator[_Item]:
    stdin = sys.stdin
    if stdin is None:
        return iter([("eof", None)])
    try:
        fd = stdin.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return _from_stream(stdin)
    return _from_fd(fd, wake)


class _Agent:
    """The main loop: stdin lines to the engine, signals to a stop or a reload."""

    def __init__(self, engine: SyncEngine) -> None:
        self.engine = engine
        self.lines = 0
        self.skipped = 0
        self.stopped_by = "end of input"

    def skip(self, why: str) -> None:
        self.skipped += 1
        print_warning(f"stdin:{self.lines}: skipped a malformed line: {why}")

    def line(self, raw: bytes) -> None:
        text = raw[:-1] if raw.endswith(b"\r") else raw
        if not text.strip():
            return  # blank lines separate nothing and mean nothing
        try:
            event = parse_event(text.decode("utf-8"))
        except UnicodeDecodeError as exc:
            self.skip(f"not UTF-8 (at byte {exc.start})")
            return
        except ValueError as exc:
            self.skip(str(exc))
            return
        try:
            _submit(self.engine, event)
        except (TypeError, ValueError) as exc:  # parse_event should have caught it
            self.skip(clean(str(exc)[:200]))

    def reload(self) -> None:
        from .._exceptions import LightdSyncError

        try:
            result = self.engine.reload()
        except LightdSyncError as exc:
            print_warning(f"SIGHUP: reload failed, the config is unchanged: {clean(exc)}")
        else:
            changed = ", ".join(result.changed) or "nothing"
            print(
                f"{PROG} agent: SIGHUP: reloaded; changed: {changed}", file=sys.stderr, flush=True
            )

    def loop(self, items: Iterator[_Item]) -> None:
        for kind, value in items:
            if kind == "line":
                self.lines += 1
                assert isinstance(value, bytes)
                self.line(value)
            elif kind == "long":
                self.lines += 1
                self.skip(f"longer than {MAX_LINE} bytes")
            elif kind == "signal":
                assert isinstance(value, int)
                if value == getattr(signal, "SIGHUP", None):
                    self.reload()
                elif value in _Wakeup.SIGNALS:
                    self.stopped_by = f"by {signal.Signals(value).name}"
                    return
                # else: another signal a Python handler took (the pipe hears them all)
            else:
                return


def _api_token(args: argparse.Namespace) -> str:
    from ..api import _token_problem, api_token_from_config

    if args.api_token_env:
        name = args.api_token_env
        token: Optional[str] = os.environ.get(name, "").strip()
        if not token:
            raise CliError(f"--api-token-env {clean(name)}: ${clean(name)} is empty or unset")
        problem = _token_problem(token)
        if problem is not None:
            raise CliError(f"the API token in ${clean(name)} {problem}")
        source = f"${name}"
    else:
        token = api_token_from_config(args.config)
        if token is None:
            raise CliError(
                f"no API token: set authorization.token in {clean(args.config)} (Lightd's own "
                "API token), or LIGHTD_API_TOKEN, or name a variable with --api-token-env; "
                "the agent never serves its routes without authentication"
            )
        source = "authorization.token"
    if len(token) < _MIN_TOKEN:
        print_warning(
            f"the API token ({clean(source)}) has {len(token)} characters; "
            f"at least {_MIN_TOKEN} are hard to guess"
        )
    return token


def _shut_down(engine: SyncEngine, server: WsgiServer, agent: _Agent, flush_timeout: float) -> None:
    deadline = time.monotonic() + flush_timeout
    if not engine.flush(flush_timeout):
        print_warning(
            f"{engine.stats().pending} updates still pending after --flush-timeout "
            f"{flush_timeout:g} s; giving up on them"
        )
    # At least a moment to cut off requests in flight and close the connections.
    engine.close(max(0.5, deadline - time.monotonic()))
    server.stop(2.0)
    s = engine.stats()
    print(
        f"{PROG} agent: stopped {agent.stopped_by}: {agent.lines} lines read, "
        f"{agent.skipped} skipped; updates: {s.submitted} submitted, {s.delivered} delivered, "
        f"{s.failed} failed, {s.dropped} dropped, {s.superseded} superseded",
        file=sys.stderr,
        flush=True,
    )


def run(args: argparse.Namespace) -> int:
    """Run the sidecar until end of input, SIGTERM or SIGINT; 0 after a clean stop."""
    from .._engine import SyncEngine
    from .._server.http import serve
    from ..api import create_app

    host, port = parse_listen(args.listen)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # see receiver.run
    token = _api_token(args)
    engine = SyncEngine.from_file(args.config)
    try:
        app = create_app(engine, token=token)
        try:
            server = serve(app, host, port)
        except OSError as exc:
            raise CliError(
                f"cannot listen on {clean(args.listen)}: {exc.strerror or exc}", EXIT_FAILED
            ) from None
    except BaseException:
        engine.close(0.5)
        raise
    agent = _Agent(engine)
    with _Wakeup() as wake:
        try:
            server.start()
            engine.start()
            print(
                f"{PROG} agent: listening on {server.url}; reading lifecycle events from stdin",
                file=sys.stderr,
                flush=True,
            )
            if host not in _LOOPBACK:
                print_warning(
                    f"serving plain HTTP on {clean(host)}: the API token crosses the network "
                    "readable; put a TLS-terminating proxy in front of it"
                )
            agent.loop(_stdin_items(wake))
        finally:
            _shut_down(engine, server, agent, args.flush_timeout)
    return EXIT_OK
