"""
No thread of the library takes the process's signals: the daemon's own threads do.

The kernel hands a process's signal to any thread that does not block it, and
CPython runs the handler only once the main thread runs again: a daemon whose
main thread sleeps in ``signal.pause()`` would not see a ``SIGTERM`` the kernel
gave to one of our workers (the agent's main loop hung that way, in CI).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lightd_sync import RemoteConfig, SyncEngine, receiver
from lightd_sync._threads import QUIET
from lightd_sync.testing import LightdRemote

from . import pg
from .conftest import TOKEN
from .procfs import HAS_TASKS, blocked_signals
from .servers import wait_until

pytestmark = pytest.mark.skipif(not HAS_TASKS, reason="reads /proc/self/task/TID/status (Linux)")

DAEMON_SIGNALS = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGCHLD}


def _blocked(thread: threading.Thread) -> set[int]:
    assert thread.native_id is not None
    return blocked_signals(thread.native_id)


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from pg.fresh_schema()


def _ours() -> dict[str, threading.Thread]:
    return {t.name: t for t in threading.enumerate() if t.name.startswith("lightd-sync-")}


def test_every_thread_of_the_library_leaves_the_daemons_signals_to_the_daemon(
    tmp_path: Path, pg_url: str
) -> None:
    main_before = _blocked(threading.main_thread())
    # On PostgreSQL: psycopg_pool's threads (lightd-sync-pg-N-...) are started quietly too.
    app = receiver.ReceiverApp(TOKEN, db_path=pg_url, webhooks=["http://127.0.0.1:9/hook"])
    server = receiver.serve(app, "127.0.0.1", 0).start()
    remote = LightdRemote().start()
    config = RemoteConfig(
        enabled=True, url=remote.url, token=remote.token, state_path=str(tmp_path / "state")
    )
    engine = SyncEngine(config).start()
    try:
        engine.install_sighup_reload()  # from the main thread, as documented
        for i in range(20):
            engine.update(f"s{i}", "installing")
        assert engine.flush(10)
        kinds = ("worker", "health", "reload", "deadline", "state", "wsgi", "http", "alerts", "pg")
        assert wait_until(lambda: all(any(k in n for n in _ours()) for k in kinds), 10), _ours()
        threads = _ours()
        loud = {name: sorted(DAEMON_SIGNALS - _blocked(t)) for name, t in threads.items()}
        assert {} == {name: sigs for name, sigs in loud.items() if sigs}
        assert all(QUIET <= _blocked(t) for t in threads.values())
        # ...and the daemon's thread got its mask back after starting each of them.
        assert main_before == _blocked(threading.main_thread())
    finally:
        engine.close(5)
        remote.stop()
        server.stop(5)
        app.close()
