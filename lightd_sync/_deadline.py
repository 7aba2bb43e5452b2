"""
One deadline per request, a cut-off at close(), and a bounded, doubted answer.

Shared by both HTTP transports (urllib3's pool and ``requests``) and the
receiver's webhook sender, so that the promises are kept once:

- ``remote.timeout`` is the time a whole request may take: connecting,
  sending, and every byte of the answer. urllib3's timeouts bound one system
  call each, so a remote that trickles its answer a byte at a time would hold
  a lane for ever: a :class:`Watchdog` shuts down the sockets of a request
  whose deadline passed, which ends any read or write blocked on them.
- :meth:`Guard.close` shuts down every connection, waking requests blocked
  on a silent remote (waiting for the answer, or in the TLS handshake).
- The connections are urllib3's public classes with two hooks (``connect``
  and ``request``): they attach themselves to the calling thread's request,
  and :class:`Guard` knows them all.
- An answer's body is read up to :data:`MAX_ANSWER` bytes; a larger one is
  refused, never held in memory. An answer whose framing is doubtful (a 1xx
  interim answer taken as final, a lying length) fails its request, and its
  connection is closed, never reused; bytes after an answer are dropped, and
  urllib3 never reuses a connection with bytes waiting.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import os
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any, NamedTuple, Optional

import urllib3

from ._threads import start_quietly

__all__ = [
    "MAX_ANSWER",
    "Answer",
    "AnswerTooLargeError",
    "ClosedError",
    "DeadlineExceededError",
    "DoubtfulAnswerError",
    "Guard",
    "Ticket",
    "Watchdog",
    "read_answer",
]

#: The most bytes of an answer's body a transport reads (64 KiB).
MAX_ANSWER = 64 * 1024
_CHUNK = 16 * 1024
#: How long close() waits for a connection in progress to store its socket.
_STORE_WAIT = 0.2


class DeadlineExceededError(socket.timeout):
    """The request's deadline passed (a ``socket.timeout``, so it maps as one)."""


class ClosedError(ConnectionAbortedError):
    """The transport was closed: its connections refuse to carry requests."""


class AnswerTooLargeError(Exception):
    """The answer's body is larger than :data:`MAX_ANSWER`."""

    def __init__(self, status: int, declared: Optional[int]) -> None:
        size = f"Content-Length: {declared}" if declared is not None else "it kept coming"
        super().__init__(f"the answer's body is larger than {MAX_ANSWER // 1024} KiB ({size})")
        self.status = status
        self.declared = declared


class DoubtfulAnswerError(Exception):
    """The answer's framing is doubtful: it cannot be trusted to be this request's answer."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


class Answer(NamedTuple):
    """What the remote answered: enough for the protocol's verdicts."""

    status: int
    data: bytes
    headers: Mapping[str, str]


class Ticket:
    """One request watched by a :class:`Watchdog`: its deadline and its connections."""

    __slots__ = ("conns", "deadline", "done", "expired", "reused")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.conns: list[Any] = []  # objects with a .sock (urllib3 connections)
        self.done = False
        self.expired = False
        #: Whether the request went out on a connection that had carried one before.
        self.reused = False


class Watchdog:
    """
    One thread per transport that shuts down the sockets of requests past their deadline.

    Each request takes a :class:`Ticket`; its connections are attached to it
    as they are used, and at the deadline the watchdog shuts their sockets
    down. The thread starts with the first request and ends at :meth:`close`.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        # Guards _heap, _thread, _closed and every Ticket's conns, done and expired.
        # A socket is shut down under it (a system call that never blocks), so that
        # a request that finished can never have its next request's socket cut.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, Ticket]] = []
        self._count = itertools.count()
        self._thread: Optional[threading.Thread] = None
        self._closed = False

    def start(self, timeout: float) -> Ticket:
        """Watch a request that must be over within *timeout* seconds from now."""
        ticket = Ticket(time.monotonic() + timeout)
        with self._lock:
            if self._closed:
                ticket.done = True
                return ticket
            earliest = self._heap[0][0] if self._heap else None
            heapq.heappush(self._heap, (ticket.deadline, next(self._count), ticket))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                start_quietly(self._thread)
            elif earliest is None or ticket.deadline < earliest:
                self._wake.notify()
        return ticket

    def attach(self, ticket: Optional[Ticket], conn: Any) -> None:
        """Cut *conn* off too when *ticket*'s deadline passes (at once if it passed)."""
        if ticket is None:
            return
        with self._lock:
            if ticket.done:
                return
            ticket.conns.append(conn)
            if ticket.expired:
                for sock in _socks(conn):
                    _shut(sock)

    def finish(self, ticket: Ticket) -> None:
        """The request is over: none of its connections will be cut from now on."""
        with self._lock:
            ticket.done = True
            ticket.conns.clear()

    def close(self) -> None:
        """Stop the thread (requests still watched are no longer cut at their deadline)."""
        with self._lock:
            self._closed = True
            thread = self._thread
            self._wake.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)

    def abandon(self) -> None:
        """Stop without waiting for the lock (a forked child's copy: its thread is the parent's)."""
        self._closed = True
        if self._lock.acquire(blocking=False):
            try:
                self._wake.notify()
            finally:
                self._lock.release()

    def _run(self) -> None:
        with self._lock:
            while not self._closed:
                heap = self._heap
                while heap and heap[0][2].done:
                    heapq.heappop(heap)
                if not heap:
                    self._wake.wait()
                    continue
                left = heap[0][0] - time.monotonic()
                if left > 0:
                    self._wake.wait(left)
                    continue
                ticket = heapq.heappop(heap)[2]
                ticket.expired = True
                for conn in ticket.conns:
                    for sock in _socks(conn):
                        _shut(sock)


