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
import functools
import os
import socket
import threading
import weakref
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Optional, Union

from .._config import RemoteConfig
from .._exceptions import (
    ConfigError,
    DeliveryError,
    RemoteTimeoutError,
    RemoteUnreachableError,
)
from .._logutil import get_logger
from .._model import Update
from .base import Transport
from .protocol import (
    encode_body,
    health_verdict,
    request_headers,
    scrubbed,
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

    It remembers the socket of every connection its pools open, so that
    :meth:`RequestsTransport.close` can shut them down and so wake a request
    blocked on a silent remote (in the TLS handshake or waiting for the
    answer), as the urllib3 transport's ``close`` does.
    """
    base: Any = _requests().adapters.HTTPAdapter
    import urllib3

    from ._pools import _UnverifiedHTTPSPool

    class OwnAdapter(base):  # type: ignore[misc]
        def __init__(self, *, maxsize: int, verify: bool) -> None:
            # Guards _lightd_closed and _lightd_socks against close() walking them.
            self._lightd_lock = threading.Lock()
            self._lightd_closed = False
            self._lightd_socks: weakref.WeakSet[socket.socket] = weakref.WeakSet()
            self._lightd_pools = self._pool_classes(verify)
            # max_retries=0: urllib3 retries nothing; the engine decides about retries.
            super().__init__(pool_maxsize=maxsize, max_retries=0, pool_block=False)

        def _pool_classes(self, verify: bool) -> dict[str, Any]:
            adapter = self

            class Tracked:
                """Connection mixin: hand every new socket to the adapter."""

                def _new_conn(self) -> socket.socket:
                    sock: socket.socket = super()._new_conn()  # type: ignore[misc]
                    adapter.lightd_track(sock)
                    return sock

            class Conn(Tracked, urllib3.connection.HTTPConnection):
                pass

            class TLSConn(Tracked, urllib3.connection.HTTPSConnection):
                pass

            https_base = urllib3.HTTPSConnectionPool if verify else _UnverifiedHTTPSPool

            class Pool(urllib3.HTTPConnectionPool):
                ConnectionCls = Conn

            class TLSPool(https_base):  # type: ignore[misc,valid-type]
                ConnectionCls = TLSConn

            return {"http": Pool, "https": TLSPool}

        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = dict(self._lightd_pools)

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
            manager = super().proxy_manager_for(proxy, **kwargs)
            if not proxy.lower().startswith("socks"):  # SOCKS managers have pools of their own
                manager.pool_classes_by_scheme = dict(self._lightd_pools)
            return manager

        def lightd_track(self, sock: socket.socket) -> None:
            """Remember *sock*; shut it down at once if the adapter was closed meanwhile."""
            with self._lightd_lock:
                self._lightd_socks.add(sock)
                closed = self._lightd_closed
            if closed:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        def lightd_sockets(self) -> list[socket.socket]:
            """The sockets of this adapter's connections that are still open."""
            with self._lightd_lock:
                socks = list(self._lightd_socks)
            return [sock for sock in socks if sock.fileno() != -1]

        def lightd_close(self, *, shutdown: bool) -> None:
            """
            Close every connection: with *shutdown*, wake the threads blocked on them.

            Without, only this process's copies of the sockets are closed (a
            forked child's, whose parent still talks on them).
            """
            with self._lightd_lock:
                self._lightd_closed = True
                socks = list(self._lightd_socks)
            for sock in socks:
                with contextlib.suppress(OSError):  # already closed by its own thread
                    if shutdown:
                        sock.shutdown(socket.SHUT_RDWR)
                    else:
                        sock.close()

    return OwnAdapter


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """*exc* and every exception it wraps (arguments, ``reason``, cause and context)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [*current.args, getattr(current, "reason", None)]
        linked += [current.__cause__, current.__context__]
        todo.extend(e for e in linked if isinstance(e, BaseException))


def _os_reason(exc: BaseException, wrappers: tuple[type[BaseException], ...]) -> str:
    """The operating system's words for a network failure, found in the cause chain."""
    for current in _causes(exc):
        if isinstance(current, OSError) and not isinstance(current, wrappers):
            return current.strerror or str(current) or type(current).__name__
    return type(exc).__name__


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
        self._scrub = config.token
        self._timeout = config.timeout
        self._auth = _BearerAuth(config.token)
        self._post_headers = request_headers(config.token, post=True)
        self._get_headers = request_headers(config.token, post=False)
        self._send_kw: dict[str, Any] = {
            "timeout": (config.timeout, config.timeout),
            "allow_redirects": False,
            "verify": self._verify_setting(config),
            "cert": self._cert_setting(config),
            "proxies": {"http": config.proxy, "https": config.proxy} if config.proxy else None,
        }
        self._proxy = config.proxy
        self._owned = session is None
        self._maxsize = config.workers + 1
        self._verify = config.verify
        # (pid, session, own adapter or None): swapped whole, so a request reads a matching set.
        self._state: tuple[int, requests.Session, Any] = (
            (os.getpid(), session, None) if session is not None else self._build()
        )
        self._close_lock = threading.Lock()  # one close at a time; guards setting _closed
        self._closed = False
        self._warn_at_creation(config, session)

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
        adapter = _own_adapter_class()(maxsize=self._maxsize, verify=self._verify)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return os.getpid(), session, adapter

    def _warn_at_creation(self, config: RemoteConfig, session: Optional[requests.Session]) -> None:
        unverified = None
        if not config.verify:
            unverified = "remote.verify is false"
        elif session is not None and session.verify is False:
            unverified = "the session has verify=False"
        warn_about_security(self.url, unverified=unverified, proxy=self._proxy)

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
        # A forked child: the inherited connections are the parent's too. Forget
        # them (close() of our copies, never shutdown()) and start a pool of our own.
        fresh = self._build()
        self._state = fresh
        if state[2] is not None:
            state[2].lightd_close(shutdown=False)
        return fresh

    def _request(
        self, method: str, path: str, body: Optional[bytes], headers: dict[str, str]
    ) -> Any:
        what = f"{method} {self.url}{path}"
        if self._closed:
            raise RemoteUnreachableError(f"{what}: the transport is closed")
        lib = _requests()
        session = self._current()[1]
        try:
            return session.request(
                method,
                self.url + path,
                data=body,
                headers=headers,
                auth=self._auth,
                **self._send_kw,
            )
        except lib.exceptions.Timeout as exc:
            if self._closed:
                raise self._unreachable(what, exc, lib) from exc
            raise RemoteTimeoutError(
                f"{what}: no answer within {self._timeout:g} s", retryable=True
            ) from exc
        except Exception as exc:
            import urllib3

            if not isinstance(exc, (OSError, urllib3.exceptions.HTTPError)):
                raise  # a bug (ours, requests', or a session hook's): the engine logs it
            raise self._unreachable(what, exc, lib) from exc

    def _unreachable(self, what: str, exc: BaseException, lib: ModuleType) -> DeliveryError:
        if self._closed:
            return RemoteUnreachableError(f"{what}: the transport was closed", retryable=False)
        import urllib3

        wrappers = (lib.exceptions.RequestException, urllib3.exceptions.HTTPError)
        reason = _os_reason(exc, wrappers)
        if isinstance(exc, lib.exceptions.SSLError):
            reason = f"TLS failed: {reason}"
            if "CERTIFICATE_VERIFY_FAILED" in reason and "mismatch" not in reason:
                reason += "; if the remote's CA is private, set remote.ca_bundle"
        elif isinstance(exc, lib.exceptions.ProxyError):
            reason = f"the proxy failed: {reason}"
        elif any(isinstance(e, urllib3.exceptions.NewConnectionError) for e in _causes(exc)):
            reason = f"cannot connect: {reason}"
        else:
            reason = f"connection failed: {reason}"
        return RemoteUnreachableError(
            f"{what}: {reason}".replace(self._scrub, "<token>"), retryable=True
        )

    def _judge(self, verdict: Any, response: Any) -> None:
        status, content = response.status_code, response.content
        headers: Mapping[str, str] = response.headers
        response.close()
        try:
            verdict(status, content, headers)
        except DeliveryError as exc:
            raise scrubbed(exc, self._scrub) from None

    def send(self, update: Update) -> None:
        """POST *update* to ``{url}/update``; raise a DeliveryError unless accepted."""
        headers = self._post_headers
        if update.event_id is not None:
            headers = {**headers, "X-Lightd-Event-Id": update.event_id}
        response = self._request("POST", "/update", encode_body(update), headers)
        self._judge(update_verdict, response)

    def check_health(self) -> None:
        """GET ``{url}/health``; raise a DeliveryError unless it answers as active."""
        response = self._request("GET", "/health", None, self._get_headers)
        self._judge(health_verdict, response)

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
        if adapter is None:
            return
        # Never shut down sockets a parent process owns: a child only closes its copies.
        adapter.lightd_close(shutdown=pid == os.getpid())
        session.close()
