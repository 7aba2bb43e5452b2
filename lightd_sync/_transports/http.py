"""The HTTP transport: one keep-alive connection per lane, one deadline per request."""

from __future__ import annotations

import http.client
import logging
import ssl
import time
from collections.abc import Sequence
from typing import Optional
from urllib.parse import quote, urlsplit

from .._config import RemoteConfig
from .._exceptions import ConfigError, DeliveryError, RemoteUnreachableError
from .._logutil import get_logger, safe_log
from .._model import Event
from ._conn import ClosedError, ConnectionBook, Route
from ._deadline import Answer, AnswerTooLargeError, DeadlineExceededError
from ._errors import delivery_error
from ._pools import Proxy, choose_proxy, tls_context
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

# Errors that mean a kept-alive connection was already closed by the remote
# when the request went out on it (RemoteDisconnected is a ConnectionResetError).
#: The most requests one send_many() writes at once on a connection.
MAX_PIPELINE = 32

_IDLE_CLOSE = (
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)
# Everything the connection code raises for a failed exchange (ValueError: a
# malformed answer that http.client does not wrap; UnicodeError: an encoding).
_FAILURES = (OSError, http.client.HTTPException, ValueError, AnswerTooLargeError)
# In a URL's path: keep what is already ASCII and legal, percent-encode the rest.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


def _host_for_the_wire(host: str) -> str:
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        raise ConfigError("remote.url: the host name cannot be written in ASCII (IDNA)") from None


def _authority(host: str, port: Optional[int]) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port else shown


