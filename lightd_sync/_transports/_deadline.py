"""
One deadline per request, and a bounded answer: the rules every HTTP transport keeps.

``remote.timeout`` is the time a whole request may take: connecting, sending,
and every byte of the answer. A socket's own timeout only bounds one system
call, so a remote that trickles its answer a byte at a time would hold a lane
for ever; here each read gets what is left of the deadline, and
:class:`Watchdog` cuts off requests whose sockets the transport cannot reach
between reads (those made by ``requests``). An answer's body is read up to
:data:`MAX_ANSWER` bytes; a larger one is refused, never held in memory.
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import io
import itertools
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, NamedTuple, Optional, cast

from .._forksafe import after_fork_in_child
from ._quick import quick_answer

__all__ = [
    "MAX_ANSWER",
    "Answer",
    "AnswerTooLargeError",
    "DeadlineExceededError",
    "DeadlineReader",
    "Ticket",
    "Watchdog",
    "read_answer",
    "set_timeout_near",
]

#: The most bytes of an answer's body a transport reads (64 KiB).
MAX_ANSWER = 64 * 1024
_BUFFER = 16 * 1024


class DeadlineExceededError(socket.timeout):
    """The request's deadline passed (a ``socket.timeout``, so it maps as one)."""


class AnswerTooLargeError(Exception):
    """The answer's body is larger than :data:`MAX_ANSWER`."""

    def __init__(self, status: int, declared: Optional[int]) -> None:
        size = f"Content-Length: {declared}" if declared is not None else "it kept coming"
        super().__init__(f"the answer's body is larger than {MAX_ANSWER // 1024} KiB ({size})")
        self.status = status
        self.declared = declared


class Answer(NamedTuple):
    """What the remote answered: enough for the protocol's verdicts."""

    status: int
    data: bytes
    headers: Mapping[str, str]


#: How much earlier than its deadline a socket operation may time out, at most:
#: the timeout already set is kept while it is within this of what is left.
DEADLINE_SLACK = 0.05


def set_timeout_near(sock: socket.socket, left: float) -> None:
    """
    Make *sock*'s timeout *left* seconds, give or take :data:`DEADLINE_SLACK`.

    ``settimeout`` is a system call that releases the GIL, and beside a busy
    Python thread each release may cost up to the 5 ms switch interval: on a
    kept-alive connection the timeout already set is nearly always close
    enough, so most requests make no such call at all.
    """
    current = sock.gettimeout()
    if current is None or not left - DEADLINE_SLACK <= current <= left:
        sock.settimeout(left)


#: Whether a plain TCP socket may be made blocking with the kernel's own timeouts
#: (``SO_RCVTIMEO``/``SO_SNDTIMEO``, a ``struct timeval`` whose layout is known here).
KERNEL_TIMEOUTS = sys.platform.startswith("linux")


