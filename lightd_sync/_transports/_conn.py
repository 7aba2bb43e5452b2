"""
The HTTP transport's connections: one keep-alive connection per thread, each request in one write.

Every request is written in one ``sendall`` (its constant part encoded once
per transport) and its answer parsed by ``http.client.HTTPResponse`` from a
:class:`~._deadline.DeadlineReader`, so the whole request keeps one
deadline. The sockets are made here (TLS through the transport's
:class:`ssl.SSLContext`, built by urllib3's ``create_urllib3_context``), so
that :meth:`ConnectionBook.cut_off` can shut down every one of them, even one
that is still connecting or in its TLS handshake. The only wait it cannot cut
short is a DNS lookup (``getaddrinfo`` cannot be interrupted); it ends by
itself within ``timeout``.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import os
import socket
import ssl
import threading
import time
from typing import Optional

import attrs

from .._forksafe import after_fork_in_child
from ._deadline import (
    Answer,
    DeadlineExceededError,
    DeadlineReader,
    read_answer,
)

__all__ = [
    "ClosedError",
    "ConnectError",
    "Connection",
    "ConnectionBook",
    "ProxyTunnelError",
    "Route",
]


class ClosedError(ConnectionAbortedError):
    """The transport was closed: no request may go out, and those in flight were cut off."""

    def __init__(self) -> None:
        super().__init__(errno.ECONNABORTED, "the transport was closed")


class ConnectError(OSError):
    """Connecting to the remote (or to the proxy) failed; the cause says why."""


class ProxyTunnelError(OSError):
    """The proxy refused to open a tunnel; the message has its status (never its body)."""


@attrs.frozen
class Route:
    """
    Where a transport's connections go: the remote, or a proxy on the way to it.

    Attributes:
        host: The host to connect to (the remote's, or the proxy's).
        port: Its port.
        tls: The TLS context of the remote (``https://``), else ``None``.
        server_hostname: The name the remote's certificate must hold.
        tunnel: ``host:port`` of the remote for a ``CONNECT`` tunnel through the proxy.
        tunnel_head: The ``CONNECT`` request, encoded (it may hold the proxy's credentials).
        proxy_tls: The TLS context of an ``https://`` proxy, else ``None``.
        proxy_hostname: The name the proxy's certificate must hold.
    """

    host: str
    port: int
    tls: Optional[ssl.SSLContext] = attrs.field(default=None, repr=False)
    server_hostname: Optional[str] = None
    tunnel: Optional[str] = None
    tunnel_head: bytes = attrs.field(default=b"", repr=False)
    proxy_tls: Optional[ssl.SSLContext] = attrs.field(default=None, repr=False)
    proxy_hostname: Optional[str] = None


class Connection:
    """
    One keep-alive connection, used by one thread at a time (the thread that owns it).

    ``sock`` is read by :meth:`ConnectionBook.cut_off` from another thread:
    it is assigned before each step that may block, so that the cut-off
    always finds the socket that a step waits on.
    """

    __slots__ = ("_book", "_reader", "busy", "reused", "route", "sock")

    def __init__(self, route: Route, book: ConnectionBook) -> None:
        self.route = route
        self._book = book
        self.sock: Optional[socket.socket] = None
        self._reader: Optional[DeadlineReader] = None
        self.reused = False  # whether the last request went out on a kept-alive socket
        self.busy = False  # in an exchange; flipped under the book's lock

    def exchange(self, message: bytes, method: str, deadline: float) -> Answer:
        """
        Send *message* (a whole request) and read its answer, all by *deadline*.

        Raises:
            ClosedError: The transport was closed.
            ConnectError: Connecting failed (the cause says why).
            DeadlineExceededError: The deadline passed.
            OSError, ssl.SSLError, http.client.HTTPException: the exchange failed.
            AnswerTooLargeError: The answer's body is larger than MAX_ANSWER.
        """
        book = self._book
        book.begin(self)
        self.reused = self.sock is not None
        try:
            if self.sock is None:
                self._connect(deadline)
            sock, reader = self.sock, self._reader
            assert sock is not None
            assert reader is not None
            reader.send(message, deadline)
            reader.arm(deadline)
            answer, reusable = read_answer(reader, method)
        except BaseException:
            self.close()
            book.end(self)
            raise
        if not reusable:
            self.close()
        book.end(self)
        return answer

    def pipeline(
        self, messages: list[bytes], method: str, timeout: float
    ) -> tuple[list[Answer], Optional[BaseException]]:
        """
        Send *messages* (whole requests) in one write on this kept-alive connection; read answers.

        HTTP/1.1 answers pipelined requests in order. Each answer must be
        complete within *timeout* of the previous one (the first, of the
        write). Reading stops at the first answer after which the connection
        cannot carry more (``Connection: close``) or at the first failure.

        Returns:
            The answers read, in order (as many as the first requests), and
            the exception that stopped the reading early, if any. The
            requests without an answer may or may not have reached the remote.

        Raises:
            ClosedError: The transport was closed before anything was sent.
        """
        book = self._book
        book.begin(self)
        answers: list[Answer] = []
        error: Optional[BaseException] = None
        reusable = True
        try:
            sock, reader = self.sock, self._reader
            if sock is None or reader is None:
                raise ConnectionResetError(
                    errno.ENOTCONN, "no kept-alive connection to pipeline on"
                )
            reader.send(b"".join(messages), time.monotonic() + timeout)
            for _ in messages:
                reader.arm(time.monotonic() + timeout)
                answer, reusable = read_answer(reader, method)
                answers.append(answer)
                if not reusable:
                    break
        except BaseException as exc:
            error = exc
            reusable = False
        if not reusable:
            self.close()
        book.end(self)
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise error
        return answers, error

    def answered_nothing(self) -> bool:
        """Whether the remote sent no byte at all for the last request."""
        return self._reader is None or self._reader.received == 0

    def _use(self, sock: socket.socket) -> socket.socket:
        """Make *sock* the one a cut-off shuts down, then check that no cut-off came first."""
        self.sock = sock
        if self._book.closed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            raise ClosedError
        return sock

    def _connect(self, deadline: float) -> None:
        route = self.route
        sock = self._open(route.host, route.port, deadline)
        try:
            if route.proxy_tls is not None:
                sock = self._handshake(route.proxy_tls, sock, route.proxy_hostname, deadline)
            if route.tunnel is not None:
                self._open_tunnel(sock, deadline)
            if route.tls is not None:
                sock = self._handshake(route.tls, sock, route.server_hostname, deadline)
        except BaseException:
            with contextlib.suppress(OSError):
                sock.close()
            raise
        self._reader = DeadlineReader(sock, kernel=True)

    def _open(self, host: str, port: int, deadline: float) -> socket.socket:
        error: Optional[OSError] = None
        try:
            # DNS: the one wait that nothing can cut short.
            infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        except OSError as exc:
            raise ConnectError(f"cannot resolve {host}") from exc
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            try:
                self._use(sock)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeadlineExceededError("the request's deadline passed")
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(left)
                sock.connect(address)
                return sock
            except (ClosedError, DeadlineExceededError, socket.timeout):
                sock.close()
                raise
            except OSError as exc:
                sock.close()
                if self._book.closed:
                    raise ClosedError from None
                error = exc
        raise ConnectError(f"cannot connect to {host}:{port}") from error

    def _handshake(
        self,
        context: ssl.SSLContext,
        sock: socket.socket,
        hostname: Optional[str],
        deadline: float,
    ) -> socket.socket:
        # Not on connect: the handshake must run on the socket a cut-off can reach.
        tls = context.wrap_socket(sock, server_hostname=hostname, do_handshake_on_connect=False)
        self._use(tls)
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceededError("the request's deadline passed")
        tls.settimeout(left)
        tls.do_handshake()
        return tls

    def _open_tunnel(self, sock: socket.socket, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceededError("the request's deadline passed")
        sock.settimeout(left)
        sock.sendall(self.route.tunnel_head)
        reader = DeadlineReader(sock)
        reader.arm(deadline)
        response = http.client.HTTPResponse(_OneShot(reader), method="CONNECT")  # type: ignore[arg-type]
        response.begin()
        if response.status != 200:
            raise ProxyTunnelError(
                f"the proxy refused the tunnel to {self.route.tunnel}: HTTP {response.status}"
            )

    def close(self) -> None:
        """Close the socket (a later request connects again)."""
        sock, self.sock, self._reader = self.sock, None, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


class _OneShot:
    """The CONNECT answer's source: reads one byte at a time, never past the proxy's headers."""

    __slots__ = ("_reader",)

    def __init__(self, reader: DeadlineReader) -> None:
        self._reader = reader

    def makefile(self, mode: str, *args: object, **kwargs: object) -> object:
        import io

        # Unbuffered: what follows the headers (the remote's TLS) must stay in the socket.
        return io.BufferedReader(self._reader, 1)


class ConnectionBook:
    """
    Every connection of one transport: one per thread that sends, and the means to cut them off.

    A thread's connection is kept in a thread-local slot, so a lane reuses its
    own connection without any lock. The book also keeps them all, so that
    :meth:`cut_off` can reach a request blocked in any thread. A forked child
    forgets the parent's connections (closing only its own copies of their
    file descriptors) and makes its own.
    """

    def __init__(self, route: Route) -> None:
        self.route = route
        self.closed = False  # set once by cut_off(); read without the lock
        self._reset()
        after_fork_in_child(self._forget_in_child)

    def _reset(self) -> None:
        # Guards _all, setting closed, and every Connection's busy flag: cut_off()
        # closes an idle connection's socket but only shuts down a busy one's
        # (its own thread closes it), so that no socket is closed twice.
        self._lock = threading.Lock()
        self._all: list[Connection] = []
        self._local = threading.local()  # .conn: the calling thread's Connection
        self._pid = os.getpid()

    def mine(self) -> Connection:
        """
        The calling thread's connection (made on first use).

        Raises:
            ClosedError: The transport was closed.
        """
        if self._pid != os.getpid():  # a child forked without the fork hooks (uWSGI)
            self._forget_in_child()
        conn: Optional[Connection] = getattr(self._local, "conn", None)
        if conn is None:
            conn = Connection(self.route, self)
            with self._lock:
                if self.closed:
                    raise ClosedError
                self._all.append(conn)
            self._local.conn = conn
        return conn

    def connections(self) -> list[Connection]:
        """Every connection made in this process so far."""
        with self._lock:
            return list(self._all)

    def begin(self, conn: Connection) -> None:
        """*conn*'s thread starts an exchange on it (raises ClosedError once the book is closed)."""
        with self._lock:
            if self.closed:
                raise ClosedError
            conn.busy = True

    def end(self, conn: Connection) -> None:
        """*conn*'s exchange is over; close it if the book was closed meanwhile."""
        with self._lock:
            conn.busy = False
            closed = self.closed
        if closed:
            conn.close()

    def cut_off(self) -> None:
        """Close the book: shut down every socket, waking every thread blocked on one."""
        if self._pid != os.getpid():  # never shut down the sockets of a parent process
            self._forget_in_child()
        with self._lock:
            self.closed = True
            busy = [conn for conn in self._all if conn.busy]
            idle = [conn for conn in self._all if not conn.busy]
        for conn in busy:  # their own threads close them
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):  # already closed by its own thread
                    sock.shutdown(socket.SHUT_RDWR)
        for conn in idle:
            conn.close()

    def _forget_in_child(self) -> None:
        """In a forked child: close this process's copies of the sockets, never shut them down."""
        if self._pid == os.getpid():
            return
        inherited = self._all
        self._reset()  # the parent may have held the lock at fork time
        for conn in inherited:
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()  # the parent's socket lives on
