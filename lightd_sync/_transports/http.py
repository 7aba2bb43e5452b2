"""The HTTP transport: urllib3's connection pool, one deadline per request, batches when offered."""

from __future__ import annotations

import base64
import binascii
import http.client
import logging
import os
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any, Optional
from urllib.parse import quote, urlsplit

import urllib3

from .._config import RemoteConfig
from .._deadline import (
    Answer,
    AnswerTooLargeError,
    ClosedError,
    DoubtfulAnswerError,
    Guard,
    GuardedSSLSocket,
    read_answer,
)
from .._exceptions import ConfigError, DeliveryError, RemoteUnreachableError
from .._logutil import get_logger, safe_log
from .._model import Event
from .._secrets import Secrets, secrets_of
from ._batching import BatchOffer
from ._errors import causes, delivery_error
from ._pools import NO_DELAY, Proxy, choose_proxy, tls_context
from .base import Transport
from .protocol import (
    encode_body,
    health_verdict,
    judge,
    request_headers,
    update_verdict,
    warn_about_security,
)

__all__ = ["HttpTransport"]

log = get_logger("transport")

# What a request that went out on a kept-alive connection the remote had closed
# while idle fails with, before any byte of an answer (RemoteDisconnected is a
# ConnectionResetError).
_IDLE_CLOSE = (
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)
# Everything a failed exchange raises (ValueError: a malformed answer that
# http.client does not wrap; UnicodeError: an encoding).
_FAILURES = (
    OSError,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    ValueError,
    AnswerTooLargeError,
    DoubtfulAnswerError,
)
# In a URL's path: keep what is already ASCII and legal, percent-encode the rest.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_IDENTITY = {"Accept-Encoding": "identity"}  # a compressed answer could outgrow 64 KiB decoded


def _host_for_the_wire(host: str) -> str:
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        raise ConfigError("remote.url: the host name cannot be written in ASCII (IDNA)") from None


def _proxy_secrets(proxy: Optional[Proxy]) -> tuple[str, ...]:
    """The ``Proxy-Authorization`` value of *proxy* (config or environment), and its password."""
    value = proxy.headers.get("Proxy-Authorization", "") if proxy is not None else ""
    if not value:
        return ()
    encoded = value.split(" ", 1)[-1]
    try:
        password = base64.b64decode(encoded).decode("utf-8", "replace").split(":", 1)[-1]
    except (binascii.Error, ValueError):
        password = ""
    return tuple(s for s in (encoded, password) if s)


def _idle_close(exc: BaseException) -> bool:
    return any(isinstance(e, _IDLE_CLOSE) and not isinstance(e, ClosedError) for e in causes(exc))