def _timeval(seconds: float) -> bytes:
    """*seconds* as a ``struct timeval``, never zero (which would mean no timeout at all)."""
    micros = max(1, round(seconds * 1_000_000))
    return struct.pack("@ll", micros // 1_000_000, micros % 1_000_000)


class DeadlineReader(io.RawIOBase):
    """
    A socket's reading end where each ``recv_into`` gets what is left of *deadline*.

    Wrapped in :class:`io.BufferedReader`, it is what ``http.client`` reads an
    answer from. ``received`` counts the bytes read since :meth:`arm`: zero
    means the remote sent nothing at all for this request.

    With *kernel* (plain TCP on Linux), the socket is made blocking and each
    call is bounded by the kernel's ``SO_RCVTIMEO``/``SO_SNDTIMEO`` instead
    of Python's socket timeout. Python implements its timeout with a
    ``poll()`` before each ``send``/``recv``, and the ``poll`` releases the
    GIL too: beside a busy host thread every release may cost up to the 5 ms
    switch interval and forces a switch away from the host, so a blocking
    socket halves the releases per request. ``setsockopt`` does not release
    the GIL. (A signal that interrupts a blocked call restarts the kernel's
    timer; the deadline is checked again after every call, so the only case
    it stretches is a storm of signals, each interrupting this very thread,
    faster than the timeout: the kernel gives process signals to the main
    thread first.)
    """

    def __init__(self, sock: socket.socket, *, kernel: bool = False) -> None:
        super().__init__()
        self.sock = sock
        self.deadline = 0.0
        self.received = 0
        # The SO_RCVTIMEO/SO_SNDTIMEO in force (kernel mode), else None.
        self._kernel: Optional[float] = None
        if kernel and KERNEL_TIMEOUTS and not isinstance(sock, ssl.SSLSocket):
            sock.settimeout(None)  # blocking: once per connection
            self._kernel = -1.0  # none set yet: the first limit() sets it
        #: The one buffer answers are parsed from, for the connection's life: the
        #: answers to pipelined requests arrive together and must not be lost.
        self.file = _Buffer(self, _BUFFER)

    def arm(self, deadline: float) -> None:
        """Start a new request that must be answered by *deadline* (``time.monotonic()``)."""
        self.deadline = deadline
        self.received = 0

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing to close: the connection owns the socket (and reads the next answer here)."""

    def limit(self, left: float) -> None:
        """Bound the socket's next calls to *left* seconds, give or take :data:`DEADLINE_SLACK`."""
        current = self._kernel
        if current is None:
            set_timeout_near(self.sock, left)
        elif not left - DEADLINE_SLACK <= current <= left:
            value = _timeval(left)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
            self._kernel = left

    def send(self, data: bytes, deadline: float) -> None:
        """Send all of *data* by *deadline* (``time.monotonic()``)."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceededError("the request's deadline passed")
        self.limit(left)
        try:
            self.sock.sendall(data)
        except (socket.timeout, BlockingIOError):  # BlockingIOError: the kernel's timeout
            raise DeadlineExceededError("the request's deadline passed") from None

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceededError("the request's deadline passed")
        self.limit(left)
        try:
            n = self.sock.recv_into(buffer)
        except (socket.timeout, BlockingIOError):  # BlockingIOError: the kernel's timeout
            raise DeadlineExceededError("the request's deadline passed") from None
        self.received += n
        return n


class _Buffer(io.BufferedReader):
    """A connection's read buffer: ``http.client`` closes it after each answer; it stays open."""

    def close(self) -> None:
        """Keep the buffer: the next answer on the connection is read from it."""


class _Source:
    """What ``http.client.HTTPResponse`` takes for a socket: an object with ``makefile()``."""

    __slots__ = ("_file",)

    def __init__(self, file: io.BufferedReader) -> None:
        self._file = file

    def makefile(self, mode: str, *args: Any, **kwargs: Any) -> io.BufferedReader:
        return self._file


def read_answer(reader: DeadlineReader, method: str) -> tuple[Answer, bool]:
    """
    Read one answer from *reader*: the status, the headers and at most MAX_ANSWER bytes of body.

    Returns:
        The answer, and whether the connection may carry another request.

    Raises:
        AnswerTooLargeError: The body is (or is declared) larger than MAX_ANSWER.
        DeadlineExceededError: The deadline passed before the answer was complete.
        http.client.HTTPException, OSError: The answer is malformed or the connection broke.
    """
    quick = quick_answer(reader.file, method, MAX_ANSWER)
    if quick is not None:
        status, data, headers, reusable, too_large = quick
        if too_large is not None:
            raise AnswerTooLargeError(status, too_large)
        return Answer(status, data, headers), reusable
    response = http.client.HTTPResponse(cast(socket.socket, _Source(reader.file)), method=method)
    try:
        response.begin()
        length = response.length
        if length is not None:
            if length > MAX_ANSWER:
                raise AnswerTooLargeError(response.status, length)
            data = response.read()
        else:  # chunked or delimited by the close: it may keep coming
            data = response.read(MAX_ANSWER + 1)
            if len(data) > MAX_ANSWER:
                raise AnswerTooLargeError(response.status, None)
        reusable = not response.will_close and response.isclosed()
        # HTTPMessage: a case-insensitive .get(), all the verdicts use.
        return Answer(response.status, data, cast("Mapping[str, str]", response.headers)), reusable
    finally:
        response.close()


class Ticket:
    """One request watched by a :class:`Watchdog`: its deadline and its connections."""

    __slots__ = ("conns", "deadline", "done", "expired")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.conns: list[Any] = []  # objects with a .sock (urllib3 connections)
        self.done = False
        self.expired = False


class Watchdog:
    """
    One thread per transport that shuts down the sockets of requests past their deadline.

    For clients (``requests``) whose reads the transport cannot reach: each
    request takes a :class:`Ticket`, its connections are attached to it as
    they are used, and at the deadline the watchdog shuts their sockets down,
    which ends any read or write blocked on them. The thread starts with the
    first request and ends at :meth:`close`.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._reset()
        after_fork_in_child(self._reset)

    def _reset(self) -> None:
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
                self._thread.start()
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
                _shut(conn)

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
                    _shut(conn)


def _shut(conn: Any) -> None:
    sock = getattr(conn, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed by its own thread
            sock.shutdown(socket.SHUT_RDWR)