def _head(request_line: str, host: str, headers: dict[str, str]) -> bytes:
    lines = [request_line, f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


class HttpTransport(Transport):
    """
    Send updates with ``POST {url}/update`` and check ``GET {url}/health``.

    Each thread that sends (each lane, the health thread) keeps one
    keep-alive connection of its own; each request is written in one
    ``sendall`` and its answer parsed by ``http.client``. ``timeout`` is the
    time the whole request may take: connecting, sending and every byte of
    the answer. An answer's body is read up to 64 KiB; a larger one is a
    failed delivery (``reason="too_large"``). Every failure becomes a
    :class:`~lightd_sync.DeliveryError`, with one retry: a request that went
    out on a kept-alive connection the remote had closed while idle (nothing
    of an answer came back) is sent again at once, on a new connection.

    TLS certificates are verified (``ca_bundle`` adds a private CA,
    ``client_cert``/``client_key`` give mutual TLS); ``verify: false`` is
    logged as a WARNING when the transport is created, never per request.
    Redirects are never followed: they would carry the token elsewhere.
    ``remote.proxy``, else ``HTTPS_PROXY``/``HTTP_PROXY`` minus ``NO_PROXY``,
    selects a proxy (``CONNECT`` for an ``https://`` remote). :meth:`close`
    cuts off every request in flight, connecting included; only a DNS lookup
    cannot be cut short (it ends within ``timeout``). A forked child never
    uses the parent's connections: it makes its own.

    Args:
        config: The remote config; ``url``, ``token``, ``timeout`` and the TLS
            and proxy keys are used.

    Raises:
        ConfigError: ``url`` or ``token`` is missing, or ``ca_bundle``,
            ``client_cert`` or ``client_key`` cannot be used.

    .. versionadded:: 0.1.0 TLS options, proxies, the idle-connection retry and fork safety.
    .. versionchanged:: 0.2.0 ``timeout`` bounds the whole request; answers are
       read up to 64 KiB; connections are one per thread, made by the transport.
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
        self._timeout = config.timeout
        self._token = config.token
        self._base_path = quote(parts.path.rstrip("/"), safe=_PATH_SAFE)
        host = _host_for_the_wire(parts.hostname)
        authority = _authority(host, port)
        proxy = choose_proxy(config)
        if isinstance(proxy, str):
            safe_log(log, logging.WARNING, "ignoring the proxy: %s; connecting directly", proxy)
            proxy = None
        self.proxy: Optional[Proxy] = proxy
        self._route, prefix = self._plan(config, parts.scheme, host, port, authority)
        post = request_headers(config.token, post=True)
        get = request_headers(config.token, post=False)
        if proxy is not None and parts.scheme == "http":  # absolute-form, credentials to the proxy
            post.update(proxy.headers)
            get.update(proxy.headers)
        self._post_head = _head(f"POST {prefix}{self._base_path}/update HTTP/1.1", authority, post)
        self._get_message = (
            _head(f"GET {prefix}{self._base_path}/health HTTP/1.1", authority, get) + b"\r\n"
        )
        self._book = ConnectionBook(self._route)
        # Whether send_many() pipelines: False for good once the remote closed a
        # pipelined connection early. One bool, written once: no lock needed.
        self._pipelining = True
        warn_about_security(
            self.url,
            unverified=None if config.verify else "remote.verify is false",
            proxy=self.proxy,
            proxy_url=self.proxy.url if self.proxy is not None else None,
        )

    def _plan(
        self, config: RemoteConfig, scheme: str, host: str, port: Optional[int], authority: str
    ) -> tuple[Route, str]:
        """The route to the remote, and the prefix of request targets (absolute via a proxy)."""
        port = port or (443 if scheme == "https" else 80)
        tls = tls_context(config) if scheme == "https" else None
        proxy = self.proxy
        if proxy is None:
            return Route(host, port, tls=tls, server_hostname=host if tls else None), ""
        pparts = urlsplit(proxy.url)
        assert pparts.hostname is not None  # _parse_proxy checked
        proxy_https = pparts.scheme == "https"
        pport = pparts.port or (443 if proxy_https else 80)
        proxy_tls = tls_context(config) if proxy_https else None
        if scheme == "http":  # absolute-form requests to the proxy
            return Route(
                pparts.hostname,
                pport,
                proxy_tls=proxy_tls,
                proxy_hostname=pparts.hostname if proxy_https else None,
            ), f"http://{authority}"
        if proxy_https:
            raise ConfigError(
                f"remote.proxy: an https:// proxy ({proxy.url}) for an https:// remote "
                "(TLS inside TLS) is not supported; use the proxy's http:// port: the "
                "tunnel to the remote is encrypted end to end anyway"
            )
        target = f"{_authority(host, None)}:{port}"
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        lines += [f"{k}: {v}" for k, v in proxy.headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        route = Route(
            pparts.hostname,
            pport,
            tls=tls,
            server_hostname=host,
            tunnel=target,
            tunnel_head=head,
        )
        return route, ""

    def __repr__(self) -> str:
        via = f", proxy={self.proxy.url!r}" if self.proxy is not None else ""
        return f"HttpTransport(url={self.url!r}{via})"

    # -- requests -----------------------------------------------------------

    def _exchange(self, method: str, path: str, message: bytes) -> Answer:
        what = f"{method} {self.url}{path}"
        book = self._book
        if book.closed:
            raise RemoteUnreachableError(f"{what}: the transport is closed", reason="closed")
        deadline = time.monotonic() + self._timeout
        try:
            conn = book.mine()
            try:
                return conn.exchange(message, method, deadline)
            except _IDLE_CLOSE:
                # The remote had closed that kept-alive connection while it was idle?
                if book.closed or not conn.reused or not conn.answered_nothing():
                    raise
            return conn.exchange(message, method, deadline)
        except _FAILURES as exc:
            err = delivery_error(
                exc,
                what,
                token=self._token,
                timeout=self._timeout,
                closed=book.closed,
                proxy=self.proxy.url if self.proxy is not None else None,
            )
        raise err  # outside the except block: no __context__ that may hold the token

    def _post_message(self, update: Event) -> bytes:
        body = encode_body(update)
        event_id = update.event_id
        extra = b"X-Lightd-Event-Id: " + event_id.encode("ascii") + b"\r\n" if event_id else b""
        return b"".join(
            (self._post_head, extra, b"Content-Length: ", b"%d\r\n\r\n" % len(body), body)
        )

    def send(self, update: Event) -> None:
        """POST *update* to ``{url}/update``; raise a DeliveryError unless accepted."""
        answer = self._exchange("POST", "/update", self._post_message(update))
        judge(update_verdict, "POST /update", answer, self._token)

    def send_many(self, updates: Sequence[Event]) -> list[Optional[DeliveryError]]:
        """
        POST several updates, pipelined on this thread's kept-alive connection.

        Pipelining (HTTP/1.1: the requests in one write, the answers read in
        order) starts only on a connection that has already carried a request
        and stayed open: the remote has shown it keeps connections alive.
        A remote that closes a pipelined connection before answering every
        request is sent one request at a time from then on, by this
        transport, for good; what it left unanswered is sent again at once,
        one by one, with the same event ids (a remote that de-duplicates
        sees a retry).

        .. versionadded:: 0.2.0
        """
        if len(updates) <= 1 or not self._pipelining or self._book.closed:
            return super().send_many(updates)
        results: list[Optional[DeliveryError]] = []
        try:
            conn = self._book.mine()
        except ClosedError:
            return super().send_many(updates)
        rest = list(updates)
        if conn.sock is None:  # no kept-alive connection: the first request opens one
            results += super().send_many(rest[:1])
            rest = rest[1:]
            if conn.sock is None:
                return results + super().send_many(rest)
        rest = rest[:MAX_PIPELINE]
        answers, error = conn.pipeline([self._post_message(u) for u in rest], "POST", self._timeout)
        for answer in answers:
            try:
                judge(update_verdict, "POST /update", answer, self._token)
            except DeliveryError as exc:
                results.append(exc)
            else:
                results.append(None)
        unanswered = rest[len(answers) :]
        if unanswered and not self._book.closed and not isinstance(error, DeadlineExceededError):
            self._pipelining = False
            safe_log(
                log,
                logging.INFO,
                "%s closed a pipelined connection with %d of %d requests unanswered; "
                "sending one request at a time from now on",
                self.url,
                len(unanswered),
                len(rest),
            )
        results += super().send_many(unanswered)
        return results + super().send_many(list(updates)[len(results) :])

    def check_health(self) -> None:
        """GET ``{url}/health``; raise a DeliveryError unless it answers as active."""
        answer = self._exchange("GET", "/health", self._get_message)
        judge(health_verdict, "GET /health", answer, self._token)

    def close(self) -> None:
        """Close every connection, cutting off every request in flight (connecting included)."""
        self._book.cut_off()
