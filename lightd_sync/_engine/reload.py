"""Reload: what a new config changed, and reloading on ``SIGHUP``."""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import Any, Callable, Optional, Union

import attrs

from .._config import RemoteConfig
from .._exceptions import LightdSyncError
from .._logutil import get_logger, safe_log
from .._threads import start_quietly
from .policy import bounded

__all__ = ["TRANSPORT_KEYS", "ReloadResult", "SighupReload"]

log = get_logger("engine")

#: Keys whose change needs a new transport; the others apply to the running one.
TRANSPORT_KEYS = frozenset(
    {"enabled", "url", "token", "transport", "path", "timeout", "workers", "verify"}
    | {"ca_bundle", "client_cert", "client_key", "proxy"}
)


@attrs.frozen
class ReloadResult:
    """
    What :meth:`SyncEngine.reload` changed.

    Attributes:
        changed: The names of the keys whose values changed, sorted.
        config: The config the engine runs on now.

    .. versionadded:: 0.1.0
    """

    changed: tuple[str, ...]
    config: RemoteConfig

    @classmethod
    def between(cls, old: RemoteConfig, new: RemoteConfig) -> ReloadResult:
        """Compare two configs key by key."""
        names = [a.name for a in attrs.fields(RemoteConfig)]
        changed = tuple(sorted(n for n in names if getattr(old, n) != getattr(new, n)))
        return cls(changed=changed, config=new)

    @property
    def token_changed(self) -> bool:
        """Whether the token changed (its value is never shown)."""
        return "token" in self.changed

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready summary: changed keys, token changed or not, config redacted."""
        return {
            "changed": list(self.changed),
            "token": "changed" if self.token_changed else "unchanged",
            "config": self.config.redacted(),
        }


_Handler = Union[Callable[[int, Optional[FrameType]], Any], int, None]


class SighupReload:
    """
    Reload on ``SIGHUP``: the handler only wakes a ``lightd-sync-reload`` thread, which reloads.

    A reload inside the handler could interrupt the engine's own ``update()``
    in the same thread. The handler that was installed before is called
    after the reload is scheduled, and :meth:`stop` puts it back (from the
    main thread; from another thread Python cannot, so ours stays and only
    calls the previous one from then on).

    Args:
        reload: Re-reads the file and applies it (``SyncEngine.reload``).
    """

    def __init__(self, reload: Callable[[], ReloadResult]) -> None:
        self._reload = reload
        self._wake = threading.Event()
        self._stopped = False
        self._previous: _Handler = None
        # Guards _installed (whether our handler is in place).
        self._lock = threading.Lock()
        self._installed = False
        self._thread = threading.Thread(target=self._run, name="lightd-sync-reload", daemon=True)

    def install(self) -> None:
        """Install the handler and start the thread (call it from the main thread)."""
        with self._lock:
            if self._installed or self._stopped:
                return
            self._installed = True
        self._previous = signal.signal(signal.SIGHUP, self._handle)
        start_quietly(self._thread)

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        self._wake.set()
        previous = self._previous
        if callable(previous):
            previous(signum, frame)

    def stop(self, deadline: float) -> bool:
        """End the thread (by *deadline*, ``time.monotonic()``) and restore the old handler."""
        self._stopped = True
        self._wake.set()
        with self._lock:
            installed, self._installed = self._installed, False
        if installed and threading.current_thread() is threading.main_thread():
            try:
                if signal.getsignal(signal.SIGHUP) == self._handle:
                    previous = self._previous
                    signal.signal(signal.SIGHUP, signal.SIG_DFL if previous is None else previous)
            except (ValueError, TypeError):  # not the main interpreter, or a foreign handler
                pass
        if self._thread.ident is None:
            return True
        self._thread.join(bounded(deadline - time.monotonic()))
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopped:
                return
            try:
                result = self._reload()
            except LightdSyncError as exc:
                safe_log(log, logging.ERROR, "SIGHUP reload failed, config unchanged: %s", exc)
            except Exception as exc:  # never let a reload end the thread
                safe_log(
                    log,
                    logging.ERROR,
                    "SIGHUP reload failed, config unchanged: %s",
                    type(exc).__name__,
                )
            else:
                safe_log(log, logging.INFO, "SIGHUP reload: %d keys changed", len(result.changed))
