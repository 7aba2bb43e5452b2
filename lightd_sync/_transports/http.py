"""The HTTP transport, on urllib3: one keep-alive pool to the one remote host."""

from __future__ import annotations

import contextlib
import socket
import threading
import weakref
from typing import Any, Optional, Union
from urllib.parse import urlsplit

import urllib3
from urllib3 import exceptions as u3

from .._config import RemoteConfig
from .._exceptions import DeliveryError, RemoteTimeoutError, RemoteUnreachableError
from .._model import Update
from .base import Transport
from .protocol import encode_body, health_verdict, request_headers, scrubbed, update_verdict

__all__ = ["HttpTransport"]


class _TrackingPool:
    """
    Mixin for urllib3 pools: remember every connection made.

    ``close()`` must wake a thread blocked reading from a silent remote;
    shutting down the socket of each connection is the only way to do that,
    and a pool only knows its idle connections.
    """

    lightd_conns: weakref.WeakSet[Any]

    def _new_conn(self) -> Any:
        conn = super()._new_conn()  # type: ignore[misc]
        self.lightd_conns.add(conn)
        return conn


class _HTTPPool(_TrackingPool, urllib3.HTTPConnectionPool):
    pass


class _HTTPSPool(_TrackingPool, urllib3.HTTPSConnectionPool):
    pass


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


class HttpTransport(Transport):
    """
    Send updates with ``POST {url}/update`` and check ``GET {url}/health``, on urllib3.

    One pool of keep-alive connections to the remote host, as many as there
    are workers (plus one for the health check). Certificates are verified;
    redirects are never followed; urllib3 retries nothing. Every failure
    becomes a :class:`~lightd_sync.DeliveryError`.

    Args:
        config: The remote config; ``url``, ``token`` and ``timeout`` are used.
    """

    name = "http"

    def __init__(self, config: RemoteConfig) -> None:
        if not config.url or not config.token:
            raise ValueError("HttpTransport needs a config with url and token")
        parts = urlsplit(config.url)
        host = parts.hostname or ""  # RemoteConfig guarantees a host
        self.url = config.url
        self._base_path = parts.path.rstrip("/")
        self._timeout = config.timeout
        self._scrub = config.token
        pool_kw: dict[str, Any] = {
            "maxsize": config.workers + 1,
            "block": False,
            "timeout": urllib3.Timeout(connect=config.timeout, read=config.timeout),
            "retries": False,
        }
        pool: Union[_HTTPPool, _HTTPSPool]
        if parts.scheme == "https":
            pool = _HTTPSPool(host, parts.port, cert_reqs="CERT_REQUIRED", **pool_kw)
        else:
            pool = _HTTPPool(host, parts.port, **pool_kw)
        pool.lightd_conns = weakref.WeakSet()
        self._pool = pool
        self._post_headers = request_headers(config.token, post=True)
        self._get_headers = request_headers(config.token, post=False)
        self._update_path = f"{self._base_path}/update"
        self._health_path = f"{self._base_path}/health"
        # Guards _closed and the walk over the pool's connections in close().
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"HttpTransport(url={self.url!r})"

    def _request(
        self,
        method: str,
        path: str,
        body: Optional[bytes],
        headers: Optional[dict[str, str]] = None,
    ) -> urllib3.BaseHTTPResponse:
        if self._closed:
            raise RemoteUnreachableError(f"{method} {path}: the transport is closed")
        what = f"{method} {self.url}{path[len(self._base_path) :]}"
        try:
            return self._pool.urlopen(
                method,
                path,
                body=body,
                headers=headers or self._get_headers,
                retries=False,
                redirect=False,
                assert_same_host=False,
                preload_content=True,
            )
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
        elif isinstance(exc, u3.NewConnectionError):
            reason = f"cannot connect: {_os_reason(exc)}"
        else:
            reason = f"connection failed: {_os_reason(exc)}"
        return RemoteUnreachableError(
            f"{what}: {reason}".replace(self._scrub, "<token>"), retryable=True
        )

    def send(self, update: Update) -> None:
        """POST *update* to ``{url}/update``; raise a DeliveryError unless accepted."""
        headers = self._post_headers
        if update.event_id is not None:
            headers = {**headers, "X-Lightd-Event-Id": update.event_id}
        response = self._request("POST", self._update_path, encode_body(update), headers)
        try:
            update_verdict(response.status, response.data, response.headers)
        except DeliveryError as exc:
            raise scrubbed(exc, self._scrub) from None

    def check_health(self) -> None:
        """GET ``{url}/health``; raise a DeliveryError unless it answers as active."""
        response = self._request("GET", self._health_path, None)
        try:
            health_verdict(response.status, response.data, response.headers)
        except DeliveryError as exc:
            raise scrubbed(exc, self._scrub) from None

    def close(self) -> None:
        """Close every connection, waking any request blocked on a silent remote."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conns = list(self._pool.lightd_conns)
        for conn in conns:
            sock = getattr(conn, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):  # already closed by its own thread
                    sock.shutdown(socket.SHUT_RDWR)
        self._pool.close()