class HttpTransport(Transport):
    """
    Send updates with ``POST {url}/update`` (or ``/updates``) and check ``GET {url}/health``.

    Runs on urllib3's connection pool (one kept-alive connection per sending
    thread at most, ``workers + 1`` in all). ``timeout`` is the time the
    whole request may take: connecting, sending and every byte of the answer.
    An answer's body is read up to 64 KiB; a larger one is a failed delivery
    (``reason="too_large"``). An answer whose framing is doubtful (a ``1xx``
    interim answer where the final one belongs, a length that does not match)
    fails its request, and its connection is closed; bytes after an answer are
    dropped, and a connection with bytes waiting is never reused: nothing of
    one answer can be taken for the next request's. Every failure becomes a
    :class:`~lightd_sync.DeliveryError`, with one retry: a request that went
    out on a kept-alive connection the remote had closed while idle (nothing
    of an answer came back) is sent again at once, on a new connection.

    **Batches.** When the latest health answer offers them (``"batch":
    {"max": N}``), :meth:`max_batch` is ``min(N, 500)`` and :meth:`send_many`
    sends its events as one ``POST {url}/updates``, judged item by item; a
    remote that answers it 404, 405, 415 or 501 gets the same items one
    ``POST /update`` each at once (same event ids), and no batch until a later
    health answer offers them again.

    TLS certificates are verified (``ca_bundle`` adds a private CA,
    ``client_cert``/``client_key`` give mutual TLS); ``verify: false`` is
    logged as a WARNING when the transport is created, never per request.
    Redirects are never followed: they would carry the token elsewhere.
    ``remote.proxy``, else ``HTTPS_PROXY``/``HTTP_PROXY`` minus ``NO_PROXY``,
    selects a proxy (``CONNECT`` for an ``https://`` remote). :meth:`close`
    cuts off every request in flight, the TLS handshake included; a TCP
    connect still in progress ends by its timeout, and the connection is
    then refused. A forked child never uses the parent's connections: it
    makes its own pool.

    Args:
        config: The remote config; ``url``, ``token``, ``timeout``, ``workers``
            and the TLS and proxy keys are used.

    Raises:
        ConfigError: ``url`` or ``token`` is missing, or ``ca_bundle``,
            ``client_cert`` or ``client_key`` cannot be used.

    .. versionadded:: 0.1.0 TLS options, proxies, the idle-connection retry and fork safety.
    .. versionchanged:: 0.2.0 ``timeout`` bounds the whole request; answers are
       read up to 64 KiB, and doubted; batches when the remote offers them.
    """

    name = "http"
    talks_http = True

    def __init__(self, config: RemoteConfig) -> None:
        if not config.url:
            raise ConfigError("remote.url: missing; the http transport needs it")
        if not config.token:
            raise ConfigError("remote.token: missing; the http transport needs it")
        self.url = config.url
        parts = urlsplit(config.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("remote.url: expected an http:// or https:// URL with a host")
        try:
            port = parts.port
        except ValueError:
            raise ConfigError("remote.url: the port is not a number from 0 to 65535") from None
        self._scheme = parts.scheme
        self._host = _host_for_the_wire(parts.hostname)
        self._port = port or (443 if parts.scheme == "https" else 80)
        self._timeout = config.timeout
        self._verify = config.verify
        self._maxsize = config.workers + 1
        base = quote(parts.path.rstrip("/"), safe=_PATH_SAFE)
        proxy = choose_proxy(config)
        if isinstance(proxy, str):
            safe_log(log, logging.WARNING, "ignoring the proxy: %s; connecting directly", proxy)
            proxy = None
        self.proxy: Optional[Proxy] = proxy
        self._lightd_secrets: Secrets = tuple(
            sorted(
                set(secrets_of(config.token, config.proxy)) | set(_proxy_secrets(proxy)),
                key=len,
                reverse=True,
            )
        )
        # Through a proxy, requests name the whole URL (absolute form); else the path.
        shown = f"[{self._host}]" if ":" in self._host else self._host
        authority = f"{shown}:{port}" if port else shown
        prefix = f"{parts.scheme}://{authority}" if proxy is not None else ""
        self._targets = {p: f"{prefix}{base}/{p}" for p in ("update", "updates", "health")}
        self._tls = tls_context(config) if parts.scheme == "https" else None
        if self._tls is not None:
            # urllib3 (1.26 and 2.x) matches the certificate's name itself when the
            # context does not: 1.26 sends no server_hostname for an IP address.
            self._tls.check_hostname = False
            self._tls.sslsocket_class = GuardedSSLSocket  # close() cuts a handshake too
        self._proxy_tls = (
            tls_context(config) if proxy is not None and proxy.url.startswith("https:") else None
        )
        if self._proxy_tls is not None:
            self._proxy_tls.sslsocket_class = GuardedSSLSocket
        self._post_headers = {**request_headers(config.token, post=True), **_IDENTITY}
        self._get_headers = {**request_headers(config.token, post=False), **_IDENTITY}
        self._batches = BatchOffer(self.url)  # the remote's batch offer
        self._closed = False
        # (pid, guard, pool): swapped whole, so a request reads a matching set.
        self._state: tuple[int, Guard, Any] = self._build()
        self._state_lock = threading.Lock()  # guards replacing _state in a forked child
        warn_about_security(
            self.url,
            unverified=None if config.verify else "remote.verify is false",
            proxy=self.proxy,
            proxy_url=self.proxy.url if self.proxy is not None else None,
        )

    def __repr__(self) -> str:
        via = f", proxy={self.proxy.url!r}" if self.proxy is not None else ""
        return f"HttpTransport(url={self.url!r}{via})"

    # -- the pool ------------------------------------------------------------

    def _build(self) -> tuple[int, Guard, Any]:
        """A guard and a pool (or proxy manager) for this process."""
        guard = Guard("lightd-sync-deadline", verify=self._verify)
        kw: dict[str, Any] = {
            "maxsize": self._maxsize,
            "block": False,
            "retries": False,
            "timeout": urllib3.Timeout(connect=self._timeout, read=self._timeout),
        }
        tls: dict[str, Any] = {}
        if self._tls is not None:
            tls = {
                "ssl_context": self._tls,
                "cert_reqs": "CERT_REQUIRED" if self._verify else "CERT_NONE",
            }
            if not self._verify:
                tls["assert_hostname"] = False
        proxy = self.proxy
        if proxy is None:
            pool_class = guard.pool_classes[self._scheme]
            return os.getpid(), guard, pool_class(self._host, self._port, **kw, **tls)
        manager = urllib3.ProxyManager(
            proxy.url,
            num_pools=2,
            proxy_headers=dict(proxy.headers),
            proxy_ssl_context=self._proxy_tls,
            socket_options=NO_DELAY,  # not urllib3's Nagle towards a proxy (40 ms a request)
            **kw,
            **tls,
        )
        manager.pool_classes_by_scheme = dict(guard.pool_classes)
        return os.getpid(), guard, manager

    def _current(self) -> tuple[int, Guard, Any]:
        """This process's pool: a forked child replaces the parent's (the one fork check)."""
        state = self._state
        if state[0] == os.getpid():
            return state
        self._state_lock = threading.Lock()  # the parent may have held it at fork time
        with self._state_lock:
            if self._state[0] != os.getpid():
                self._state[1].forget()  # close our copies of the parent's sockets, never shut
                self._state = self._build()
                if self._closed:
                    self._state[1].close()
            return self._state

    @property
    def _guard(self) -> Guard:
        return self._current()[1]

    # -- requests ------------------------------------------------------------

    def _exchange(
        self, method: str, which: str, body: Optional[bytes], headers: dict[str, str]
    ) -> Answer:
        what = f"{method} {self.url.rstrip('/')}/{which}"
        _, guard, pool = self._current()
        if self._closed or guard.closed:
            raise RemoteUnreachableError(f"{what}: the transport is closed", reason="closed")
        target = self._targets[which]
        deadline = time.monotonic() + self._timeout
        for attempt in (1, 2):
            ticket = guard.begin(deadline - time.monotonic())
            try:
                try:
                    left = max(ticket.deadline - time.monotonic(), 0.001)
                    response = pool.urlopen(
                        method,
                        target,
                        body=body,
                        headers=headers,
                        retries=False,
                        redirect=False,
                        assert_same_host=False,
                        timeout=urllib3.Timeout(connect=left, read=left),
                        preload_content=False,
                        release_conn=False,
                        decode_content=False,
                        enforce_content_length=True,
                    )
                    return read_answer(response, ticket)
                finally:
                    guard.end(ticket)
            except _FAILURES as exc:
                closed = self._closed or guard.closed
                if (
                    attempt == 1
                    and ticket.reused
                    and not closed
                    and not ticket.expired
                    and _idle_close(exc)
                ):
                    continue  # the remote had closed that kept-alive connection while idle
                err = delivery_error(
                    exc,
                    what,
                    secrets=self._lightd_secrets,
                    timeout=self._timeout,
                    closed=closed,
                    timed_out=ticket.expired,
                    proxy=self.proxy.url if self.proxy is not None else None,
                )
            raise err  # outside the except block: no __context__ that may hold a secret
        raise AssertionError("unreachable")  # pragma: no cover

    def send(self, update: Event) -> None:
        """POST *update* to ``{url}/update``; raise a DeliveryError unless accepted."""
        headers = self._post_headers
        if update.event_id:
            headers = {**headers, "X-Lightd-Event-Id": update.event_id}
        answer = self._exchange("POST", "update", encode_body(update), headers)
        judge(update_verdict, "POST /update", answer, self._lightd_secrets)

    def max_batch(self) -> int:
        """``min(batch.max, 500)`` while the latest health answer offers batches, else 1."""
        return self._batches.max_batch()

    def send_many(self, updates: Sequence[Event]) -> list[Optional[DeliveryError]]:
        """
        Send *updates* as one ``POST {url}/updates`` while the remote offers batches.

        Without an offer (or with one event), one ``POST /update`` each. The
        answer is judged per the spec's table; 404, 405, 415 or 501 withdraw
        the offer and the same events go out one ``POST /update`` each, at once,
        with the same event ids (an event without one is given one first).

        .. versionadded:: 0.2.0
        """
        return self._batches.send_many(
            updates,
            post=lambda body: self._exchange("POST", "updates", body, self._post_headers),
            one_by_one=lambda events: Transport.send_many(self, events),
            secrets=self._lightd_secrets,
        )

    def check_health(self) -> None:
        """GET ``{url}/health``; raise a DeliveryError unless it answers as active."""
        answer = self._exchange("GET", "health", None, self._get_headers)
        self._batches.heard(answer)  # each health answer replaces the offer
        judge(health_verdict, "GET /health", answer, self._lightd_secrets)

    def close(self) -> None:
        """Close every connection, cutting off every request in flight (the TLS handshake too)."""
        self._closed = True
        pid, guard, pool = self._state
        if pid != os.getpid():
            guard.forget()  # a child never shuts down its parent's sockets
            return
        guard.close()
        if isinstance(pool, urllib3.PoolManager):
            pool.clear()
        else:
            pool.close()
