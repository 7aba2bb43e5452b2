"""The HTTP transport, on urllib3: one keep-alive pool to the one remote host."""

from __future__ import annotations

import http.client
import logging
import os
import socket
import ssl
import threading
import weakref
from collections.abc import Iterator, Mapping
from typing import Any, Callable, Optional, Union
from urllib.parse import urlsplit

import urllib3
from urllib3 import exceptions as u3

from .._config import RemoteConfig
from .._exceptions import (
    ConfigError,
    DeliveryError,
    RemoteRejectedError,
    RemoteTimeoutError,
    RemoteUnreachableError,
)
from .._logutil import get_logger, safe_log
from .._model import Update
from . import _direct
from ._pools import Pool, Proxy, choose_proxy, plan_pools
from .base import Transport
from .protocol import (
    encode_body,
    health_verdict,
    request_headers,
    scrubbed,
    update_verdict,
    warn_about_security,
)

__all__ = ["HttpTransport"]

# What a request returns: urllib3's response, or the direct POST's answer.
# (A string: urllib3 1.26 has no BaseHTTPResponse at run time.)
_Response = Union["urllib3.BaseHTTPResponse", _direct.Answer]

log = get_logger("transport")

# Errors that mean a kept-alive connection was already closed by the remote
# when the request went out on it (RemoteDisconnected is a ConnectionResetError).
_IDLE_CLOSE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
_IDLE_CLOSE_TLS = (ssl.SSLEOFError, ssl.SSLZeroReturnError)
# ... unless part of the answer had arrived: then the remote did see the request.
_MID_ANSWER = (http.client.IncompleteRead, u3.IncompleteRead, u3.InvalidChunkLength)
_LOCATION_SHOWN = 200
_Verdict = Callable[[int, bytes, Mapping[str, str]], None]

# Every open transport, so that a forked child can give each a pool of its own.
_LIVE: weakref.WeakSet[HttpTransport] = weakref.WeakSet()
_fork_hook_lock = threading.Lock()  # guards _fork_hook_installed
_fork_hook_installed = False


def _renew_all_in_child() -> None:
    for transport in list(_LIVE):
        transport._renew_pool(in_fork_hook=True)


def _install_fork_hook() -> None:
    global _fork_hook_installed
    with _fork_hook_lock:
        if not _fork_hook_installed and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_renew_all_in_child)
        _fork_hook_installed = True


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """*exc* and every exception it wraps (arguments, ``reason``, cause and context)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [*current.args, getattr(current, "reason", None)]
        linked += [current.__cause__, current.__context__]
        todo.extend(e for e in linked if isinstance(e, BaseException))


def _closed_while_idle(exc: BaseException) -> bool:
    found = list(_causes(exc))
    if any(isinstance(e, _MID_ANSWER) for e in found):
        return False
    return any(isinstance(e, _IDLE_CLOSE + _IDLE_CLOSE_TLS) for e in found)


def _os_reason(exc: BaseException) -> str:
    """The operating system's words for a network failure, found in the cause chain."""
    seen: set[int] = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and not isinstance(current, u3.HTTPError):
            return current.strerror or str(current) or type(current).__name__
        reason = getattr(current, "reason", None)
        current = (
            reason
            if isinstance(reason, BaseException)
            else (current.__cause__ or current.__context__)
        )
    return str(exc).split(": ", 1)[-1] or type(exc).__name__


def _shown_location(value: Optional[str]) -> str:
    if not value:
        return ""
    if "@" in value or not value.isprintable():
        return " to a URL not shown here (it may hold a password)"
    return f" to {value[:_LOCATION_SHOWN]!r}"


