"""
The HTTP transport on ``requests``: for daemons that already hold a configured ``Session``.

Same protocol, same error classes, same answer rules as the urllib3
transport: what is sent and how an answer is judged come from
:mod:`.protocol`; only the HTTP client differs. ``requests`` is an optional
dependency (``pip install lightd-sync[requests]``), imported when a transport
is built, never when this module is.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

from .._config import RemoteConfig
from .._deadline import (
    MAX_ANSWER,
    Answer,
    AnswerTooLargeError,
    DoubtfulAnswerError,
    Guard,
    read_answer,
)
from .._exceptions import ConfigError, DeliveryError, RemoteUnreachableError
from .._logutil import get_logger
from .._model import Event
from .._secrets import secrets_of
from ._batching import BatchOffer
from ._errors import Kinds, delivery_error
from ._pools import NO_DELAY, tls_context
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

    Its pools are the :class:`~lightd_sync._deadline.Guard`'s: urllib3's public connection
    classes that attach themselves to the request's deadline and are known to
    :meth:`RequestsTransport.close`, exactly as the urllib3 transport's are.
    """
    base: Any = _requests().adapters.HTTPAdapter

    class OwnAdapter(base):  # type: ignore[misc]
        def __init__(self, *, maxsize: int, guard: Guard) -> None:
            self._lightd_pools = dict(guard.pool_classes)
            # max_retries=0: urllib3 retries nothing; the engine decides about retries.
            super().__init__(pool_maxsize=maxsize, max_retries=0, pool_block=False)

        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = dict(self._lightd_pools)

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
            socks = proxy.lower().startswith("socks")  # SOCKS managers have pools of their own
            if not socks:
                kwargs.setdefault("socket_options", NO_DELAY)  # not urllib3's Nagle (40 ms)
            manager = super().proxy_manager_for(proxy, **kwargs)
            if not socks:
                manager.pool_classes_by_scheme = dict(self._lightd_pools)
            return manager

    return OwnAdapter


