"""
Test a daemon that embeds lightd_sync: a live reference remote and the file transport's log.

With lightd-sync installed, pytest finds two fixtures (a ``pytest11`` plugin,
:mod:`lightd_sync._pytest_plugin`):

``lightd_remote``
    A :class:`LightdRemote` serving on 127.0.0.1 for the test, stopped after it.
``lightd_file_sync``
    A :class:`~lightd_sync.SyncEngine` on the file transport in ``tmp_path``,
    closed after the test; read what it wrote with :func:`read_events`.

.. code-block:: python

    from lightd_sync import SyncEngine

    def test_my_daemon_reports_ready(lightd_remote):
        with SyncEngine(lightd_remote.config()) as engine:
            run_my_daemon_install(engine, "s1")        # calls engine.update(...)
            lightd_remote.wait_for("s1", "ready")
        assert ["installing", "ready"] == [u["status"] for u in lightd_remote.updates]

Everything here works without pytest too (``with LightdRemote() as remote:``
in a unittest), and importing this module never imports pytest.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import io
import json
import math
import os
import secrets
import threading
import time
from collections.abc import Iterable
from http import HTTPStatus
from types import TracebackType
from typing import TYPE_CHECKING, Any, Optional, Union

from ._config import RemoteConfig
from ._model import Status, parse_status
from ._server.http import StartResponse, WSGIApplication, WSGIEnvironment, WsgiServer, serve
from ._testkit import RecordingTransport, TestingMode, set_testing

if TYPE_CHECKING:
    from .receiver import ReceiverApp

__all__ = ["LightdRemote", "RecordingTransport", "TestingMode", "read_events", "set_testing"]

_SHOWN = 50  # updates listed at most in a wait_for failure


def read_events(path: Union[str, os.PathLike[str]]) -> list[dict[str, Any]]:
    """
    Return the bodies the file transport logged to *path*, oldest first.

    Each is the dict the HTTP transport would have POSTed, e.g.
    ``{"event": "update", "server": "s1", "status": "ready"}``. Call
    :meth:`~lightd_sync.SyncEngine.flush` first: delivery is asynchronous. A
    file that does not exist yet holds no events; a last line still being
    written is left out.

    Raises:
        ValueError: A line is not a record of the file transport.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.readlines()
    except FileNotFoundError:
        return []
    bodies = []
    for number, line in enumerate(lines, 1):
        if not line.endswith("\n"):
            break  # being appended right now
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not (isinstance(record, dict) and isinstance(record.get("body"), dict)):
            raise ValueError(f"{os.fspath(path)}:{number}: not a record of the file transport")
        bodies.append(record["body"])
    return bodies


def _matches(body: dict[str, Any], server: str, status: Status) -> bool:
    if body.get("server") != server:
        return False
    return body.get("status") == status.value or (
        status is Status.FAILED and body.get("error") is not None
    )


#: The largest ``POST /updates`` body the test remote takes.
_MAX_BATCH_BODY = 16 * 1024 * 1024
#: The largest ``batch.max`` the protocol allows.
_MOST_BATCH = 10_000
#: Statuses :meth:`LightdRemote.refuse_batches` may answer: the spec's "no batches after all".
_REFUSALS = (404, 405, 415, 501)


