"""remote.state_path end to end: real processes, kill -9, a real remote on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import attrs
import pytest

from lightd_sync import ConfigError, RemoteConfig, SyncEngine
from lightd_sync._engine.state_file import summary
from lightd_sync.testing import RecordingTransport

from .conftest import TOKEN, LogCapture, http_config
from .servers import ScriptedRemote, refused_url, wait_until

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX only")

# The producer: updates 20 servers to "ready" while the remote is down, prints
# "accepted" and waits to be killed (it never closes the engine).
PRODUCER = textwrap.dedent(
    """
    import sys, time
    from lightd_sync import RemoteConfig, SyncEngine
    url, token, path = sys.argv[1:4]
    config = RemoteConfig(enabled=True, url=url, token=token, state_path=path,
                          retries=0, health_interval=60)
    engine = SyncEngine(config)
    for i in range(20):
        engine.update(f"s{i}", "installing")
        engine.update(f"s{i}", "ready")
    engine.error("s-err", "image not found")
    print("accepted", flush=True)
    time.sleep(60)
    """
)


def _run_producer(url: str, path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", PRODUCER, url, TOKEN, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _latest(remote: ScriptedRemote) -> dict[str, tuple[str, str]]:
    seen: dict[str, tuple[str, str]] = {}
    for r in remote.posts():
        body = r.json()
        seen[body["server"]] = (body.get("status") or body["error"], r.headers["X-Lightd-Event-Id"])
    return seen


def test_kill_9_during_an_outage_then_restart_converges(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    proc = _run_producer(refused_url(), path)
    try:
        assert proc.stdout is not None
        assert "accepted" == proc.stdout.readline().strip()
        # Past the documented window (flush_interval + one write): all 21 rows are in the file.
        assert wait_until(lambda: path.exists() and summary(str(path)) == (21, 21), timeout=10)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
    remote = ScriptedRemote().start()
    try:
        config = http_config(remote.url, state_path=str(path), health_interval=0.2)
        with SyncEngine(config) as engine:
            assert wait_until(lambda: len(_latest(remote)) == 21, timeout=10)
            assert engine.flush(5)
            stats = engine.stats()
            assert 21 == stats.resynced == stats.delivered
        latest = _latest(remote)
        assert {f"s{i}" for i in range(20)} | {"s-err"} == set(latest)
        assert all(status == "ready" for s, (status, _) in latest.items() if s != "s-err")
        assert "failed" == latest["s-err"][0]
        assert (21, 0) == summary(str(path)), "every row is acknowledged now"
    finally:
        remote.stop()


def test_acknowledged_servers_are_not_re_sent_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    remote = ScriptedRemote().start()
    try:
        config = http_config(remote.url, state_path=str(path))
        with SyncEngine(config) as engine:
            for i in range(5):
                engine.update(f"s{i}", "ready")
            assert engine.flush(5)
        assert (5, 0) == summary(str(path))
        before = len(remote.posts())
        with SyncEngine(config) as engine:
            assert wait_until(lambda: engine.health.healthy is True)
            assert engine.flush(1)
            assert 0 == engine.stats().resynced
        assert before == len(remote.posts())
    finally:
        remote.stop()


def test_a_resent_update_keeps_its_stored_event_id(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    down = http_config(refused_url(), state_path=str(path), retries=0)
    with SyncEngine(down) as engine:
        engine.update("s1", "ready")
        assert engine.flush(5)
    assert (1, 1) == summary(str(path)), "close() wrote what was accepted"
    transport = RecordingTransport()
    up = attrs.evolve(down, health_interval=0.2)
    with SyncEngine(up, transport=transport) as engine:
        assert wait_until(lambda: len(transport.sent) == 1)
        first_id = transport.sent[0].event_id
        assert engine.flush(5)
    assert first_id is not None
    with SyncEngine(up, transport=RecordingTransport()) as engine:
        pass
    assert (1, 0) == summary(str(path))


def test_a_second_engine_on_the_file_is_refused_naming_the_holder(tmp_path: Path) -> None:
    config = http_config(refused_url(), state_path=str(tmp_path / "state.db"))
    with SyncEngine(config):
        with pytest.raises(ConfigError, match=rf"remote\.state_path.*{os.getpid()}"):
            SyncEngine(config)
        code = (
            "import sys\n"
            "from lightd_sync import RemoteConfig, SyncEngine, ConfigError\n"
            f"config = RemoteConfig(enabled=True, url={config.url!r}, token={TOKEN!r},"
            f" state_path={config.state_path!r})\n"
            "try:\n    SyncEngine(config)\nexcept ConfigError as exc:\n"
            "    print(exc); sys.exit(3)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
        )
        assert 3 == result.returncode, result.stderr
        assert str(os.getpid()) in result.stdout
        assert TOKEN not in result.stdout + result.stderr
    with SyncEngine(config):  # released by close()
        pass


def test_disabled_sync_opens_no_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with SyncEngine(RemoteConfig(enabled=False, state_path=str(path))) as engine:
        engine.update("s", "ready")
        assert engine.flush(5)
    assert not list(tmp_path.iterdir())


def test_a_bad_state_file_is_logged_and_delivery_goes_on(
    tmp_path: Path, remote: ScriptedRemote, logs: LogCapture
) -> None:
    config = http_config(remote.url, state_path=str(tmp_path / "missing" / "state.db"))
    with SyncEngine(config) as engine:
        assert engine.update("s", "ready")
        assert engine.flush(5)
        assert 1 == engine.stats().delivered
    errors = [m for m in logs.messages() if "remote.state_path" in m]
    assert 1 == len(errors), errors


def test_reload_refuses_to_move_the_state_file(tmp_path: Path) -> None:
    config = http_config(refused_url(), state_path=str(tmp_path / "a.db"))
    with SyncEngine(config) as engine:
        with pytest.raises(ConfigError, match=r"remote\.state_path: cannot change"):
            engine.reload(attrs.evolve(config, state_path=str(tmp_path / "b.db")))
        assert engine.config.state_path == config.state_path


def test_the_file_stays_small_and_bounded_by_max_servers(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    config = http_config(
        refused_url(), state_path=str(path), max_servers=50, retries=0, queue_size=10_000
    )
    with SyncEngine(config, transport=RecordingTransport()) as engine:
        for i in range(2000):
            engine.update(f"s{i}", "ready")
        assert engine.flush(10)
    assert (50, 0) == summary(str(path)), "the 50 most recently updated, all acknowledged"


# -- the error value (#24) and billing events (#25) -----------------------------------


class _Down(RecordingTransport):
    """Every send fails, as a remote that is down."""

    def send(self, update: object) -> None:
        from lightd_sync import RemoteUnreachableError

        raise RemoteUnreachableError("down", retryable=True)


def test_the_state_file_keeps_the_error_value_and_a_restart_re_sends_it(tmp_path: Path) -> None:
    from lightd_sync import BillingEvent, Update

    config = RemoteConfig(
        enabled=True, transport="null", state_path=str(tmp_path / "state.db"), retries=0
    )
    with SyncEngine(config, transport=_Down()) as engine:
        assert engine.error("s1", error="timeout")
        assert engine.error("s2", "disk full", error="no space left")
        assert engine.billing(
            "s3",
            memory_gb=1,
            cpu_vcpus=1,
            storage_gb=1,
            egress_gb=0,
            duration_hours=1,
            estimated_cost=0.1,
        )
        assert engine.flush(5)
    assert (2, 2) == summary(str(tmp_path / "state.db"))  # no row for a billing event
    transport = RecordingTransport()
    with SyncEngine(config, transport=transport) as engine:
        assert engine.check_health().healthy
        assert engine.flush(5)
        assert 2 == engine.stats().resynced
    bodies = {u.server: u.body() for u in transport.sent if isinstance(u, Update)}
    assert {"event": "update", "server": "s1", "error": "timeout"} == bodies["s1"]
    assert {"event": "update", "server": "s2", "error": "no space left", "data": "disk full"} == (
        bodies["s2"]
    )
    assert not [u for u in transport.sent if isinstance(u, BillingEvent)]


def test_a_layout_1_state_file_gets_the_error_column(tmp_path: Path) -> None:
    """A file of 0.2.0-dev (layout 1, no error column) is migrated, its rows kept."""
    import sqlite3

    from lightd_sync._engine.state import StateStore
    from lightd_sync._engine.state_file import APPLICATION_ID

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE lightd_sync_state (server TEXT PRIMARY KEY NOT NULL,"
        " status TEXT NOT NULL, data TEXT, event_id TEXT NOT NULL, acked INTEGER NOT NULL,"
        " seq INTEGER NOT NULL) WITHOUT ROWID;"
        "CREATE INDEX lightd_sync_state_seq ON lightd_sync_state (seq);"
        f"PRAGMA application_id={APPLICATION_ID}; PRAGMA user_version=1;"
        "INSERT INTO lightd_sync_state VALUES ('s1', 'failed', 'boom', 'e1', 0, 1);"
    )
    conn.close()
    store = StateStore(str(path), max_servers=10)
    [row] = store.open()
    assert ("s1", "failed", "boom", "e1", None) == (
        row.server,
        row.status.value,
        row.data,
        row.event_id,
        row.error,
    )
    store.close(5.0)
    conn = sqlite3.connect(path)
    try:
        assert 2 == conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()
