"""
Serve a WSGI application with waitress, in threads named ``lightd-sync-…``: :func:`serve`.

waitress reads every connection in one event loop (``poll``, so not bounded
by ``select``'s 1024 descriptors) and runs the application in a small pool of
worker threads, so an idle or trickling client costs a descriptor and a
buffer, never a thread. On top of waitress this module adds what a service
facing hostile clients needs and waitress does not do on its own (the waitress
subclasses are in :mod:`lightd_sync._server.listener`):

- a bound on the *total* time to receive one request (waitress's
  ``channel_timeout`` only bounds silence, so a client sending a byte now and
  then could hold a connection for ever);
- a back-off when ``accept()`` fails for lack of descriptors or memory,
  instead of retrying at once in a loop that spins a core;
- a bounded stop: requests in progress may finish, then every connection is
  closed and every thread joined, within the timeout given.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Callable, Optional

from waitress import wasyncore
from waitress.adjustments import Adjustments

from .._forksafe import after_fork_in_child
from .._threads import start_quietly
from .listener import REQUEST_TIMEOUT, Listener, Workers

__all__ = [
    "CONNECTION_LIMIT",
    "IDLE_TIMEOUT",
    "MAX_BODY_BYTES",
    "MAX_HEADER_BYTES",
    "REQUEST_TIMEOUT",
    "THREADS",
    "StartResponse",
    "WSGIApplication",
    "WSGIEnvironment",
    "WsgiServer",
    "serve",
]

#: The environ of one request (PEP 3333).
WSGIEnvironment = dict[str, Any]
#: The ``start_response`` callable handed to an application.
StartResponse = Callable[..., Any]
#: A WSGI application.
WSGIApplication = Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]

#: Seconds a connection may stay silent (between requests, or within one).
IDLE_TIMEOUT = 10.0
#: Connections open at once; beyond, new ones wait in the listen backlog.
CONNECTION_LIMIT = 1000
#: Largest request line plus headers, in bytes; beyond, 431.
MAX_HEADER_BYTES = 16384
#: Largest request body waitress reads, in bytes; beyond, 413 (an app may set a lower bound).
MAX_BODY_BYTES = 1 << 20
#: Worker threads running the application.
THREADS = 8

#: How often (seconds) the event loop wakes up when nothing happens.
_CHECK_INTERVAL = 0.5


def _bind_address(host: str, port: int) -> tuple[Any, ...]:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _name, address = infos[0]
    return (family, kind, proto, address)


class WsgiServer:
    """
    A WSGI application served by waitress; build it with :func:`serve`.

    It listens from construction on. Serve with :meth:`start` (a background
    thread), end with :meth:`stop`; as a context manager it starts on entry
    and stops on exit.

    Attributes:
        host: The address it listens on (``"127.0.0.1"``, ``"::1"``, ...).
        port: The port it listens on (the one picked when asked for port 0).
    """

    def __init__(
        self,
        app: WSGIApplication,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        request_timeout: float = REQUEST_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        connection_limit: int = CONNECTION_LIMIT,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_body_bytes: Optional[int] = None,
        threads: int = THREADS,
    ) -> None:
        if max_body_bytes is None:
            max_body_bytes = int(getattr(app, "max_body", MAX_BODY_BYTES))
        adj = Adjustments(
            host=host or "0.0.0.0",  # noqa: S104 - what an empty host means
            port=str(port),
            threads=threads,
            connection_limit=connection_limit + 2,  # waitress counts its listener and trigger too
            channel_timeout=max(1, int(idle_timeout + 0.999)),
            cleanup_interval=1,  # the least waitress takes; the timeouts are checked this often
            max_request_header_size=max_header_bytes + 1,
            max_request_body_size=max_body_bytes + 1,  # waitress refuses from this size on
            inbuf_overflow=min(65536, max_body_bytes),
            asyncore_use_poll=True,
            ident="lightd-sync",
            backlog=1024,
        )
        self._map: dict[int, Any] = {}
        self._workers = Workers()
        self._listener: Listener = Listener(
            app,
            self._map,
            dispatcher=self._workers,
            adj=adj,
            sockinfo=_bind_address(host, port),
            request_timeout=request_timeout,
        )
        self.host: str = str(self._listener.effective_host)
        self.port: int = int(self._listener.effective_port)
        self._workers.prefix = f"lightd-sync-http-{self.port}"
        self._workers.on_exit = self._release  # type: ignore[method-assign]
        self._workers.set_thread_count(threads)
        self._stopping = threading.Event()
        self._loop_done = threading.Event()
        # Guards _state, _thread and _released: start and stop may come from
        # different threads, and the last worker to end releases the trigger.
        self._lock = threading.Lock()
        self._released = False
        self._state = "new"  # -> "serving" -> "stopped"; or "new" -> "stopped"
        self._thread: Optional[threading.Thread] = None
        # Written by stop() before it sets _stopping, read by the loop after.
        self._force_at = float("inf")
        # Owned by the loop thread (or by stop() when the loop never ran).
        self._listening = True
        after_fork_in_child(self._after_fork)

    @property
    def url(self) -> str:
        """The base URL to reach the server from this machine, e.g. ``http://127.0.0.1:8080``."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def start(self) -> WsgiServer:
        """
        Serve in a daemon thread named ``lightd-sync-wsgi-PORT``.

        Returns at once: the socket listens from construction on, so clients
        may connect as soon as this returns.

        Raises:
            RuntimeError: The server is already serving, or stopped.
        """
        thread = threading.Thread(
            target=self._serve, name=f"lightd-sync-wsgi-{self.port}", daemon=True
        )
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"the server at {self.url} is already {self._state}")
            self._state, self._thread = "serving", thread
        start_quietly(thread)
        return self

    def _serve(self) -> None:
        try:
            while True:
                wasyncore.loop(timeout=_CHECK_INTERVAL, map=self._map, use_poll=True, count=1)
                if self._stopping.is_set() and self._wind_down():
                    return
        finally:
            self._loop_done.set()

    def _wind_down(self) -> bool:
        """In the loop thread: close what is idle; True once only the trigger is left."""
        listener = self._listener
        self._close_listening()
        force = time.monotonic() >= self._force_at
        left = False
        for channel in list(self._map.values()):
            if channel is listener.trigger or channel is listener:
                continue
            busy = channel.requests or channel.total_outbufs_len
            if busy and not force:
                left = True
            else:
                channel.close()
        return not left

    def stop(self, timeout: float = 5.0) -> bool:
        """
        Stop serving, close the socket and wait for the threads, at most about *timeout* seconds.

        Requests in progress get until then to finish; connections still open
        after that are cut. Calling it again does nothing more.

        Returns:
            True if every thread of the server has ended.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            state, self._state = self._state, "stopped"
            serving = self._thread
        if state == "stopped":
            return self._all_ended()
        self._listener.lightd_stopping = True
        self._force_at = deadline - min(0.5, timeout / 2)
        self._stopping.set()
        if state == "serving":
            with contextlib.suppress(OSError):
                self._listener.trigger.pull_trigger()  # wake the loop now
            self._loop_done.wait(max(0.0, deadline - time.monotonic()))
            if serving is not None:
                serving.join(max(0.0, deadline - time.monotonic()))
        else:  # never served: nothing runs the loop, close here
            self._close_listening()
        left: Any = max(0.0, deadline - time.monotonic())  # a float; waitress's stubs say int
        self._workers.shutdown(cancel_pending=True, timeout=left)
        for thread in self._workers.alive():
            thread.join(max(0.0, deadline - time.monotonic()))
        self._release()
        return self._all_ended()

    def _close_listening(self) -> None:
        if self._listening:
            self._listening = False
            wasyncore.dispatcher.close(self._listener)  # the listening socket, not the trigger

    def _release(self) -> None:
        """Close the trigger's pipe once no thread can pull it any more (stopped, all ended)."""
        with self._lock:
            if self._released or self._state != "stopped":
                return
            if self._thread is not None and not self._loop_done.is_set():
                return
            with self._workers.started_lock:
                if self._workers.running:
                    return  # the last of them calls this again as it ends
            self._released = True
        self._listener.trigger.close()

    def _after_fork(self) -> None:
        # New locks (a parent's thread may have held them). The threads
        # serving in the parent do not exist here: nothing serves in the child.
        self._lock = threading.Lock()
        self._workers.started_lock = threading.Lock()

    def _all_ended(self) -> bool:
        serving = self._thread
        if serving is not None and serving.is_alive():
            return False
        return not self._workers.alive()

    def __enter__(self) -> WsgiServer:
        return self.start()

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<WsgiServer {self.url} {self._state}>"


