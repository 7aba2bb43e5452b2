"""
Serve a WSGI application with the standard library only: :func:`serve`.

One thread per connection (``socketserver.ThreadingMixIn``), one request per
connection (HTTP/1.0, as ``wsgiref`` speaks it), a timeout on every
connection, and no per-request lines on stderr: the application keeps its own
audit log. Used by the reference receiver, the local API and the tests.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import selectors
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Callable, Optional
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

from ._logutil import get_logger

__all__ = ["StartResponse", "WSGIApplication", "WSGIEnvironment", "WsgiServer", "serve"]

#: The environ of one request (PEP 3333).
WSGIEnvironment = dict[str, Any]
#: The ``start_response`` callable handed to an application.
StartResponse = Callable[..., Any]
#: A WSGI application.
WSGIApplication = Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]

#: Seconds a connection may stay silent (request line, headers, body) before it is dropped.
REQUEST_TIMEOUT = 10.0
#: After answering, how long (seconds) and how much (bytes) unread input is
#: drained before closing, so that closing does not reset the connection and
#: destroy the answer before the client reads it (what web servers call a
#: lingering close).
LINGER_SECONDS = 1.0
LINGER_BYTES = 1 << 20

log = get_logger("wsgi")


def _is_disconnect(exc: Optional[BaseException]) -> bool:
    """True for the errors a client causes by leaving or stalling (not our bugs)."""
    return isinstance(exc, OSError)


class _ServerHandler(ServerHandler):
    """wsgiref's handler, logging to our logger instead of stderr."""

    request_handler: WSGIRequestHandler  # set by the request handler, used by close()

    def log_exception(self, exc_info: Any) -> None:
        if not _is_disconnect(exc_info[1]) and not sys.is_finalizing():
            log.error("the WSGI application raised an exception", exc_info=exc_info)

    def handle_error(self) -> None:
        if _is_disconnect(sys.exc_info()[1]):
            return  # the client left: there is no one to answer
        super().handle_error()


class _RequestHandler(WSGIRequestHandler):
    """One request per connection; quiet; errors of the HTTP layer answered in JSON."""

    server: _HTTPServer
    disable_nagle_algorithm = True  # the body is a second write: do not let it wait for an ACK

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.request_timeout)

    def handle(self) -> None:
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except OSError:
            return  # timed out or reset before a request line: nothing to answer
        if not self.raw_requestline:
            return
        self.server.set_busy(self.request, True)
        if len(self.raw_requestline) > 65536:
            self.requestline = ""
            self.request_version = ""
            self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():  # parse_request already answered
            return
        handler = _ServerHandler(
            self.rfile,
            self.wfile,  # type: ignore[arg-type]  # a socket writer; typeshed wants IO
            self.get_stderr(),
            self.get_environ(),
            multithread=True,
            multiprocess=False,
        )
        handler.request_handler = self
        handler.run(self.server.get_app())  # type: ignore[arg-type]

    def send_error(
        self, code: int, message: Optional[str] = None, explain: Optional[str] = None
    ) -> None:
        # A JSON body like the applications', and never an echo of the request.
        phrase = self.responses.get(code, ("Error", ""))[0]
        body = json.dumps({"success": False, "error": f"{code} {phrase}"}).encode("ascii")
        self.close_connection = True
        self.request_version = "HTTP/1.0"  # answer with headers, even to a garbled request line
        try:
            self.send_response(code, phrase)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:
            pass  # the client is gone

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the application's audit log replaces per-request lines


class _HTTPServer(socketserver.ThreadingMixIn, WSGIServer):
    """``WSGIServer`` with a thread per connection that stop() can find and join."""

    daemon_threads = True
    block_on_close = False  # stop() joins, with a deadline, instead
    allow_reuse_address = True
    request_queue_size = 128  # bursts of clients must not wait for SYN retries

    def __init__(
        self, address: tuple[Any, ...], family: socket.AddressFamily, request_timeout: float
    ) -> None:
        self.address_family = family
        self.request_timeout = request_timeout
        self._names = itertools.count(1)  # only the serving thread draws from it
        # Guards _connections and _busy: connection threads add and remove
        # themselves, stop() walks them. shutdown() on a socket never blocks,
        # so stop() may call it under the lock, which keeps the socket from
        # being closed (and its descriptor reused) meanwhile.
        self._connections_lock = threading.Lock()
        self._connections: dict[threading.Thread, socket.socket] = {}
        self._busy: set[socket.socket] = set()  # between request line and answer
        super().__init__(address, _RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup: skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name = str(host)
        self.server_port = int(port)
        self.setup_environ()

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._connection_thread,
            args=(request, client_address),
            name=f"lightd-sync-http-{self.server_port}-{next(self._names)}",
            daemon=True,
        )
        with self._connections_lock:
            self._connections[thread] = request
        try:
            thread.start()
        except BaseException:
            with self._connections_lock:
                del self._connections[thread]
            raise

    def _connection_thread(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.pop(threading.current_thread(), None)

    def set_busy(self, request: Any, busy: bool) -> None:
        """Mark a connection as inside a request (stop() lets it finish) or not."""
        with self._connections_lock:
            if busy:
                self._busy.add(request)
            else:
                self._busy.discard(request)

    def shutdown_request(self, request: Any) -> None:
        self.set_busy(request, False)
        try:
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        else:
            _drain(request)
        self.close_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if _is_disconnect(exc) or sys.is_finalizing():
            return
        log.error("error while serving %s", client_address[0], exc_info=True)

    def accept_one(self) -> None:
        """Accept a connection and start its thread (``socketserver``'s loop body)."""
        try:
            request, client_address = self.get_request()
        except OSError:
            return
        try:
            self.process_request(request, client_address)
        except Exception:  # no thread for it (resources): drop it, do not linger here
            self.handle_error(request, client_address)
            self.close_request(request)
        except BaseException:
            self.close_request(request)
            raise

    def connection_threads(self) -> list[threading.Thread]:
        """The threads serving connections now."""
        with self._connections_lock:
            return list(self._connections)

    def abort_connections(self, *, busy: bool) -> None:
        """Cut open connections short, so that their threads end soon: idle ones, or all."""
        with self._connections_lock:
            for sock in self._connections.values():
                if busy or sock not in self._busy:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)