def _json_answer(start_response: StartResponse, status: int, error: str) -> Iterable[bytes]:
    body = json.dumps({"success": False, "error": error}).encode("ascii")
    start_response(
        f"{status} {HTTPStatus(status).phrase}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


class _Faults:
    """
    WSGI middleware around the receiver: fault switches, and a record of accepted updates.

    Thread-safe: the server calls it from its worker threads while the test
    flips switches and reads the record.
    """

    def __init__(self, app: WSGIApplication, max_body: int) -> None:
        self._app = app
        self._max_body = max_body
        # Guards every attribute below but stopping; _changed is notified when the
        # record (_updates, _billing) grows.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._updates: list[dict[str, Any]] = []
        self._billing: list[dict[str, Any]] = []
        self._batch_sizes: list[int] = []
        self._event_ids: set[tuple[str, str, str]] = set()
        self._fail_left = 0
        self._fail_status = 500
        self._delay = 0.0
        self._down = False
        self._offer: Optional[int] = None  # batch.max offered in /health; None: no offer
        self._most_offered = 0  # the largest offer ever made: a batch beyond it gets 413
        self._refuse_batches: Optional[int] = None  # status every POST /updates gets, if set
        self.stopping = threading.Event()  # set on stop: delayed requests end at once

    # -- switches (called by LightdRemote) ------------------------------------

    def set_failures(self, n: int, status: int) -> None:
        with self._lock:
            self._fail_left, self._fail_status = n, status

    def set_delay(self, seconds: float) -> None:
        with self._lock:
            self._delay = seconds

    def set_down(self, down: bool) -> None:
        with self._lock:
            self._down = down

    def set_offer(self, most: Optional[int]) -> None:
        with self._lock:
            self._offer = most
            self._most_offered = max(self._most_offered, most or 0)

    def set_batch_refusal(self, status: Optional[int]) -> None:
        with self._lock:
            self._refuse_batches = status

    def updates(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(body) for body in self._updates]

    def billing(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(body) for body in self._billing]

    def batch_sizes(self) -> list[int]:
        with self._lock:
            return list(self._batch_sizes)

    def wait(
        self, server: str, status: Optional[Status], timeout: float
    ) -> Optional[dict[str, Any]]:
        """The first update (or, for *status* None, billing event) of *server*; None at timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                if status is None:
                    found = [b for b in self._billing if b.get("server") == server]
                else:
                    found = [b for b in self._updates if _matches(b, server, status)]
                if found:
                    return dict(found[0])
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)

    # -- the WSGI application ----------------------------------------------------

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        with self._lock:
            delay = self._delay
        if delay > 0 and self.stopping.wait(delay):
            return _json_answer(start_response, 503, "the test remote is stopping")
        method, path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")
        is_update = method == "POST" and path == "/update"
        is_batch = method == "POST" and path == "/updates"
        with self._lock:
            if self._down:
                fault: Optional[tuple[int, str]] = (503, "down (lightd_remote.down())")
            elif is_batch and self._refuse_batches is not None:
                fault = (self._refuse_batches, "no batches here (lightd_remote.refuse_batches())")
            elif (is_update or is_batch) and self._fail_left > 0:
                self._fail_left -= 1
                fault = (self._fail_status, "injected failure (lightd_remote.fail_next())")
            else:
                fault = None
            offer, most_offered = self._offer, self._most_offered
        if fault is not None:
            return _json_answer(start_response, *fault)
        if method == "GET" and path == "/health":
            return self._health(environ, start_response, offer)
        if not (is_update or is_batch):
            return self._app(environ, start_response)
        body = self._read_body(environ, self._max_body)
        if is_batch and not most_offered:
            # As a remote of Lightd's own: no such route (a client falls back to /update).
            return _json_answer(start_response, 404, "no batches offered here (batch_max=None)")
        if is_batch and body is not None:
            items = _items(body)
            if items is not None and len(items) > most_offered:
                # More than any offer ever made: the client is wrong.
                return _json_answer(
                    start_response,
                    413,
                    f"updates: {len(items)} items; this remote never offered more than "
                    f"{most_offered} (lightd_remote.offer_batches())",
                )
        answered: list[str] = []

        def remember_status(status: str, headers: Any, exc_info: Any = None) -> Any:
            answered.append(status)
            return start_response(status, headers, exc_info)

        result = self._app(environ, remember_status)
        if body is None or not (answered and answered[0].startswith("2")):
            return result
        if is_update:
            self._record([(body, environ.get("HTTP_X_LIGHTD_EVENT_ID"))])
            return result
        answer = _drain(result)
        self._record_batch(body, answer)
        return [answer]

    def _health(
        self, environ: WSGIEnvironment, start_response: StartResponse, offer: Optional[int]
    ) -> Iterable[bytes]:
        """The receiver's health answer, with the batch offer this remote is set to (or none)."""
        captured: list[tuple[str, list[tuple[str, str]]]] = []

        def keep(status: str, headers: Any, exc_info: Any = None) -> Any:
            captured.append((status, list(headers)))
            return lambda data: None

        answer = _drain(self._app(environ, keep))
        status, headers = captured[0]
        try:
            doc = json.loads(answer)
        except ValueError:
            doc = None
        if status.startswith("200") and isinstance(doc, dict):
            doc.pop("batch", None)
            if offer is not None:
                doc["batch"] = {"max": offer}
            answer = json.dumps(doc, separators=(",", ":")).encode("ascii")
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(answer))))
        start_response(status, headers)
        return [answer]

    def _read_body(self, environ: WSGIEnvironment, most: int) -> Optional[bytes]:
        """Read the body for the record and hand the receiver a copy; None if it is not sane."""
        raw = str(environ.get("CONTENT_LENGTH") or "").strip()
        if not (raw.isascii() and raw.isdigit()) or int(raw) > most:
            return None  # the receiver answers 411/400/413 by itself
        length, chunks = int(raw), []
        while length > 0:
            try:
                chunk = environ["wsgi.input"].read(length)
            except OSError:
                chunk = b""
            if not chunk:
                break  # cut short: the receiver answers 400 on what is left
            chunks.append(chunk)
            length -= len(chunk)
        body = b"".join(chunks)
        environ["wsgi.input"] = io.BytesIO(body)
        return body

    def _record_batch(self, body: bytes, answer: bytes) -> None:
        """Record the items of an answered ``POST /updates`` that the receiver accepted."""
        items = _items(body)
        try:
            doc = json.loads(answer)
        except ValueError:
            return
        if not (isinstance(items, list) and isinstance(doc, dict) and doc.get("success") is True):
            return
        results = doc.get("results")
        if results is None:
            accepted = items
        elif isinstance(results, list) and len(results) == len(items):
            accepted = [
                item
                for item, result in zip(items, results)
                if isinstance(result, dict) and result.get("success") is True
            ]
        else:
            return  # a broken answer: the client counts the whole batch failed
        kept = []
        for item in accepted:
            if isinstance(item, dict):
                copy = dict(item)
                event_id = copy.pop("event_id", None)
                kept.append((copy, event_id if isinstance(event_id, str) else None))
        with self._lock:
            self._batch_sizes.append(len(items))
        self._record(kept)

    def _record(self, bodies: list[tuple[Any, Optional[str]]]) -> None:
        """Keep each accepted body (bytes or a parsed dict) with its event id, once."""
        docs = []
        for body, event_id in bodies:
            try:
                doc = json.loads(body) if isinstance(body, bytes) else body
            except ValueError:
                continue
            if isinstance(doc, dict):
                docs.append((doc, event_id))
        if not docs:
            return
        with self._lock:
            for doc, event_id in docs:
                billing = doc.get("event") == "billing"
                if event_id is not None:
                    key = ("billing" if billing else "update", str(doc.get("server")), event_id)
                    if key in self._event_ids:
                        continue  # a re-sent event the receiver stored once already
                    self._event_ids.add(key)
                (self._billing if billing else self._updates).append(doc)
            self._changed.notify_all()