def serve(
    app: WSGIApplication,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    request_timeout: float = REQUEST_TIMEOUT,
    idle_timeout: float = IDLE_TIMEOUT,
    connection_limit: int = CONNECTION_LIMIT,
    max_header_bytes: int = MAX_HEADER_BYTES,
    max_body_bytes: Optional[int] = None,
    threads: int = THREADS,
) -> WsgiServer:
    """
    Listen on *host*:*port* (0 picks a free port) for *app*; call ``start()`` or use ``with``.

    >>> def app(environ, start_response):
    ...     start_response("200 OK", [("Content-Type", "text/plain")])
    ...     return [b"hi"]
    >>> with serve(app) as server:
    ...     server.url.startswith("http://127.0.0.1:")
    True

    Args:
        app: The WSGI application; it is called from several threads at once.
        host: Address to listen on; IPv6 (``"::1"``) and host names work too.
        port: Port to listen on; 0 lets the system pick one (see ``.port``).
        request_timeout: Seconds a request may take to arrive in full
            (checked every second); then its connection is closed.
        idle_timeout: Seconds a connection may stay silent before it is closed.
        connection_limit: Connections open at once; more wait in the backlog.
        max_header_bytes: Largest request line and headers; beyond, 431.
        max_body_bytes: Largest body read; beyond, 413 without reading it.
            Default: the app's ``max_body`` (the receiver has one), else 1 MiB.
        threads: Worker threads calling *app*.

    Raises:
        OSError: The address cannot be resolved or bound.
    """
    return WsgiServer(
        app,
        host,
        port,
        request_timeout=request_timeout,
        idle_timeout=idle_timeout,
        connection_limit=connection_limit,
        max_header_bytes=max_header_bytes,
        max_body_bytes=max_body_bytes,
        threads=threads,
    )
