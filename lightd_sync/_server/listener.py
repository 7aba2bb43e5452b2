"""
The parts of waitress lightd_sync extends: :class:`Listener`, :class:`Workers`, :class:`Channel`.

Only public classes and methods of waitress are subclassed (its
``asyncore``-style ``readable``/``accept``/``maintenance`` hooks, the
dispatcher's ``start_new_thread``, the channel's ``error_task_class``).
"""

from __future__ import annotations

import errno
import json
import threading
import time
from typing import Any, Callable

from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher

from .._logutil import Throttle, get_logger, safe_log
from .._threads import start_quietly

__all__ = ["REQUEST_TIMEOUT", "Channel", "ErrorAnswer", "Listener", "Workers"]

#: Seconds a request may take to arrive in full (request line, headers, body).
REQUEST_TIMEOUT = 10.0
#: accept() back-off when out of descriptors: first and longest pause, in seconds.
_BACKOFF_FIRST, _BACKOFF_MAX = 0.05, 1.0
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

log = get_logger("http")


class Workers(ThreadedTaskDispatcher):
    """waitress's worker pool, with its threads named ``lightd-sync-http-PORT-N``, daemon."""

    def __init__(self) -> None:
        super().__init__()
        self.prefix = "lightd-sync-http"
        # Guards started and running: set_thread_count (under waitress's own
        # lock) starts threads, each counts itself out as it ends, stop() joins.
        self.started_lock = threading.Lock()
        self.started: list[threading.Thread] = []
        self.running = 0

    def start_new_thread(self, target: Callable[[int], object], thread_no: int) -> None:
        thread = threading.Thread(
            target=target, name=f"{self.prefix}-{thread_no}", args=(thread_no,), daemon=True
        )
        with self.started_lock:
            self.started.append(thread)
            self.running += 1
        try:
            start_quietly(thread)
        except BaseException:
            with self.started_lock:
                self.running -= 1
            raise

    def alive(self) -> list[threading.Thread]:
        """The worker threads still running."""
        with self.started_lock:
            return [t for t in self.started if t.is_alive()]

    def handler_thread(self, thread_no: int) -> None:
        try:
            super().handler_thread(thread_no)
        finally:
            with self.started_lock:
                self.running -= 1
            self.on_exit()

    def on_exit(self) -> None:
        """Called by each worker thread as it ends (the server sets it)."""


class ErrorAnswer(ErrorTask):
    """Answer a request waitress refused (400, 413, 431, ...) in JSON, never echoing it.

    waitress's own answer quotes what was wrong (a malformed method, say),
    which could be a piece of a token.
    """

    def execute(self) -> None:
        task: Any = self  # waitress's stubs type these narrower than its code
        error = task.request.error
        phrase = f"{error.code} {error.reason}"
        body = json.dumps({"success": False, "error": phrase}).encode("ascii")
        self.status = phrase
        task.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class Channel(HTTPChannel):
    error_task_class = ErrorAnswer


class Listener(TcpWSGIServer):
    """waitress's TCP server with a receive deadline and a back-off on resource errors."""

    channel_class = Channel

    # What waitress sets, typed here (its stubs are narrower than its code).
    effective_host: str
    effective_port: str
    active_channels: Any  # {fd: channel}
    trigger: Any

    # Set before waitress's __init__ runs: it calls readable() and maintenance().
    lightd_request_timeout = REQUEST_TIMEOUT
    lightd_paused_until = 0.0
    lightd_backoff = 0.0
    lightd_stopping = False

    def __init__(self, *args: Any, request_timeout: float, **kwargs: Any) -> None:
        self.lightd_request_timeout = request_timeout
        # Only the event loop thread touches these: partial requests by
        # connection (first seen when), and the accept-failure throttle.
        self.lightd_receiving: dict[int, tuple[object, float]] = {}
        self.lightd_failures = Throttle()
        super().__init__(*args, **kwargs)

    def readable(self) -> bool:
        ready = bool(super().readable())  # runs the timeouts' maintenance when due
        if self.lightd_stopping:
            return False
        return ready and time.monotonic() >= self.lightd_paused_until

    def accept(self) -> Any:
        try:
            pair = super().accept()
        except OSError as exc:
            if exc.errno not in _OUT_OF_RESOURCES:
                raise
            self.lightd_backoff = min(_BACKOFF_MAX, max(_BACKOFF_FIRST, self.lightd_backoff * 2))
            self.lightd_paused_until = time.monotonic() + self.lightd_backoff
            missed = self.lightd_failures.hit()
            if missed is not None:
                safe_log(
                    log,
                    30,  # WARNING
                    "cannot accept connections on port %s (%s); %d failure(s), "
                    "pausing up to %.2f s between attempts until descriptors free up",
                    self.effective_port,
                    exc.strerror,
                    missed,
                    _BACKOFF_MAX,
                )
            return None
        if pair is not None and self.lightd_backoff:
            self.lightd_backoff = 0.0
            safe_log(log, 30, "accepting connections on port %s again", self.effective_port)
        return pair

    def maintenance(self, now: Any) -> None:  # seconds since the epoch, a float
        super().maintenance(now)  # closes connections silent for longer than channel_timeout
        limit = self.lightd_request_timeout
        receiving: dict[int, tuple[object, float]] = {}
        for fd, channel in list(self.active_channels.items()):
            partial = channel.request
            if partial is None or channel.requests:
                continue  # between requests (idle timeout), or being answered
            seen = self.lightd_receiving.get(fd)
            since = seen[1] if seen is not None and seen[0] is partial else now
            if now - since > limit:
                channel.will_close = True  # too long receiving this one request
            receiving[fd] = (partial, since)
        self.lightd_receiving = receiving