def _drain(sock: socket.socket) -> None:
    """Read and drop what the client still sends, until it closes or the linger ends."""
    deadline = time.monotonic() + LINGER_SECONDS
    drained = 0
    while drained < LINGER_BYTES:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            sock.settimeout(left)
            chunk = sock.recv(65536)
        except OSError:
            return
        if not chunk:
            return
        drained += len(chunk)


def _bind_address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _type, _proto, _name, address = infos[0]
    return family, tuple(address)


class WsgiServer:
    """
    A threading HTTP server for one WSGI application; build it with :func:`serve`.

    It listens from construction on. Serve with :meth:`start` (a background
    thread) or :meth:`serve_forever` (this thread), end with :meth:`stop`; as a
    context manager it starts on entry and stops on exit.

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
    ) -> None:
        family, address = _bind_address(host, port)
        self._httpd = _HTTPServer(address, family, request_timeout)
        self._httpd.set_app(app)
        self.host: str = self._httpd.server_name
        self.port: int = self._httpd.server_port
        # stop() writes a byte here to wake the accept loop at once.
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._stopping = threading.Event()
        self._loop_done = threading.Event()
        # Guards _state, _serving_thread and _closed: start, serve_forever and
        # stop may be called from different threads.
        self._lock = threading.Lock()
        self._state = "new"  # -> "serving" -> "stopped"; or "new" -> "stopped"
        self._serving_thread: Optional[threading.Thread] = None
        self._closed = False

    @property
    def url(self) -> str:
        """The base URL to reach the server from this machine, e.g. ``http://127.0.0.1:8080``."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def _claim(self, thread: threading.Thread) -> None:
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"the server at {self.url} is already {self._state}")
            self._state = "serving"
            self._serving_thread = thread

    def _serve(self) -> None:
        httpd = self._httpd
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(httpd.socket, selectors.EVENT_READ)
                selector.register(self._wake_reader, selectors.EVENT_READ)
                while not self._stopping.is_set():
                    for key, _events in selector.select():
                        if key.fileobj is httpd.socket and not self._stopping.is_set():
                            httpd.accept_one()
        finally:
            self._loop_done.set()
            if self._stopping.is_set():  # stop() may have come from this very thread
                self._close()

    def serve_forever(self) -> None:
        """
        Serve in the calling thread until :meth:`stop` is called.

        :meth:`stop` may come from another thread, or from this one (a signal
        handler): then this method closes the server on its way out.

        Raises:
            RuntimeError: The server is already serving, or stopped.
        """
        self._claim(threading.current_thread())
        self._serve()

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
        self._claim(thread)
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self._state, self._serving_thread = "new", None
            raise
        return self

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
            serving = self._serving_thread
        if state == "stopped":
            return self._all_ended(serving)
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"\0")
        if serving is threading.current_thread():
            return False  # a signal handler inside serve_forever(): it closes on its way out
        if state == "serving":
            self._loop_done.wait(max(0.0, deadline - time.monotonic()))
        self._close()
        if serving is not None and serving.ident is not None:
            serving.join(max(0.0, deadline - time.monotonic()))
        self._httpd.abort_connections(busy=False)  # waiting for a request, or lingering
        grace = deadline - min(0.5, timeout / 2)
        for thread in self._httpd.connection_threads():
            thread.join(max(0.0, grace - time.monotonic()))
        self._httpd.abort_connections(busy=True)
        for thread in self._httpd.connection_threads():
            thread.join(max(0.0, deadline - time.monotonic()))
        return self._all_ended(serving)

    def _close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._httpd.server_close()
        self._wake_reader.close()
        self._wake_writer.close()

    def _all_ended(self, serving: Optional[threading.Thread]) -> bool:
        if serving is not None and serving.is_alive():
            return False
        return not self._httpd.connection_threads()

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
        app: The WSGI application; it is called from many threads at once.
        host: Address to listen on; IPv6 (``"::1"``) and host names work too.
        port: Port to listen on; 0 lets the system pick one (see ``.port``).
        request_timeout: Seconds a connection may stay silent before it is dropped.

    Raises:
        OSError: The address cannot be resolved or bound.
    """
    return WsgiServer(app, host, port, request_timeout=request_timeout)
