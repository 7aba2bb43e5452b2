"""
The HTTP transport on ``requests``: for daemons that already hold a configured ``Session``.

Same protocol, same error classes, same answer rules as the urllib3
transport: what is sent and how an answer is judged come from
:mod:`.protocol`; only the HTTP client differs. ``requests`` is an optional
dependency (``pip install lightd-sync[requests]``), imported when a transport
is built, never when this module is.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import socket
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from .._config import RemoteConfig
from .._exceptions import ConfigError, RemoteUnreachableError
from .._forksafe import after_fork_in_child
from .._logutil import get_logger
from .._model import Event
from ._deadline import (
    MAX_ANSWER,
    Answer,
    AnswerTooLargeError,
    DeadlineExceededError,
    Ticket,
    Watchdog,
)
from ._errors import Kinds, delivery_error
from .base import Transport
from .protocol import (
    encode_body,
    health_verdict,
    judge,
    request_headers,
    update_verdict,
    warn_about_security,
)

if TYPE_CHECKING:
    from types import ModuleType

    import requests

__all__ = ["RequestsTransport"]

log = get_logger("transport")

_MISSING = "remote.transport: 'requests' needs `pip install lightd-sync[requests]`"


def _requests() -> ModuleType:
    """Import ``requests`` (once; later calls are a dict lookup), or say how to install it."""
    try:
        import requests
        import requests.adapters
    except ImportError as exc:
        raise ConfigError(_MISSING) from exc
    return requests


class _BearerAuth:
    """
    Set ``Authorization: Bearer <token>`` as the request's auth.

    Given per request, it takes precedence over the session's ``auth`` and
    over ``~/.netrc``, either of which would otherwise replace our header.
    """

    __slots__ = ("_value",)

    def __init__(self, token: str) -> None:
        self._value = f"Bearer {token}"

    def __call__(self, request: Any) -> Any:
        request.headers["Authorization"] = self._value
        return request

    def __repr__(self) -> str:
        return "<bearer token>"


@functools.cache
def _own_adapter_class() -> Any:
    """
    The adapter of a session the transport builds itself (defined on first use: it needs requests).

    Its connections (classes of urllib3's public API) attach themselves to the
    request's :class:`~._deadline.Ticket`, so that the transport's watchdog
    can cut off a request at its deadline, and are remembered, so that
    :meth:`RequestsTransport.close` can shut them down and so wake a request
    blocked on a silent remote (in the TLS handshake or waiting for the
    answer), as the urllib3 transport's ``close`` does.
    """
    base: Any = _requests().adapters.HTTPAdapter
    import urllib3

    class OwnAdapter(base):  # type: ignore[misc]
        def __init__(self, *, maxsize: int, verify: bool, watch: Callable[[Any], None]) -> None:
            self._lightd_reset()
            self._lightd_pools = self._pool_classes(verify, watch)
            # max_retries=0: urllib3 retries nothing; the engine decides about retries.
            super().__init__(pool_maxsize=maxsize, max_retries=0, pool_block=False)

        def _lightd_reset(self) -> None:
            # Guards _lightd_closed and _lightd_conns against close() walking them.
            self._lightd_lock = threading.Lock()
            self._lightd_closed = False
            self._lightd_conns: weakref.WeakSet[Any] = weakref.WeakSet()

        def _pool_classes(self, verify: bool, watch: Callable[[Any], None]) -> dict[str, Any]:
            adapter = self

            class Tracked:
                """Connection mixin: watched by the request's deadline, known to close()."""

                lightd_connecting = False

                def connect(self) -> None:
                    watch(self)
                    self.lightd_connecting = True  # close() waits a moment for its socket
                    try:
                        adapter.lightd_track(self)  # before: close() may cut the TLS handshake
                        super().connect()  # type: ignore[misc]
                    finally:
                        self.lightd_connecting = False
                    adapter.lightd_track(self)  # and after: a close() that came meanwhile

                def request(self, *args: Any, **kwargs: Any) -> Any:
                    watch(self)  # a kept-alive connection: no connect() this time
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

        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = dict(self._lightd_pools)

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
            manager = super().proxy_manager_for(proxy, **kwargs)
            if not proxy.lower().startswith("socks"):  # SOCKS managers have pools of their own
                manager.pool_classes_by_scheme = dict(self._lightd_pools)
            return manager

        def lightd_track(self, conn: Any) -> None:
            """Remember *conn*; shut it down at once if the adapter was closed meanwhile."""
            with self._lightd_lock:
                self._lightd_conns.add(conn)
                closed = self._lightd_closed
            if closed:
                _shut(conn.sock)
                raise ConnectionAbortedError(errno.ECONNABORTED, "the transport was closed")

        def lightd_sockets(self) -> list[socket.socket]:
            """The sockets of this adapter's connections that are still open."""
            with self._lightd_lock:
                conns = list(self._lightd_conns)
            socks = [getattr(conn, "sock", None) for conn in conns]
            return [sock for sock in socks if sock is not None and sock.fileno() != -1]

        def lightd_close(self, *, shutdown: bool) -> None:
            """
            Close every connection: with *shutdown*, wake the threads blocked on them.

            Without, only this process's copies of the sockets are closed (a
            forked child's, whose parent still talks on them).
            """
            with self._lightd_lock:
                self._lightd_closed = True
                conns = list(self._lightd_conns)
            for conn in conns:
                sock = getattr(conn, "sock", None)
                if shutdown:
                    _shut(sock)
                elif sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
            if not shutdown:
                return
            # urllib3 stores a new connection's socket only once its TCP connect
            # returned, just before the TLS handshake: a connection caught in
            # between has no socket to shut down yet. Wait a moment for it.
            deadline = time.monotonic() + _STORE_WAIT
            waiting = [c for c in conns if c.lightd_connecting and getattr(c, "sock", None) is None]
            while waiting and time.monotonic() < deadline:
                time.sleep(0.002)
                for conn in list(waiting):
                    sock = getattr(conn, "sock", None)
                    if sock is not None or not conn.lightd_connecting:
                        _shut(sock)
                        waiting.remove(conn)

        def lightd_after_fork_in_child(self) -> None:
            """In a forked child: forget the parent's connections (closing only our copies)."""
            conns = list(self._lightd_conns)
            self._lightd_reset()  # the parent may have held the lock
            self._lightd_closed = True
            for conn in conns:
                sock = getattr(conn, "sock", None)
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()

    return OwnAdapter


#: How long close() waits for a connection in progress to store its socket.
_STORE_WAIT = 0.2


def _shut(sock: Optional[socket.socket]) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed by its own thread
            sock.shutdown(socket.SHUT_RDWR)


class RequestsTransport(Transport):
    """
    Send updates with ``POST {url}/update`` and check ``GET {url}/health``, on ``requests``.

    The same protocol, errors and answer rules as :class:`~lightd_sync.HttpTransport`;
    use it when the daemon already configured a :class:`requests.Session`
    (proxies, client certificates, a corporate CA, adapters) or tests with
    ``responses``, which only intercepts ``requests``. Select it with
    ``"transport": "requests"`` (a default session), or build it with your
    session and hand it to :class:`~lightd_sync.SyncEngine` (``transport=``).

    Every request has ``timeout`` seconds to connect and as many to answer,
    and redirects are never followed (they would carry the token elsewhere).
    The token is sent as the request's ``auth``, so neither the session's
    ``auth`` nor ``~/.netrc`` can replace it; it is never logged nor shown.
    ``verify: false``, ``ca_bundle``, ``client_cert``/``client_key`` and
    ``proxy`` override the session's settings when set; unset, the session's
    own ones (and, if it trusts the environment, ``REQUESTS_CA_BUNDLE``,
    ``HTTPS_PROXY``, ``NO_PROXY``) apply. Nothing of a given session is changed.

    Failures become :class:`~lightd_sync.DeliveryError` subclasses, as with
    the urllib3 transport; unlike it, a request cut off because the remote
    closed an idle kept-alive connection is not resent at once: the engine's
    retries (``retries``) cover it.

    A session built here has a pool of ``workers + 1`` keep-alive
    connections; :meth:`close` closes it and wakes a request blocked on a
    silent remote, and a forked child builds its own. A given session is
    yours: :meth:`close` leaves it open (a request blocked in it ends by its
    timeout), and after a ``fork`` it is yours to replace.

    Args:
        config: The remote config; ``url``, ``token``, ``timeout``, ``workers``
            and the TLS and proxy keys are used.
        session: The session to send with; ``None`` builds one.

    Raises:
        ConfigError: ``requests`` is not installed; ``url`` or ``token`` is
            missing; ``ca_bundle``, ``client_cert`` or ``client_key`` cannot be used.
        TypeError: *session* is not a :class:`requests.Session`.

    .. versionadded:: 0.1.0
    """

    name = "requests"
    talks_http = True

    def __init__(self, config: RemoteConfig, *, session: Optional[requests.Session] = None) -> None:
        lib = _requests()
        if session is not None and not isinstance(session, lib.Session):
            raise TypeError(f"session must be a requests.Session, not {type(session).__name__}")
        for key in ("url", "token"):
            if getattr(config, key) is None:
                raise ConfigError(f"remote.{key}: missing; the requests transport needs it")
        assert config.url is not None
        assert config.token is not None
        if config.ca_bundle is not None or config.client_cert is not None:
            from ._pools import tls_context

            tls_context(config)  # a missing, broken or encrypted file is a ConfigError now
        self.url = config.url
        self._token = config.token
        self._timeout = config.timeout
        self._auth = _BearerAuth(config.token)
        # identity: a compressed answer could grow far past MAX_ANSWER once decoded.
        self._post_headers = {**request_headers(config.token, post=True), **_IDENTITY}
        self._get_headers = {**request_headers(config.token, post=False), **_IDENTITY}
        self._send_kw: dict[str, Any] = {
            "timeout": (config.timeout, config.timeout),
            "allow_redirects": False,
            "stream": True,  # the body is read here: up to MAX_ANSWER, by the deadline
            "verify": self._verify_setting(config),
            "cert": self._cert_setting(config),
            "proxies": {"http": config.proxy, "https": config.proxy} if config.proxy else None,
        }
        self._proxy = config.proxy
        self._owned = session is None
        self._maxsize = config.workers + 1
        self._verify = config.verify
        self._watchdog = Watchdog("lightd-sync-deadline")
        self._local = threading.local()  # .ticket: the calling thread's request, for its conns
        # (pid, session, own adapter or None): swapped whole, so a request reads a matching set.
        self._state: tuple[int, requests.Session, Any] = (
            (os.getpid(), session, None) if session is not None else self._build()
        )
        self._close_lock = threading.Lock()  # one close at a time; guards setting _closed
        self._closed = False
        after_fork_in_child(self._after_fork_in_child)
        self._warn_at_creation(config, session)

    def _kinds(self) -> Kinds:
        lib = _requests()
        import urllib3

        x, u3 = lib.exceptions, urllib3.exceptions
        return Kinds(
            timeout=(x.Timeout, u3.ReadTimeoutError),
            tls=(x.SSLError, u3.SSLError),
            proxy=(x.ProxyError, u3.ProxyError),
            connect=(u3.NewConnectionError,),
            wrappers=(x.RequestException, u3.HTTPError),
        )

    def _watch(self, conn: Any) -> None:
        """Attach *conn* to the calling thread's request: cut off at its deadline."""
        self._watchdog.attach(getattr(self._local, "ticket", None), conn)

    def _after_fork_in_child(self) -> None:
        self._close_lock = threading.Lock()  # the parent may have held it
        self._local = threading.local()
        adapter = self._state[2]
        if adapter is not None:
            adapter.lightd_after_fork_in_child()
        if self._owned and not self._closed:
            self._state = self._build()

    @staticmethod
    def _verify_setting(config: RemoteConfig) -> Union[bool, str, None]:
        if not config.verify:
            return False
        return config.ca_bundle  # None: the session's own setting applies

    @staticmethod
    def _cert_setting(config: RemoteConfig) -> Union[str, tuple[str, str], None]:
        if config.client_cert is not None and config.client_key is not None:
            return (config.client_cert, config.client_key)
        return config.client_cert

    def _build(self) -> tuple[int, requests.Session, Any]:
        lib = _requests()
        session = lib.Session()
        adapter = _own_adapter_class()(
            maxsize=self._maxsize, verify=self._verify, watch=self._watch
        )
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return os.getpid(), session, adapter

    def _warn_at_creation(self, config: RemoteConfig, session: Optional[requests.Session]) -> None:
        unverified = None
        if not config.verify:
            unverified = "remote.verify is false"
        elif session is not None and session.verify is False:
            unverified = "the session has verify=False"
        warn_about_security(
            self.url, unverified=unverified, proxy=self._proxy, proxy_url=self._proxy_url()
        )

    def _proxy_url(self) -> Optional[str]:
        """The proxy requests to the remote go through: the config's, the session's or the env's."""
        if self._proxy is not None:
            return self._proxy
        lib = _requests()
        session = self._state[1]
        proxies = dict(session.proxies)
        if session.trust_env:
            proxies = {**lib.utils.get_environ_proxies(self.url), **proxies}
        return lib.utils.select_proxy(self.url, proxies)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        via = f", proxy={self._proxy!r}" if self._proxy is not None else ""
        whose = "own" if self._owned else "given"
        return f"RequestsTransport(url={self.url!r}{via}, session={whose})"

    def __enter__(self) -> RequestsTransport:
        return self

    @property
    def session(self) -> requests.Session:
        """The session requests go out on (the given one, or the one built here)."""
        return self._state[1]

    # -- requests -----------------------------------------------------------

    def _current(self) -> tuple[int, requests.Session, Any]:
        state = self._state
        if state[0] == os.getpid() or not self._owned:
            return state
        # A forked child whose fork hook did not run (uWSGI): the inherited connections
        # are the parent's too. Forget them (never shutdown()) and start a pool of our own.
        fresh = self._build()
        self._state = fresh
        if state[2] is not None:
            state[2].lightd_after_fork_in_child()
        return fresh

    def _request(
        self, method: str, path: str, body: Optional[bytes], headers: dict[str, str]
    ) -> Answer:
        what = f"{method} {self.url}{path}"
        if self._closed:
            raise RemoteUnreachableError(f"{what}: the transport is closed", reason="closed")
        import urllib3

        session = self._current()[1]
        watchdog = self._watchdog
        ticket = watchdog.start(self._timeout)
        self._local.ticket = ticket
        response = None
        try:
            try:
                response = session.request(
                    method,
                    self.url + path,
                    data=body,
                    headers=headers,
                    auth=self._auth,
                    **self._send_kw,
                )
                # A given session's connection too, now that it is known: the body's reads.
                watchdog.attach(ticket, getattr(response.raw, "connection", None))
                answer = _read(response, ticket)
            finally:
                self._local.ticket = None
                watchdog.finish(ticket)
                if response is not None:
                    response.close()
        except (OSError, urllib3.exceptions.HTTPError, AnswerTooLargeError) as exc:
            err = delivery_error(
                exc,
                what,
                token=self._token,
                timeout=self._timeout,
                closed=self._closed,
                timed_out=ticket.expired,
                proxy=self._proxy,
                kinds=self._kinds(),
            )
        else:
            return answer
        raise err  # outside the except block: no __context__ that may hold the token

    def send(self, update: Event) -> None:
        """POST *update* to ``{url}/update``; raise a DeliveryError unless accepted."""
        headers = self._post_headers
        if update.event_id is not None:
            headers = {**headers, "X-Lightd-Event-Id": update.event_id}
        answer = self._request("POST", "/update", encode_body(update), headers)
        judge(update_verdict, "POST /update", answer, self._token)

    def check_health(self) -> None:
        """GET ``{url}/health``; raise a DeliveryError unless it answers as active."""
        answer = self._request("GET", "/health", None, self._get_headers)
        judge(health_verdict, "GET /health", answer, self._token)

    def close(self) -> None:
        """
        Stop sending. A session built here is closed, waking a request blocked in it.

        A given session is left open: it belongs to the caller.
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        pid, session, adapter = self._state
        if adapter is not None:
            # Never shut down sockets a parent process owns: a child only closes its copies.
            adapter.lightd_close(shutdown=pid == os.getpid())
            session.close()
        self._watchdog.close()


_IDENTITY = {"Accept-Encoding": "identity"}


def _read(response: Any, ticket: Ticket) -> Answer:
    """Read *response*'s body, up to MAX_ANSWER bytes and by *ticket*'s deadline."""
    status = response.status_code
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and len(declared) < 20 and int(declared) > MAX_ANSWER:
        raise AnswerTooLargeError(status, int(declared))
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() >= ticket.deadline:
            raise DeadlineExceededError("the request's deadline passed")
        chunk = response.raw.read(_CHUNK, decode_content=True)
        if not chunk:
            break
        size += len(chunk)
        if size > MAX_ANSWER:
            raise AnswerTooLargeError(status, None)
        chunks.append(chunk)
    return Answer(status, b"".join(chunks), response.headers)


_CHUNK = 16 * 1024
