"""
Building the HTTP transport's connection pool: TLS settings, the proxy, connection tracking.

Everything here runs when a transport is created (or re-created in a forked
child), never per request. It works on urllib3 1.26 and 2.x alike.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import socket
import ssl
import threading
import urllib.request
import weakref
from typing import Any, Optional, Union
from urllib.parse import unquote, urlsplit

import attrs
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.util.ssl_ import create_urllib3_context

from .._config import RemoteConfig
from .._exceptions import ConfigError

__all__ = ["Pool", "PoolPlan", "Proxy", "TrackingPool", "choose_proxy", "plan_pools", "tls_context"]

_PROXY_SCHEMES = ("http", "https")


class _CutOffConnection:
    """
    Mixin for urllib3 connections: one that finishes connecting after ``cut_off()`` cuts itself.

    ``cut_off()`` can only shut down sockets that exist; a connection whose
    TCP handshake completed just before, but whose socket urllib3 had not
    stored yet, would otherwise go on to wait for a silent remote.
    """

    lightd_cut: threading.Event

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        if self.lightd_cut.is_set():
            sock = self.sock  # type: ignore[attr-defined]
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            raise ConnectionAbortedError(errno.ECONNABORTED, "the transport was closed")


class _HTTPConnection(_CutOffConnection, HTTPConnection):
    pass


class _HTTPSConnection(_CutOffConnection, HTTPSConnection):
    pass


class TrackingPool:
    """
    Mixin for urllib3 pools: remember every connection made, and whether the last one was reused.

    :meth:`cut_off` must wake a thread blocked reading from a silent remote;
    shutting down the socket of each connection is the only way to do that,
    and a pool only knows its idle connections. Knowing that a request went
    out on a kept-alive connection lets the transport retry a request the
    remote cut off because it had closed that connection while it was idle.
    """

    lightd_conns: weakref.WeakSet[Any]
    lightd_local: threading.local
    lightd_cut: threading.Event

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lightd_conns = weakref.WeakSet()
        self.lightd_local = threading.local()  # .reused: the calling thread's last connection
        self.lightd_cut = threading.Event()  # set by cut_off(): no connection may live on

    def _new_conn(self) -> Any:
        conn = super()._new_conn()  # type: ignore[misc]
        conn.lightd_cut = self.lightd_cut
        self.lightd_conns.add(conn)
        return conn

    def _get_conn(self, timeout: Optional[float] = None) -> Any:
        conn = super()._get_conn(timeout)  # type: ignore[misc]
        # An idle pooled connection still has its socket; a new one connects later.
        self.lightd_local.reused = getattr(conn, "sock", None) is not None
        return conn

    def lightd_reused(self) -> bool:
        """Whether the calling thread's last request went out on a kept-alive connection."""
        return bool(getattr(self.lightd_local, "reused", False))

    def cut_off(self) -> None:
        """Shut down every connection's socket, now and as soon as one connects."""
        self.lightd_cut.set()  # first: a socket stored after the walk below sees it
        for conn in list(self.lightd_conns):
            sock = getattr(conn, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):  # already closed by its own thread
                    sock.shutdown(socket.SHUT_RDWR)

    def forget(self) -> None:
        """In a forked child: close this process's copies of the sockets, never shut them down."""
        for conn in list(self.lightd_conns):
            sock = getattr(conn, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()  # the parent's socket lives on


class _HTTPPool(TrackingPool, urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(TrackingPool, urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


#: A transport's pool: to the remote, or to the proxy for an http:// remote behind one.
Pool = Union[_HTTPPool, _HTTPSPool]


class _UnverifiedHTTPSPool(_HTTPSPool):
    """
    The pool for ``verify: false``: no ``InsecureRequestWarning`` on every request.

    The transport logged one loud WARNING when it was created. urllib3 would
    add a Python warning per request from our threads (an error under
    ``-W error``), and the only other ways to silence it, ``disable_warnings()``
    or ``warnings.catch_warnings()``, change process-wide state and are not
    thread-safe. So this pool skips the warning for its own connections only.
    """

    def _validate_conn(self, conn: Any) -> None:
        urllib3.HTTPConnectionPool._validate_conn(self, conn)  # skip HTTPSConnectionPool's
        if getattr(conn, "sock", None) is None:  # what urllib3 1.26 and 2.x both do first
            conn.connect()


def _no_password() -> bytes:
    # Without a callback, OpenSSL would prompt on the terminal for an
    # encrypted key's passphrase: a daemon would hang.
    raise ConfigError("remote.client_key: the key is encrypted; give an unencrypted key file")


def _ssl_reason(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc.strerror or exc)


def _readable(key: str, path: str) -> None:
    if not os.access(path, os.R_OK):
        why = "does not exist" if not os.path.exists(path) else "is not readable"
        raise ConfigError(f"remote.{key}: {path!r} {why}")


def tls_context(config: RemoteConfig) -> ssl.SSLContext:
    """
    Build the one TLS context of a transport from ``verify``, ``ca_bundle`` and the client cert.

    Files are read once, here: a missing or broken file is a :class:`ConfigError`
    now rather than a failed connection later, and no connection re-reads them.

    Raises:
        ConfigError: A file is missing, unreadable or not PEM; the key is encrypted.
    """
    ctx = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED if config.verify else ssl.CERT_NONE)
    try:
        if config.ca_bundle is not None:
            _readable("ca_bundle", config.ca_bundle)
            if os.path.isdir(config.ca_bundle):
                ctx.load_verify_locations(capath=config.ca_bundle)
            else:
                ctx.load_verify_locations(cafile=config.ca_bundle)
        elif config.verify:
            ctx.load_default_certs()
    except ssl.SSLError as exc:
        raise ConfigError(
            f"remote.ca_bundle: no PEM certificates to load: {_ssl_reason(exc)}"
        ) from None
    if config.client_cert is not None:
        _readable("client_cert", config.client_cert)
        if config.client_key is not None:
            _readable("client_key", config.client_key)
        try:
            ctx.load_cert_chain(config.client_cert, config.client_key, password=_no_password)
        except ssl.SSLError as exc:
            raise ConfigError(
                "remote.client_cert: cannot load the client certificate and key "
                f"(not PEM, or the key does not match): {_ssl_reason(exc)}"
            ) from None
    return ctx


@attrs.frozen
class Proxy:
    """
    The proxy a transport goes through.

    Attributes:
        url: ``scheme://host:port`` without any credentials.
        headers: ``Proxy-Authorization``, when the proxy URL held user:password.
        source: Where it came from: ``remote.proxy`` or the environment variable.
    """

    url: str
    headers: dict[str, str] = attrs.field(repr=False)
    source: str

    def __str__(self) -> str:
        return f"{self.url} (from {self.source})"


def _env_name(scheme: str) -> str:
    for name in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY"):
        if os.environ.get(name):
            return name
    return f"{scheme.upper()}_PROXY"


def _parse_proxy(raw: str, source: str) -> Union[Proxy, str]:
    """Split *raw* into a :class:`Proxy`, or return why it cannot be used (no secrets in it)."""
    if "://" not in raw:  # "proxy:3128", as curl and requests accept it
        raw = f"http://{raw}"
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        return f"{source} is not a valid URL"
    if parts.scheme.lower() not in _PROXY_SCHEMES or not parts.hostname:
        return f"{source} is not an http:// or https:// proxy URL (scheme {parts.scheme!r})"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    url = f"{parts.scheme.lower()}://{host}" + (f":{port}" if port else "")
    headers: dict[str, str] = {}
    if parts.username is not None:
        creds = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(creds.encode()).decode()
    return Proxy(url, headers, source)


def choose_proxy(config: RemoteConfig) -> Union[Proxy, str, None]:
    """
    The proxy for the remote: ``remote.proxy``, else ``HTTPS_PROXY``/``HTTP_PROXY``.

    The environment is read through :func:`urllib.request.getproxies` (lower
    case wins; ``HTTP_PROXY`` is ignored in a CGI request) and ``NO_PROXY``
    through :func:`urllib.request.proxy_bypass`. ``remote.proxy`` is used
    whatever ``NO_PROXY`` says.

    Returns:
        The proxy; ``None`` for a direct connection; or a string saying why the
        environment's proxy cannot be used (the caller logs it and goes direct).
    """
    if config.proxy is not None:
        return _parse_proxy(config.proxy, "remote.proxy")
    assert config.url is not None  # the transport checked
    parts = urlsplit(config.url)
    raw = urllib.request.getproxies().get(parts.scheme)
    if not raw or urllib.request.proxy_bypass(parts.netloc):
        return None
    return _parse_proxy(raw, _env_name(parts.scheme))


@attrs.frozen
class PoolPlan:
    """
    How to build a transport's pool: kept so that a forked child can build its own.

    Attributes:
        url: The remote's base URL.
        pool_kw: Keyword arguments of every pool (size, timeouts, TLS).
        proxy: The proxy, or ``None`` for a direct connection.
        verify: Whether certificates are verified.
    """

    url: str
    pool_kw: dict[str, Any] = attrs.field(repr=False)
    proxy: Optional[Proxy]
    verify: bool

    def build(self) -> tuple[Optional[urllib3.PoolManager], Pool]:
        """
        Build a fresh pool (no connection is made yet).

        Returns:
            ``(manager, pool)``: through a proxy, the ``ProxyManager`` that
            requests must go through and the pool it uses for the remote;
            direct, ``None`` and the pool to the remote.
        """
        https = _HTTPSPool if self.verify else _UnverifiedHTTPSPool
        if self.proxy is None:
            parts = urlsplit(self.url)
            if parts.scheme == "https":
                return None, https(parts.hostname, parts.port, **self.pool_kw)
            return None, _HTTPPool(parts.hostname, parts.port, **_plain(self.pool_kw))
        # urllib3 turns Nagle's algorithm back on for proxies; since it sends headers
        # and body apart, every request on a kept-alive connection would then wait
        # for the proxy's delayed ACK (40 ms on Linux). Our requests are small.
        nodelay = list(HTTPConnection.default_socket_options)
        manager = urllib3.ProxyManager(
            self.proxy.url,
            num_pools=2,
            proxy_headers=dict(self.proxy.headers),
            socket_options=nodelay,
            **self.pool_kw,
        )
        # Our pool classes for this manager only (urllib3 copies nothing from the module's dict).
        manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": https}
        pool = manager.connection_from_url(self.url)
        assert isinstance(pool, (_HTTPPool, _HTTPSPool))
        return manager, pool


_TLS_KEYS = ("ssl_context", "cert_reqs", "assert_hostname")


def _plain(pool_kw: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in pool_kw.items() if k not in _TLS_KEYS}


def plan_pools(config: RemoteConfig, proxy: Optional[Proxy]) -> PoolPlan:
    """
    Decide every setting of the transport's pools from *config*.

    Raises:
        ConfigError: A TLS file cannot be used (see :func:`tls_context`).
    """
    assert config.url is not None
    pool_kw: dict[str, Any] = {
        "maxsize": config.workers + 1,
        "block": False,
        "timeout": urllib3.Timeout(connect=config.timeout, read=config.timeout),
        "retries": False,
    }
    needs_tls = config.url.startswith("https:") or (
        proxy is not None and proxy.url.startswith("https:")
    )
    if needs_tls:
        pool_kw["ssl_context"] = tls_context(config)
        if config.verify:
            pool_kw["cert_reqs"] = "CERT_REQUIRED"
        else:
            pool_kw["cert_reqs"] = "CERT_NONE"
            pool_kw["assert_hostname"] = False
    return PoolPlan(config.url, pool_kw, proxy, config.verify)