def _items(body: bytes) -> Optional[list[Any]]:
    """The ``updates`` list of a ``POST /updates`` body; None: the receiver says what is wrong."""
    try:
        items = json.loads(body).get("updates")
    except (ValueError, AttributeError, RecursionError):
        return None
    return items if isinstance(items, list) else None


def _drain(result: Iterable[bytes]) -> bytes:
    """The whole answer of a WSGI application (closed as WSGI asks)."""
    try:
        return b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


def _check_batch_max(most: object) -> int:
    if type(most) is not int or not 1 <= most <= 10_000:
        raise ValueError(f"batch_max must be a whole number from 1 to 10000, got {most!r}")
    return most


class LightdRemote:
    """
    A live reference remote (:mod:`lightd_sync.receiver`) on 127.0.0.1, for tests.

    It listens on a free port with a random token, keeps what arrives in
    memory, and has no rate limit. Start it with :meth:`start` or ``with``;
    :meth:`stop` ends every thread it started. Thread-safe.

    Fault switches act on the answers, not the network: the port stays open
    and nothing is slow unless :meth:`delay` says so.

    **Batches.** With ``batch_max=N`` (or after :meth:`offer_batches`) its
    health answer offers batches of up to N updates (``"batch": {"max": N}``)
    and a client may send them as ``POST /updates``; the items it accepts are
    recorded one by one, in :attr:`updates` and :attr:`billing`, as single
    updates are. :meth:`withdraw_batches` takes the offer back and
    :meth:`refuse_batches` makes ``POST /updates`` answer 404 (a remote that
    offered what it cannot do), for tests of a client's fallback.

    Args:
        token: The token to require; default ``lightd_`` and 32 random hex digits.
        host: The address to listen on.
        batch_max: The ``batch.max`` to offer in the health answer, from 1 to
            10,000; ``None`` (the default) offers no batches, as Lightd's own
            remotes do, and answers ``POST /updates`` 404 until an offer is
            made. A batch larger than any offer made gets 413.

    .. versionchanged:: 0.2.0 ``batch_max``; error updates of any error value
       and billing events (:attr:`billing`) are recorded.

    Attributes:
        token: The token every request must carry.
        app: The receiver's :class:`~lightd_sync.receiver.ReceiverApp`
            (``app.store`` holds what it stored), once started.
    """

    def __init__(
        self,
        *,
        token: Optional[str] = None,
        host: str = "127.0.0.1",
        batch_max: Optional[int] = None,
    ) -> None:
        self.token = token if token is not None else f"lightd_{secrets.token_hex(16)}"
        self._host = host
        self._batch_max = None if batch_max is None else _check_batch_max(batch_max)
        self.app: Optional[ReceiverApp] = None
        self._faults: Optional[_Faults] = None
        self._server: Optional[WsgiServer] = None

    def start(self) -> LightdRemote:
        """Start serving; return self. Raises RuntimeError if already started."""
        if self._server is not None:
            raise RuntimeError("this LightdRemote was already started")
        from .receiver import create_app

        # The receiver takes the largest batches any offer may name; the middleware offers.
        app = create_app(
            self.token, rate=math.inf, batch_max=_MOST_BATCH, max_batch_body=_MAX_BATCH_BODY
        )
        faults = _Faults(app, app.max_body)
        faults.set_offer(self._batch_max)
        try:
            # Delayed requests hold a worker each: enough for an engine's lanes.
            server = serve(faults, self._host, 0, threads=32).start()
        except BaseException:
            app.close()
            raise
        self.app, self._faults, self._server = app, faults, server
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """
        Stop serving, end every thread (at most about *timeout* seconds) and drop the data.

        Returns:
            True if every thread of the server ended. Calling it again does nothing more.
        """
        if self._server is None or self._faults is None or self.app is None:
            return True
        self._faults.stopping.set()
        ended = self._server.stop(timeout)
        self.app.close()
        return ended

    def __enter__(self) -> LightdRemote:
        return self.start()

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self._server.url if self._server is not None else "not started"
        return f"<LightdRemote {where}>"

    def _running(self) -> tuple[WsgiServer, _Faults]:
        if self._server is None or self._faults is None:
            raise RuntimeError("start the LightdRemote first (start() or with)")
        return self._server, self._faults

    @property
    def url(self) -> str:
        """The base URL to configure, e.g. ``http://127.0.0.1:38117``."""
        return self._running()[0].url

    def config(self, **overrides: Any) -> RemoteConfig:
        """
        Return a :class:`~lightd_sync.RemoteConfig` that syncs to this remote.

        ``enabled``, ``url`` and ``token`` are set; *overrides* set any key,
        e.g. ``config(timeout=0.5, retries=0, transport="requests")``.

        Raises:
            ConfigError: An override is invalid.
        """
        values: dict[str, Any] = {"enabled": True, "url": self.url, "token": self.token}
        values.update(overrides)
        return RemoteConfig(**values)

    @property
    def updates(self) -> list[dict[str, Any]]:
        """
        The bodies of the updates the remote accepted, in the order it answered them.

        Status and error updates only (billing events are in :attr:`billing`),
        whether they came alone or as items of a batch (then without their
        ``event_id``). A copy. An update resent with an ``X-Lightd-Event-Id`` already seen
        for its server (a retry whose answer was lost) is listed once, as the
        receiver stores it once; refused requests (faults) are not listed.
        """
        return self._running()[1].updates()

    @property
    def billing(self) -> list[dict[str, Any]]:
        """
        The billing events the remote accepted, in the order it answered them.

        A copy, like :attr:`updates` (which never lists them): each is the body
        as sent, ``{"event": "billing", "server": ..., "memory_gb": ..., ...}``.

        .. versionadded:: 0.2.0
        """
        return self._running()[1].billing()

    @property
    def batch_sizes(self) -> list[int]:
        """
        How many items each ``POST /updates`` it answered carried, in order.

        .. versionadded:: 0.2.0
        """
        return self._running()[1].batch_sizes()

    def wait_for_billing(self, server: str, timeout: float = 5.0) -> dict[str, Any]:
        """
        Wait until a billing event of *server* has arrived; return the first one's body.

        Raises:
            AssertionError: None arrived within *timeout* seconds; the message
                lists the billing events that did arrive.

        .. versionadded:: 0.2.0
        """
        found = self._running()[1].wait(server, None, timeout)
        if found is not None:
            return found
        raise self._not_arrived(f"no billing event of {server!r}", timeout, self.billing)

    def _not_arrived(
        self, what: str, timeout: float, arrived: list[dict[str, Any]]
    ) -> AssertionError:
        shown = arrived[-_SHOWN:]
        more = f" (the last {_SHOWN} of {len(arrived)})" if len(arrived) > _SHOWN else ""
        listing = "\n".join(f"  {json.dumps(body)}" for body in shown) or "  nothing"
        return AssertionError(
            f"{what} arrived at {self.url} within {timeout:g} s; arrived{more}:\n{listing}"
        )

    def offer_batches(self, most: int) -> None:
        """
        Offer batches of up to *most* updates from the next health answer on.

        Raises:
            ValueError: *most* is not a whole number from 1 to 10,000.

        .. versionadded:: 0.2.0
        """
        self._running()[1].set_offer(_check_batch_max(most))

    def withdraw_batches(self) -> None:
        """
        Offer no batches from the next health answer on (``POST /updates`` is still served).

        .. versionadded:: 0.2.0
        """
        self._running()[1].set_offer(None)

    def refuse_batches(self, status: Optional[int] = 404) -> None:
        """
        Answer every ``POST /updates`` with *status* (404, 405, 415 or 501), offer or not.

        The spec's answers for "no batches after all": a client sends the same
        items as single updates. ``refuse_batches(None)`` serves batches again.

        Raises:
            ValueError: *status* is not one of those.

        .. versionadded:: 0.2.0
        """
        if status is not None and (type(status) is not int or status not in _REFUSALS):
            raise ValueError(
                f"status must be one of {', '.join(map(str, _REFUSALS))}, got {status!r}"
            )
        self._running()[1].set_batch_refusal(status)

    def wait_for(
        self, server: str, status: Union[Status, str], timeout: float = 5.0
    ) -> dict[str, Any]:
        """
        Wait until an update of *server* with *status* has arrived; return its body.

        ``"failed"`` also matches error updates, whatever their error value
        (``"error": "failed"``, ``"timeout"``...). The first matching update
        counts, even one that arrived before the call.

        Raises:
            AssertionError: None arrived within *timeout* seconds; the message
                lists what did arrive.
            ValueError: *status* is not ``installing``, ``ready`` or ``failed``.
        """
        wanted = parse_status(status)
        found = self._running()[1].wait(server, wanted, timeout)
        if found is not None:
            return found
        raise self._not_arrived(f"no {wanted.value!r} update of {server!r}", timeout, self.updates)

    def fail_next(self, n: int = 1, status: int = 500) -> None:
        """
        Answer the next *n* ``POST /update`` (or ``POST /updates``) with HTTP *status*.

        Nothing of a failed request is stored: a failed batch fails all its items.

        Health checks are not affected. Replaces any count left from an earlier
        call; ``fail_next(0)`` cancels. Retryable statuses (429, 502, 503,
        504) are retried by the engine.

        Raises:
            ValueError: *n* is negative or *status* is not from 400 to 599.
        """
        if type(n) is not int or n < 0:
            raise ValueError(f"n must be a whole number >= 0, got {n!r}")
        if type(status) is not int or not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {status!r}")
        self._running()[1].set_failures(n, status)

    def delay(self, seconds: float) -> None:
        """
        Make every request (updates and health checks) wait *seconds* before it is handled.

        A delay longer than the client's ``timeout`` makes the request time
        out on the client's side; the remote still handles it afterwards, as
        a slow remote does. ``delay(0)`` ends the delay; :meth:`stop` cuts it short.

        Raises:
            ValueError: *seconds* is negative or not finite.
        """
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
        self._running()[1].set_delay(float(seconds))

    def down(self) -> None:
        """
        Answer every request, health checks included, with ``503 Service Unavailable``.

        The port stays open (a refused connection needs no switch: point a
        config at a port where nothing listens). Nothing is stored while down.
        """
        self._running()[1].set_down(True)

    def up(self) -> None:
        """End :meth:`down`: answer normally again."""
        self._running()[1].set_down(False)