class HttpTransport(Transport):
    """
    Send updates with ``POST {url}/update`` and check ``GET {url}/health``, on urllib3.

    One pool of keep-alive connections to the remote host, as many as there
    are workers (plus one for the health check). Every failure becomes a
    :class:`~lightd_sync.DeliveryError`; urllib3 retries nothing, with one
    exception: a request that went out on a kept-alive connection the remote
    had closed while idle is sent again at once, on a new connection.

    TLS certificates are verified (``ca_bundle`` adds a private CA,
    ``client_cert``/``client_key`` give mutual TLS); ``verify: false`` is
    logged as a WARNING when the transport is created. Redirects are never
    followed: they would carry the token elsewhere. ``remote.proxy``, else
    ``HTTPS_PROXY``/``HTTP_PROXY`` minus ``NO_PROXY``, selects a proxy. A
    forked child never uses the parent's connections: it gets a pool of its own.

    Args:
        config: The remote config; ``url``, ``token``, ``timeout``, ``workers``
            and the TLS and proxy keys are used.

    Raises:
        ConfigError: ``url`` or ``token`` is missing, or ``ca_bundle``,
            ``client_cert`` or ``client_key`` cannot be used.

    .. versionadded:: 0.1.0 TLS options, proxies, the idle-connection retry and fork safety.
    """

    name = "http"
    talks_http = True

    def __init__(self, config: RemoteConfig) -> None:
        if not config.url:
            raise ConfigError("remote.url: missing; the http transport needs it")
        if not config.token:
            raise ConfigError("remote.token: missing; the http transport needs it")
        self.url = config.url
        self._base_path = urlsplit(config.url).path.rstrip("/")
        self._origin = self.url[: len(self.url) - len(self._base_path)]  # scheme://host:port
        self._timeout = config.timeout
        self._scrub = config.token
        proxy = choose_proxy(config)
        if isinstance(proxy, str):
            safe_log(log, logging.WARNING, "ignoring the proxy: %s; connecting directly", proxy)
            proxy = None
        self.proxy: Optional[Proxy] = proxy
        self._plan = plan_pools(config, proxy)
        self._post_headers = request_headers(config.token, post=True)
        self._get_headers = request_headers(config.token, post=False)
        self._update_path = f"{self._base_path}/update"
        self._post_head = _direct.encode_head(
            self._update_path, urlsplit(self.url).netloc, self._post_headers
        )
        self._health_path = f"{self._base_path}/health"
        # Guards _closed and replacing _conn (in a forked child).
        self._lock = threading.Lock()
        self._closed = False
        # (manager, pool) in one attribute, so a request reads a matching pair.
        self._conn: tuple[Optional[urllib3.PoolManager], Pool] = self._plan.build()
        self._pid = os.getpid()  # the process that owns the pool's sockets
        warn_about_security(
            self.url,
            unverified=None if config.verify else "remote.verify is false",
            proxy=self.proxy,
        )
        _install_fork_hook()
        _LIVE.add(self)

    def __repr__(self) -> str:
        via = f", proxy={self.proxy.url!r}" if self.proxy is not None else ""
        return f"HttpTransport(url={self.url!r}{via})"

    @property
    def _pool(self) -> Pool:
        """The pool of connections to the remote (or to the proxy, for an http:// remote)."""
        return self._conn[1]

    # -- fork safety --------------------------------------------------------

    def _renew_pool(self, *, in_fork_hook: bool = False) -> None:
        """
        Give this (forked child) process a pool of its own.

        The inherited sockets are the parent's connections too: shutting them
        down or talking on them would break the parent's requests. The child
        only closes its own copies of their file descriptors and forgets them.
        """
        if in_fork_hook:  # the only thread: a lock held at fork time is never released
            self._lock = threading.Lock()
        with self._lock:
            if self._pid == os.getpid():
                return  # another thread of this child did it
            old = self._conn[1]
            self._conn = self._plan.build()
            self._pid = os.getpid()
        old.forget()

    # -- requests -----------------------------------------------------------

    def _urlopen(
        self,
        conn: tuple[Optional[urllib3.PoolManager], Pool],
        method: str,
        path: str,
        body: Optional[bytes],
        headers: dict[str, str],
    ) -> _Response:
        manager, pool = conn
        if manager is None and body is not None:  # a POST straight to the remote: the hot path
            return _direct.post(
                pool, self._post_head, headers.get("X-Lightd-Event-Id"), body, self._timeout
            )
        kw: dict[str, Any] = {
            "body": body,
            "headers": headers,
            "retries": False,
            "redirect": False,
            "preload_content": True,
        }
        if manager is not None:  # the proxy manager knows absolute-form and CONNECT
            return manager.urlopen(method, self._origin + path, **kw)
        return pool.urlopen(method, path, assert_same_host=False, **kw)

    def _request(
        self,
        method: str,
        path: str,
        body: Optional[bytes],
        headers: Optional[dict[str, str]] = None,
    ) -> _Response:
        if self._closed:
            raise RemoteUnreachableError(f"{method} {path}: the transport is closed")
        if self._pid != os.getpid():  # a forked child whose fork hook did not run (uWSGI)
            self._renew_pool()
        conn = self._conn
        headers = headers or self._get_headers
        what = f"{method} {self.url}{path[len(self._base_path) :]}"
        try:
            try:
                return self._urlopen(conn, method, path, body, headers)
            except (u3.ProtocolError, u3.SSLError) as exc:
                if self._closed or not conn[1].lightd_reused() or not _closed_while_idle(exc):
                    raise
            # The remote had closed that kept-alive connection while it was idle.
            return self._urlopen(conn, method, path, body, headers)
        except (u3.ConnectTimeoutError, u3.ReadTimeoutError, socket.timeout) as exc:
            if isinstance(exc, u3.NewConnectionError):  # a subclass of ConnectTimeoutError
                raise self._unreachable(what, exc) from exc
            raise RemoteTimeoutError(
                f"{what}: no answer within {self._timeout:g} s", retryable=True
            ) from exc
        except (u3.HTTPError, OSError) as exc:
            raise self._unreachable(what, exc) from exc

    def _unreachable(self, what: str, exc: BaseException) -> DeliveryError:
        if self._closed:
            return RemoteUnreachableError(f"{what}: the transport was closed", retryable=False)
        if isinstance(exc, u3.SSLError):
            reason = f"TLS failed: {_os_reason(exc)}"
            if "CERTIFICATE_VERIFY_FAILED" in reason and "mismatch" not in reason:
                reason += "; if the remote's CA is private, set remote.ca_bundle"
        elif isinstance(exc, u3.ProxyError) and self.proxy is not None:
            reason = f"the proxy {self.proxy.url} failed: {_os_reason(exc)}"
        elif isinstance(exc, u3.NewConnectionError):
            reason = f"cannot connect: {_os_reason(exc)}"
        else:
            reason = f"connection failed: {_os_reason(exc)}"
        return RemoteUnreachableError(
            f"{what}: {reason}".replace(self._scrub, "<token>"), retryable=True
        )

    def _judge(self, verdict: _Verdict, what: str, response: _Response) -> None:
        status = response.status
        if 300 <= status < 400:
            to = _shown_location(response.headers.get("Location"))
            message = (
                f"{what}: the remote answered HTTP {status}, a redirect{to}: remote.url is "
                "misconfigured (set it to the final URL); redirects are never followed since "
                "they would carry the token elsewhere"
            )
            raise RemoteRejectedError(message.replace(self._scrub, "<token>"), status=status)
        try:
            verdict(status, response.data, response.headers)
        except DeliveryError as exc:
            raise scrubbed(exc, self._scrub) from None

    def send(self, update: Update) -> None:
        """POST *update* to ``{url}/update``; raise a DeliveryError unless accepted."""
        headers = self._post_headers
        if update.event_id is not None:
            headers = {**headers, "X-Lightd-Event-Id": update.event_id}
        response = self._request("POST", self._update_path, encode_body(update), headers)
        self._judge(update_verdict, "POST /update", response)

    def check_health(self) -> None:
        """GET ``{url}/health``; raise a DeliveryError unless it answers as active."""
        response = self._request("GET", self._health_path, None)
        self._judge(health_verdict, "GET /health", response)

    def close(self) -> None:
        """Close every connection, waking any request blocked on a silent remote."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            manager, pool = self._conn
        _LIVE.discard(self)
        if self._pid == os.getpid():  # never shut down sockets a parent process owns
            pool.cut_off()
        pool.close()
        if manager is not None:
            manager.clear()
