"""
The receiver's background work, each in its own daemon thread stopped by ``stop()``:

- :class:`Ticker` (``lightd-sync-receiver-ticker``): writes the nodes'
  heartbeats to the database, marks silent nodes stale (queuing
  ``node_stale`` alerts), and prunes history past ``--retain-days``;
- :class:`AlertSender` (``lightd-sync-alerts``): POSTs the queued alerts to
  the webhooks with urllib3, at least once, backing off on failure. One POST
  takes :data:`WEBHOOK_TIMEOUT` at most in all (a webhook that trickles its
  answer is cut), and ``stop()`` cuts a POST in flight. Alerts
  live in the database, so they survive a restart, and a claim (a lease,
  ``FOR UPDATE SKIP LOCKED`` on PostgreSQL) sends each once for a fleet of
  receivers. Ingest only inserts rows: a dead webhook never slows it.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from typing import Any, Callable, Optional

from .._deadline import Guard, GuardedSSLSocket
from .._logutil import Throttle, get_logger, safe_log
from .._threads import start_quietly
from .audit import rfc3339
from .nodes import Heartbeats

__all__ = ["AlertSender", "Ticker"]

log = get_logger("receiver")

#: Seconds an alert claimed by a receiver is hidden from the others.
ALERT_LEASE = 60.0
#: Seconds one webhook POST may take in all (connecting, sending, the whole answer).
#: ``close()`` does not wait for a POST in flight: it cuts it (the alert is sent again).
WEBHOOK_TIMEOUT = 5.0


class _Loop:
    """A daemon thread running *step* every *interval* seconds until :meth:`stop`."""

    def __init__(self, name: str, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._failures = Throttle()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        start_quietly(self._thread)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as exc:  # the database failed: say so, try again later
                missed = self._failures.hit()
                if missed is not None:
                    safe_log(log, 30, "%s failed: %s", self._thread.name, self.describe(exc))
            self._wake.wait(self.interval)
            self._wake.clear()

    def describe(self, exc: BaseException) -> str:
        return f"{type(exc).__name__}: {exc}"

    def step(self) -> None:
        raise NotImplementedError

    def wake(self) -> None:
        """Run the next step now."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and wait for it, at most *timeout* seconds."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)


class Ticker(_Loop):
    """Heartbeats to the database, stale nodes, retention (see the module's docstring)."""

    def __init__(
        self,
        store: Any,
        heartbeats: Heartbeats,
        *,
        names: Callable[[], tuple[str, ...]],
        stale_after: float,
        retain_days: Optional[float],
        on_stale: Callable[[list[str]], None] = lambda names: None,
    ) -> None:
        super().__init__("lightd-sync-receiver-ticker", min(1.0, max(0.05, stale_after / 4)))
        self._store = store
        self._heartbeats = heartbeats
        self._names = names
        self._stale_after = stale_after
        self._retain = None if retain_days is None else retain_days * 86400.0
        self._on_stale = on_stale
        self._next_prune = 0.0  # owned by the ticker's thread

    def step(self) -> None:
        seen = self._heartbeats.take_unwritten()
        try:
            self._store.touch_nodes(seen)
        except BaseException:
            self._heartbeats.put_back(seen)
            raise
        now = time.time()
        names = self._names()
        if names:
            stale = self._store.mark_stale(now - self._stale_after, names)
            if stale:
                self._on_stale(stale)
        if self._retain is not None and time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + 600.0
            gone = self._store.retain(now - self._retain)
            if gone:
                log.info("retention: deleted %d history row(s) older than the limit", gone)


class AlertSender(_Loop):
    """POSTs queued alerts to the webhooks (see the module's docstring)."""

    def __init__(self, store: Any, *, interval: float = 0.5) -> None:
        super().__init__("lightd-sync-alerts", interval)
        import urllib3

        self._store = store
        # The transports' guard: one deadline per POST, and stop() cuts the one
        # in flight (its connections are urllib3's, reporting to the guard).
        self._guard = Guard("lightd-sync-alerts-deadline")
        tls = ssl.create_default_context()
        tls.sslsocket_class = GuardedSSLSocket  # a TLS handshake can be cut too
        self._http = urllib3.PoolManager(
            num_pools=8,
            maxsize=1,
            retries=False,
            timeout=urllib3.Timeout(total=WEBHOOK_TIMEOUT),
            headers={"User-Agent": "lightd-sync-receiver"},
            ssl_context=tls,
        )
        self._http.pool_classes_by_scheme = dict(self._guard.pool_classes)
        # Owned by the sender's thread: when to log a failing webhook again.
        self._url_failures = Throttle()

    def step(self) -> None:
        while True:
            now = time.time()
            batch = self._store.claim_alerts(now, ALERT_LEASE)
            if not batch:
                return
            for alert in batch:
                ok = self._post(alert)
                state = self._store.finish_alert(alert, ok, time.time())
                if not ok and state == "failed":
                    safe_log(
                        log,
                        30,
                        "alert %s (%s) given up after %d attempts",
                        alert["id"],
                        alert["kind"],
                        int(alert["attempts"]) + 1,
                    )
                if self._stop.is_set():
                    return

    def _post(self, alert: dict[str, Any]) -> bool:
        body = {
            "id": alert["id"],
            "kind": alert["kind"],
            "node": alert["node"],
            "server": alert["server"],
            "status": alert["status"],
            "data": alert["data"],
            "at": rfc3339(float(alert["at"])),
            "text": alert["text"],
        }
        ticket = self._guard.begin(WEBHOOK_TIMEOUT)
        try:
            answer = self._http.request(
                "POST",
                alert["url"],
                body=json.dumps(body).encode("utf-8"),
                headers={"Content-Type": "application/json"},
                redirect=False,
                preload_content=False,
            )
            try:
                answer.read(65536)
            finally:
                answer.release_conn()
            ok = 200 <= answer.status < 300
            why = f"answered {answer.status}"
        except Exception as exc:  # urllib3's errors: unreachable, timed out, cut, ...
            ok, why = False, type(exc).__name__
        finally:
            self._guard.end(ticket)
        if not ok and not self._stop.is_set():
            missed = self._url_failures.hit()
            if missed is not None:
                safe_log(
                    log, 30, "webhook %s: %s; alerts will be retried", _shown(alert["url"]), why
                )
        return ok

    def stop(self, timeout: float = 10.0) -> None:
        """Cut the POST in flight, if any, and stop the thread."""
        self._stop.set()
        self._guard.close()
        super().stop(timeout)
        self._http.clear()


def _shown(url: str) -> str:
    """A webhook URL without its path and query (they often hold a secret)."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].rpartition("@")[2]
    return f"{scheme}://{host}/…"
