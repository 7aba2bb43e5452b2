"""The transport interface."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Callable, Optional, TypeVar

from .._exceptions import DeliveryError
from .._model import Event
from .._secrets import Secrets

_F = TypeVar("_F", bound=Callable[..., Any])

__all__ = ["Transport"]


class Transport:
    """
    How updates reach the remote: the interface every transport implements.

    Only :meth:`send` is required. The engine calls :meth:`send` (or
    :meth:`send_many`) from several threads at once (never for the same server
    at once), :meth:`check_health` from its health thread, and :meth:`close`
    once, possibly while a :meth:`send` is still blocked in another thread:
    ``close`` must make such a call return promptly.

    What is sent is an *event*: an :class:`~lightd_sync.Update` (a status or
    error update) or, since 0.2.0, a :class:`~lightd_sync.BillingEvent`. Both
    have ``server``, ``event_id`` and ``body()``, the JSON object to send.

    **Batches.** :meth:`max_batch` says how many events one :meth:`send_many`
    call may carry right now; the engine never hands it more. The default is
    1: one event per call, which :meth:`send_many` passes to :meth:`send`, so a
    transport written for 0.1.0 works unchanged. The HTTP transports answer
    the remote's latest batch offer (``POST {url}/updates``, offered in the
    health answer); the file and null transports take many at once.

    A transport raises :class:`~lightd_sync.DeliveryError` (or a subclass) for
    every failure it can explain; anything else it raises is logged by the
    engine as a bug in the transport and counted as a failed delivery.

    **Secrets.** Whatever a subclass's :meth:`send`, :meth:`send_many` and
    :meth:`check_health` raise or return passes through one rule on its way
    out: the secrets of the config (the token, the proxy's password and its
    ``Proxy-Authorization`` form) are replaced by ``<token>`` in the error's
    message, arguments and text attributes, and an exception chain that shows
    one is dropped. A transport built from a config by name (``transport`` in
    ``config.json``, plugins included) gets it without writing it again.
    """

    #: Short name used in logs and in ``config.json``'s ``transport`` key.
    name = "transport"

    #: True if :meth:`check_health` is ``GET {remote.url}/health`` over HTTP(S),
    #: through the proxy and with the TLS settings that :meth:`send` uses: then
    #: ``lightd-sync check`` walks the network steps (proxy, DNS, TCP, TLS, token)
    #: with this transport. A plugin that talks HTTP sets it to True.
    #:
    #: .. versionadded:: 0.2.0
    talks_http = False

    #: The secrets no error of this transport may show (set from the config).
    _lightd_secrets: Secrets = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("send", "send_many", "check_health"):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "_lightd_guarded", False):
                setattr(cls, name, _guarded(method))

    def send(self, update: Event) -> None:
        """
        Deliver one event; return when the remote accepted it.

        Raises:
            DeliveryError: The event was not accepted.
        """
        raise NotImplementedError

    def max_batch(self) -> int:
        """
        Return how many events one :meth:`send_many` call may carry now (at least 1).

        Asked by the engine before each call, from any thread; it must be cheap
        and never block. The default, 1, means one event per call.

        .. versionadded:: 0.2.0
        """
        return 1

    def send_many(self, updates: Sequence[Event]) -> list[Optional[DeliveryError]]:
        """
        Deliver several events of different servers; say how each one went, in order.

        The engine calls it with at most :meth:`max_batch` events, never two of
        one server. The default sends them one by one with :meth:`send`; the
        HTTP transports send them as one ``POST {url}/updates`` when the remote
        offers batches.

        Returns:
            One entry per event: ``None`` if delivered, else the
            :class:`~lightd_sync.DeliveryError` it failed with.

        .. versionadded:: 0.2.0
        """
        results: list[Optional[DeliveryError]] = []
        for update in updates:
            try:
                self.send(update)
            except DeliveryError as exc:
                results.append(exc)
            else:
                results.append(None)
        return results

    def check_health(self) -> None:
        """
        Return if the remote is healthy; the default assumes it is.

        Raises:
            DeliveryError: The remote is unreachable or unhealthy.
        """

    def close(self) -> None:
        """Release resources and make any blocked :meth:`send` return. Idempotent."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()


def _guarded(method: _F) -> _F:
    """*method* with the secrets rule applied to what it raises and returns."""

    @functools.wraps(method)
    def guarded(self: Transport, *args: Any, **kwargs: Any) -> Any:
        secrets = self._lightd_secrets
        if not secrets:
            return method(self, *args, **kwargs)
        from ._errors import clean_error  # imports urllib3: only once a secret is known

        try:
            result = method(self, *args, **kwargs)
        except DeliveryError as exc:
            err = clean_error(exc, secrets)
            if err is exc:
                raise
        else:
            if isinstance(result, list):
                return [
                    clean_error(r, secrets) if isinstance(r, DeliveryError) else r for r in result
                ]
            return result
        raise err  # outside the except block: no __context__ that may hold a secret

    guarded._lightd_guarded = True  # type: ignore[attr-defined]
    return guarded  # type: ignore[return-value]