def _shut(sock: Optional[socket.socket]) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed by its own thread
            sock.shutdown(socket.SHUT_RDWR)


#: The connection the calling thread is connecting, for :class:`GuardedSSLSocket`.
_connecting = threading.local()


class GuardedSSLSocket(ssl.SSLSocket):
    """
    An ``SSLSocket`` that its connection can shut down while the TLS handshake runs.

    urllib3 stores a TLS connection's socket only after the handshake; a
    transport's own ``SSLContext`` returns this class (``sslsocket_class``,
    public since Python 3.7), which hands itself to its connection as the
    handshake starts, so that :meth:`Guard.close` and the deadline can cut it.
    """

    def do_handshake(self, block: bool = False) -> None:
        conn = getattr(_connecting, "conn", None)
        if conn is not None:
            conn.lightd_tls = self
            conn.lightd_guard.watch(conn)
            if conn.lightd_guard.closed:
                raise ClosedError(errno.ECONNABORTED, "the transport was closed")
        super().do_handshake(block)


def _socks(conn: Any) -> list[socket.socket]:
    """The sockets of *conn* that may carry its bytes: the stored one, the one in a handshake."""
    return [s for s in (getattr(conn, "sock", None), getattr(conn, "lightd_tls", None)) if s]


class Guard:
    """
    The deadline and the cut-off of one transport's requests, over urllib3's connection classes.

    :attr:`pool_classes` are urllib3 pool classes (public ``ConnectionCls``)
    whose connections report to this guard; a transport wraps each request in
    :meth:`begin` and :meth:`end`. A guard belongs to one process: a forked
    child makes a new one (the transports check the pid in one place) and
    calls :meth:`forget` on the parent's.

    Args:
        name: The watchdog thread's name.
        verify: Whether TLS certificates are verified (else urllib3's
            per-request ``InsecureRequestWarning`` is not raised: the
            transport warned once when it was created).
    """

    def __init__(self, name: str, *, verify: bool = True) -> None:
        self.pid = os.getpid()
        # Guards _closed and _conns against close() walking them.
        self._lock = threading.Lock()
        self._closed = False
        self._conns: weakref.WeakSet[Any] = weakref.WeakSet()
        self._local = threading.local()  # .ticket: the calling thread's request
        self.watchdog = Watchdog(name)
        self.pool_classes = self._classes(verify)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def begin(self, timeout: float) -> Ticket:
        """Start the calling thread's request, which must be over within *timeout* seconds."""
        ticket = self.watchdog.start(timeout)
        self._local.ticket = ticket
        return ticket

    def end(self, ticket: Ticket) -> None:
        """End the calling thread's request: its connections are no longer cut at its deadline."""
        self._local.ticket = None
        self.watchdog.finish(ticket)

    def watch(self, conn: Any, *, request: bool = False) -> None:
        """Attach *conn* to the calling thread's request (cut at its deadline)."""
        ticket: Optional[Ticket] = getattr(self._local, "ticket", None)
        if ticket is None:
            return
        if request:
            ticket.reused = conn.lightd_uses > 1
        self.watchdog.attach(ticket, conn)

    def track(self, conn: Any) -> None:
        """Remember *conn*; shut it down at once (and refuse it) if the guard was closed."""
        with self._lock:
            self._conns.add(conn)
            closed = self._closed
        if closed:
            for sock in _socks(conn):
                _shut(sock)
            raise ClosedError(errno.ECONNABORTED, "the transport was closed")

    def close(self) -> None:
        """Shut down every connection, waking the threads blocked on them; stop the watchdog."""
        with self._lock:
            self._closed = True
            conns = list(self._conns)
        for conn in conns:
            for sock in _socks(conn):
                _shut(sock)
        # urllib3 stores a new connection's socket only once its TCP connect
        # returned: a connection caught in between has no socket to shut down
        # yet. Wait a moment for it; one that connects later refuses itself (track).
        deadline = time.monotonic() + _STORE_WAIT
        waiting = [c for c in conns if c.lightd_connecting and getattr(c, "sock", None) is None]
        while waiting and time.monotonic() < deadline:
            time.sleep(0.002)
            for conn in list(waiting):
                stored: Optional[socket.socket] = getattr(conn, "sock", None)
                if stored is not None or not conn.lightd_connecting:
                    _shut(stored)
                    waiting.remove(conn)
        self.watchdog.close()

    def connections(self) -> list[Any]:
        """The connections made so far that hold an open socket (for tests and ``check``)."""
        with self._lock:
            conns = list(self._conns)
        return [c for c in conns if getattr(c, "sock", None) is not None and c.sock.fileno() != -1]

    def forget(self) -> None:
        """
        In a forked child: close this process's copies of the parent's sockets, never shutdown.

        No lock: the child has one thread, and a parent's thread may have held it at fork.
        """
        self._closed = True
        self.watchdog.abandon()
        for conn in list(self._conns):
            sock = getattr(conn, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    def _classes(self, verify: bool) -> dict[str, Any]:
        guard = self

        class Tracked:
            """Connection mixin: watched by the request's deadline, known to close()."""

            lightd_connecting = False
            lightd_uses = 0
            lightd_guard = guard
            lightd_tls: Optional[ssl.SSLSocket] = None  # the socket of a handshake in progress

            def connect(self) -> None:
                guard.watch(self)
                self.lightd_connecting = True  # close() waits a moment for its socket
                _connecting.conn = self  # a GuardedSSLSocket hands itself over
                try:
                    guard.track(self)  # before: close() may cut the TLS handshake
                    super().connect()  # type: ignore[misc]
                finally:
                    _connecting.conn = None
                    self.lightd_connecting = False
                    self.lightd_tls = None
                guard.track(self)  # and after: a close() that came meanwhile

            def request(self, *args: Any, **kwargs: Any) -> Any:
                self.lightd_uses += 1
                guard.watch(self, request=True)  # a kept-alive connection: no connect() now
                if guard.closed:
                    raise ClosedError(errno.ECONNABORTED, "the transport was closed")
                return super().request(*args, **kwargs)  # type: ignore[misc]

        class Conn(Tracked, urllib3.connection.HTTPConnection):
            pass

        class TLSConn(Tracked, urllib3.connection.HTTPSConnection):
            pass

        class QuietTLSConn(TLSConn):
            """
            For ``verify: false``: no ``InsecureRequestWarning`` on every request.

            The transport logged one loud WARNING when it was created; urllib3
            would add a Python warning per request (an error under ``-W error``),
            and silencing it otherwise changes process-wide state. urllib3 reads
            ``is_verified`` only to decide about that warning.
            """

            @property
            def is_verified(self) -> bool:
                return True

            @is_verified.setter
            def is_verified(self, value: bool) -> None:
                pass

        class Pool(urllib3.HTTPConnectionPool):
            ConnectionCls = Conn

        class TLSPool(urllib3.HTTPSConnectionPool):
            ConnectionCls = TLSConn if verify else QuietTLSConn

        return {"http": Pool, "https": TLSPool}


def read_answer(response: Any, ticket: Ticket) -> Answer:
    """
    Read urllib3 *response*'s body, up to MAX_ANSWER bytes and by *ticket*'s deadline.

    The connection goes back to its pool only if the answer was read whole (an
    answer not read whole closes its connection). Bytes that follow an answer
    never reach the next request: those read with it are dropped with its
    buffer, and urllib3 checks a pooled connection before it reuses it, closing
    one with anything waiting. They are not looked for here: urllib3 hands the
    connection back to its pool as the last byte is read, and from then on
    another thread may be using it.

    Raises:
        AnswerTooLargeError: The body is (or is declared) larger than MAX_ANSWER.
        DoubtfulAnswerError: A 1xx answer where the final one belongs, or a lying length.
        DeadlineExceededError: The deadline passed before the answer was complete.
        OSError, urllib3.exceptions.HTTPError: The connection broke.
    """
    clean = False
    try:
        status = response.status
        if 100 <= status < 200:  # http.client waits out 100 only: a 103 would end here
            raise DoubtfulAnswerError(
                status, f"an interim answer (HTTP {status}) came where the final one belongs"
            )
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and len(declared) < 20 and int(declared) > MAX_ANSWER:
            raise AnswerTooLargeError(status, int(declared))
        chunks: list[bytes] = []
        size = 0
        length = int(declared) if declared.isdigit() and len(declared) < 20 else -1
        while size != length:  # a declared length read whole needs no read for the end
            if time.monotonic() >= ticket.deadline:
                raise DeadlineExceededError("the request's deadline passed")
            chunk = response.read(_CHUNK, decode_content=False)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_ANSWER:
                raise AnswerTooLargeError(status, None)
            chunks.append(chunk)
        if ticket.expired:  # the watchdog cut the socket: what was read may be short
            raise DeadlineExceededError("the request's deadline passed")
        chunked = "chunked" in response.headers.get("Transfer-Encoding", "").lower()
        if declared.isdigit() and not chunked and int(declared) != size:
            # urllib3 1.26 (as requests uses it) does not enforce the length itself
            raise DoubtfulAnswerError(
                status, f"the body has {size} bytes where Content-Length says {int(declared)}"
            )
        clean = True
        return Answer(status, b"".join(chunks), response.headers)
    finally:
        if not clean:
            response.close()  # closes the connection too: it is never reused
        response.release_conn()