def _without_password(url: Optional[str]) -> Optional[str]:
    """*url* as shown: no ``user:password@``."""
    if url is None or "@" not in url:
        return url
    scheme, sep, rest = url.rpartition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"


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
            tls_context(config)  # a missing, broken or encrypted file is a ConfigError now
        self.url = config.url
        self._base = config.url.rstrip("/")
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
        self._batches = BatchOffer(self.url)  # the remote's batch offer
        self._close_lock = threading.Lock()  # one close at a time; guards setting _closed
        self._closed = False
        # (pid, session, guard): swapped whole, so a request reads a matching set.
        self._state: tuple[int, requests.Session, Guard] = self._build(session)
        self._state_lock = threading.Lock()  # guards replacing _state in a forked child
        self._lightd_secrets = secrets_of(config.token, self._proxy_url())
        self._warn_at_creation(config, session)

    def _kinds(self) -> Kinds:
        lib = _requests()
        import urllib3

        x, u3 = lib.exceptions, urllib3.exceptions
        return Kinds(
            timeout=(x.Timeout, u3.TimeoutError),
            tls=(x.SSLError, u3.SSLError),
            proxy=(x.ProxyError, u3.ProxyError),
            connect=(u3.NewConnectionError,),
            wrappers=(x.RequestException, u3.HTTPError),
        )

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

    def _build(self, session: Optional[requests.Session] = None) -> tuple[int, Any, Guard]:
        guard = Guard("lightd-sync-deadline", verify=self._verify)
        if session is not None:
            return os.getpid(), session, guard
        session = _requests().Session()
        adapter = _own_adapter_class()(maxsize=self._maxsize, guard=guard)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return os.getpid(), session, guard

    def _warn_at_creation(self, config: RemoteConfig, session: Optional[requests.Session]) -> None:
        unverified = None
        if not config.verify:
            unverified = "remote.verify is false"
        elif session is not None and session.verify is False:
            unverified = "the session has verify=False"
        shown = _without_password(self._proxy)
        warn_about_security(
            self.url,
            unverified=unverified,
            proxy=shown,
            proxy_url=_without_password(self._proxy_url()),
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
        via = f", proxy={_without_password(self._proxy)!r}" if self._proxy is not None else ""
        whose = "own" if self._owned else "given"
        return f"RequestsTransport(url={self.url!r}{via}, session={whose})"

    def __enter__(self) -> RequestsTransport:
        return self

    @property
    def session(self) -> requests.Session:
        """The session requests go out on (the given one, or the one built here)."""
        return self._current()[1]

    @property
    def _guard(self) -> Guard:
        return self._current()[2]

    # -- requests -----------------------------------------------------------

    def _current(self) -> tuple[int, requests.Session, Guard]:
        """This process's session: a forked child replaces the parent's (the one fork check)."""
        state = self._state
        if state[0] == os.getpid():
            return state
        self._state_lock = threading.Lock()  # the parent may have held them at fork time
        self._close_lock = threading.Lock()
        with self._state_lock:
            old = self._state
            if old[0] != os.getpid():
                # The inherited connections are the parent's too: forget them (never
                # shutdown()); a session built here is rebuilt, a given one is yours.
                old[2].forget()
                self._state = self._build(None if self._owned else old[1])
                if self._closed:
                    self._state[2].close()
            return self._state

    def _request(
        self, method: str, path: str, body: Optional[bytes], headers: dict[str, str]
    ) -> Answer:
        what = f"{method} {self._base}{path}"
        _, session, guard = self._current()
        if self._closed:
            raise RemoteUnreachableError(f"{what}: the transport is closed", reason="closed")
        import urllib3

        ticket = guard.begin(self._timeout)
        response = None
        try:
            try:
                response = session.request(
                    method,
                    self._base + path,
                    data=body,
                    headers=headers,
                    auth=self._auth,
                    **self._send_kw,
                )
                # A given session's connection too, now that it is known: the body's reads.
                guard.watchdog.attach(ticket, getattr(response.raw, "connection", None))
                if response.is_redirect:  # requests itself read the body, looking ahead
                    content = response.content[:MAX_ANSWER]
                    answer = Answer(response.status_code, content, response.headers)
                else:
                    answer = read_answer(response.raw, ticket)
            finally:
                guard.end(ticket)
                if response is not None:
                    response.close()
        except (
            OSError,
            ValueError,
            urllib3.exceptions.HTTPError,
            AnswerTooLargeError,
            DoubtfulAnswerError,
        ) as exc:
            err = delivery_error(
                exc,
                what,
                secrets=self._lightd_secrets,
                timeout=self._timeout,
                closed=self._closed,
                timed_out=ticket.expired,
                proxy=_without_password(self._proxy),
                kinds=self._kinds(),
            )
        else:
            return answer
        raise err  # outside the except block: no __context__ that may hold a secret

    def send(self, update: Event) -> None:
        """POST *update* to ``{url}/update``; raise a DeliveryError unless accepted."""
        headers = self._post_headers
        if update.event_id is not None:
            headers = {**headers, "X-Lightd-Event-Id": update.event_id}
        answer = self._request("POST", "/update", encode_body(update), headers)
        judge(update_verdict, "POST /update", answer, self._lightd_secrets)

    def max_batch(self) -> int:
        """``min(batch.max, 500)`` while the latest health answer offers batches, else 1."""
        return self._batches.max_batch()

    def send_many(self, updates: Sequence[Event]) -> list[Optional[DeliveryError]]:
        """
        Send *updates* as one ``POST {url}/updates`` while the remote offers batches.

        The same rules as :meth:`HttpTransport.send_many <lightd_sync.HttpTransport.send_many>`.

        .. versionadded:: 0.2.0
        """
        return self._batches.send_many(
            updates,
            post=lambda body: self._request("POST", "/updates", body, self._post_headers),
            one_by_one=lambda events: Transport.send_many(self, events),
            secrets=self._lightd_secrets,
        )

    def check_health(self) -> None:
        """GET ``{url}/health``; raise a DeliveryError unless it answers as active."""
        answer = self._request("GET", "/health", None, self._get_headers)
        self._batches.heard(answer)  # each health answer replaces the offer
        judge(health_verdict, "GET /health", answer, self._lightd_secrets)

    def close(self) -> None:
        """
        Stop sending. A session built here is closed, waking a request blocked in it.

        A given session is left open: it belongs to the caller.
        """
        if self._state[0] != os.getpid():
            self._close_lock = threading.Lock()  # a forked child: the parent may have held it
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        pid, session, guard = self._state
        if pid != os.getpid():
            guard.forget()  # never shut down sockets a parent process owns
            return
        if self._owned:
            guard.close()
            session.close()
        else:
            guard.watchdog.close()


_IDENTITY = {"Accept-Encoding": "identity"}
