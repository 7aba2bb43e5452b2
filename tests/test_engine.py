"""SyncEngine against real local servers: order, bounds, counting, health, close."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict

import pytest

from lightd_sync import (
    ConfigError,
    DeliveryError,
    HealthState,
    Lifecycle,
    NullTransport,
    RemoteConfig,
    Status,
    SyncEngine,
    SyncStats,
    Transport,
    Update,
)

from .conftest import TOKEN, LogCapture, http_config
from .servers import Reply, ScriptedRemote, SilentServer, lightd_threads, refused_url, wait_until


def invariant(stats: SyncStats) -> bool:
    return stats.submitted == stats.delivered + stats.failed + stats.dropped + stats.pending


class BlockingTransport(Transport):
    """Holds every send until released; records what it was given."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.sent: list[Update] = []
        self._lock = threading.Lock()  # guards sent

    def send(self, update: Update) -> None:
        if not self.release.wait(10):
            raise DeliveryError("never released")
        with self._lock:
            self.sent.append(update)

    def close(self) -> None:
        self.release.set()


def test_updates_arrive_and_are_counted(remote: ScriptedRemote) -> None:
    with SyncEngine(http_config(remote.url)) as engine:
        assert engine.update("a", "installing")
        assert engine.update("a", Status.READY)
        assert engine.error("b", "image not found")
        assert engine.flush(5)
        assert SyncStats(submitted=3, delivered=3) == engine.stats()
    bodies = [r.json() for r in remote.posts()]
    assert [b.get("status", b.get("error")) for b in bodies if b["server"] == "a"] == [
        "installing",
        "ready",
    ]


def test_per_server_order_under_eight_producers(remote: ScriptedRemote) -> None:
    """Each server's updates reach the remote in the order they were submitted."""
    per_producer = 150
    statuses = ["installing", "ready", "failed"]

    def produce(engine: SyncEngine, p: int) -> None:
        for i in range(per_producer):
            # Producer p owns servers p-0..p-4; the sequence number rides in the status cycle.
            server = f"p{p}-s{i % 5}"
            assert engine.update(server, statuses[(i // 5) % 3])

    with SyncEngine(http_config(remote.url, workers=4, queue_size=10_000)) as engine:
        producers = [threading.Thread(target=produce, args=(engine, p)) for p in range(8)]
        for t in producers:
            t.start()
        for t in producers:
            t.join(10)
        assert engine.flush(20)
        assert 8 * per_producer == engine.stats().delivered
    seen: dict[str, list[str]] = defaultdict(list)
    for req in remote.posts():
        body = req.json()
        seen[body["server"]].append(body["status"])
    for server, got in seen.items():
        expected = [
            statuses[(i // 5) % 3] for i in range(per_producer) if f"s{i % 5}" == server[-2:]
        ]
        assert expected == got, server


def test_one_server_is_never_sent_twice_at_once() -> None:
    """A lane sends one update of a server at a time, even with many workers."""
    active: dict[str, int] = defaultdict(int)
    overlaps: list[str] = []
    lock = threading.Lock()

    class Probe(Transport):
        def send(self, update: Update) -> None:
            with lock:
                active[update.server] += 1
                if active[update.server] > 1:
                    overlaps.append(update.server)
            time.sleep(0.0005)
            with lock:
                active[update.server] -= 1

    with SyncEngine(RemoteConfig(workers=8), transport=Probe()) as engine:
        for i in range(400):
            engine.update(f"s{i % 3}", "ready")
        assert engine.flush(10)
    assert [] == overlaps


def test_overflow_is_dropped_counted_and_logged_once(logs: LogCapture) -> None:
    """16 producers against a full queue: drops counted, invariant holds, one log line."""
    blocking = BlockingTransport()
    config = RemoteConfig(workers=2, queue_size=50)
    samples: list[SyncStats] = []
    with SyncEngine(config, transport=blocking) as engine:
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(engine.stats())

        sampler = threading.Thread(target=sample)
        sampler.start()
        results: list[bool] = []

        def produce(p: int) -> None:
            out = [engine.update(f"s{p}-{i % 7}", "installing") for i in range(200)]
            results.extend(out)

        producers = [threading.Thread(target=produce, args=(p,)) for p in range(16)]
        for t in producers:
            t.start()
        for t in producers:
            t.join(10)
        mid = engine.stats()
        blocking.release.set()
        assert engine.flush(10)
        stop.set()
        sampler.join(5)
        final = engine.stats()
    assert 16 * 200 == mid.submitted
    assert 50 == mid.pending, "exactly queue_size updates wait"
    assert results.count(True) == final.delivered == 50
    assert results.count(False) == final.dropped
    assert all(invariant(s) for s in [*samples, mid, final])
    drop_lines = [m for m in logs.messages() if "dropped" in m]
    assert 2 == len(drop_lines), "the first drop, then one summary (here: at close)"
    assert "queue is full (50)" in drop_lines[0]
    counted = sum(int(m.split("dropped ")[1].split()[0]) for m in drop_lines[:1])
    counted += int(drop_lines[1].split()[2])
    assert final.dropped == counted


def test_close_returns_by_its_deadline_against_a_silent_server(silent: SilentServer) -> None:
    """close(1) returns within ~1 s although every request hangs, and no thread remains."""
    engine = SyncEngine(http_config(silent.url, timeout=30, workers=2))
    for i in range(100):
        engine.update(f"s{i}", "installing")
    assert silent.accepted.acquire(timeout=5)
    started = time.monotonic()
    engine.close(timeout=1.0)
    elapsed = time.monotonic() - started
    assert elapsed < 1.1, elapsed
    assert [] == lightd_threads()
    stats = engine.stats()
    assert invariant(stats)
    assert 0 == stats.pending
    assert 100 == stats.failed


def test_close_delivers_what_is_queued(remote: ScriptedRemote) -> None:
    engine = SyncEngine(http_config(remote.url))
    for i in range(200):
        engine.update(f"s{i % 10}", "ready")
    engine.close(timeout=10)
    assert 200 == engine.stats().delivered
    assert 200 == len(remote.posts())


def test_updates_after_close_are_dropped(remote: ScriptedRemote) -> None:
    engine = SyncEngine(http_config(remote.url))
    engine.close()
    engine.close()  # idempotent
    assert not engine.update("s", "ready")
    assert SyncStats(submitted=1, dropped=1) == engine.stats()
    assert [] == lightd_threads()


def test_flush_times_out_while_the_remote_holds_requests() -> None:
    blocking = BlockingTransport()
    with SyncEngine(RemoteConfig(), transport=blocking) as engine:
        engine.update("s", "ready")
        started = time.monotonic()
        assert not engine.flush(0.2)
        assert 0.15 < time.monotonic() - started < 2
        blocking.release.set()
        assert engine.flush(5)


def test_failures_are_counted_and_logged_without_flooding(logs: LogCapture) -> None:
    with SyncEngine(http_config(refused_url(), workers=1, retries=0)) as engine:
        for i in range(50):
            engine.update(f"s{i}", "ready")
        assert engine.flush(10)
        assert SyncStats(submitted=50, failed=50) == engine.stats()
    failures = [m for m in logs.messages(logging.ERROR) if "update of" in m or "more updates" in m]
    assert 1 <= len(failures) <= 3, failures
    assert "cannot connect" in failures[0]


@pytest.mark.parametrize(
    ("status", "needle"),
    [(401, "verify that the tokens match on both sides"), (500, "HTTP 500")],
)
def test_health_changes_are_logged_once(status: int, needle: str, logs: LogCapture) -> None:
    state = {"status": status}

    def script(request: object) -> Reply:
        if state["status"] == 200:
            return Reply(body=b'{"status": 200, "endpoint": "active"}')
        return Reply(status=state["status"], body=b'{"success": false}')

    server = ScriptedRemote(script).start()
    try:
        with SyncEngine(http_config(server.url, health_interval=0.02)) as engine:
            assert wait_until(lambda: engine.health.consecutive_failures >= 5)
            assert engine.health.healthy is False
            assert needle in (engine.health.error or "")
            state["status"] = 200
            assert wait_until(lambda: engine.health.healthy is True)
            healthy = engine.health
            assert 0 == healthy.consecutive_failures
            assert healthy.latency is not None and healthy.latency >= 0
    finally:
        server.stop()
    unhealthy_lines = [m for m in logs.messages() if "unhealthy" in m]
    assert 1 == len(unhealthy_lines), unhealthy_lines
    assert needle in unhealthy_lines[0]
    assert any("healthy again" in m for m in logs.messages(logging.INFO))


def test_check_health_is_synchronous(remote: ScriptedRemote) -> None:
    engine = SyncEngine(http_config(remote.url))
    try:
        assert HealthState() == engine.health
        state = engine.check_health()
        assert state.healthy is True
        assert state == engine.health
        # The http transport's deadline watchdog (one per transport, shared with the
        # requests transport since issue 19) is the only thread: no lane, no timer.
        names = [t.name for t in lightd_threads()]
        assert names in ([], ["lightd-sync-deadline"]), "a synchronous check starts no lane"
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("server", "status", "error"),
    [
        ("", "ready", ValueError),
        (None, "ready", TypeError),
        (42, "ready", TypeError),
        ("x" * 256, "ready", ValueError),
        ("bad\nid", "ready", ValueError),
        ("ok", "done", ValueError),
        ("ok", None, TypeError),
        ("ok", ["ready"], TypeError),
    ],
)
def test_bad_arguments_raise_at_once(server: object, status: object, error: type) -> None:
    with SyncEngine(RemoteConfig()) as engine:
        with pytest.raises(error):
            engine.update(server, status)  # type: ignore[arg-type]
        assert SyncStats() == engine.stats(), "a rejected call is not submitted"


def test_lifecycle_arguments() -> None:
    with SyncEngine(RemoteConfig()) as engine:
        assert engine.lifecycle("s", "Started")
        assert engine.lifecycle("s", Lifecycle.ERROR)
        with pytest.raises(ValueError, match=r"only sent with Lifecycle\.ERROR"):
            engine.lifecycle("s", Lifecycle.READY, "data")
        with pytest.raises(ValueError, match="unknown lifecycle event"):
            engine.lifecycle("s", "Exploded")
        with pytest.raises(TypeError):
            engine.error("s", 3)  # type: ignore[arg-type]


def test_disabled_config_uses_the_null_transport() -> None:
    engine = SyncEngine(RemoteConfig(enabled=False, transport="http"))
    assert isinstance(engine.transport, NullTransport)
    engine.close()


def test_unknown_transport_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown transport 'carrier-pigeon'; available: file"):
        SyncEngine(RemoteConfig(enabled=True, transport="carrier-pigeon"))


def test_a_broken_transport_is_counted_not_raised(logs: LogCapture) -> None:
    class Broken(Transport):
        def send(self, update: Update) -> None:
            raise RuntimeError("bug in plugin")

        def check_health(self) -> None:
            raise RuntimeError("bug in plugin")

    with SyncEngine(RemoteConfig(), transport=Broken()) as engine:
        assert engine.update("s", "ready")
        assert engine.flush(5)
        assert 1 == engine.stats().failed
        assert engine.check_health().healthy is False
    assert any("bug in plugin" in m for m in logs.messages(logging.ERROR))


def test_the_token_never_reaches_logs_or_repr(silent: SilentServer, logs: LogCapture) -> None:
    engine = SyncEngine(http_config(silent.url, timeout=0.2, workers=1))
    assert TOKEN not in repr(engine)
    assert TOKEN not in repr(engine.config)
    assert TOKEN not in str(engine.config.redacted())
    engine.update("s", "ready")
    engine.flush(3)
    engine.check_health()
    engine.close(1)
    assert logs.messages(logging.ERROR)
    assert TOKEN not in logs.text()


def test_from_file(tmp_path: pytest.TempPathFactory, remote: ScriptedRemote) -> None:
    path = tmp_path / "config.json"  # type: ignore[operator]
    path.write_text(
        '{"authorization": {"token": "x"}, "remote": {"enabled": true, '
        f'"url": "{remote.url}", "token": "{TOKEN}"}}}}'
    )
    with SyncEngine.from_file(path) as engine:
        assert remote.url == engine.config.url
        assert engine.update("s", "ready")
        assert engine.flush(5)
    assert 1 == len(remote.posts())


def test_latency_histogram_counts_deliveries(remote: ScriptedRemote) -> None:
    with SyncEngine(http_config(remote.url)) as engine:
        assert 0 == engine.latency_histogram().count
        for i in range(30):
            engine.update(f"s{i}", "ready")
        assert engine.flush(5)
        hist = engine.latency_histogram()
    assert 30 == hist.count == sum(hist.counts)
    assert 30 == hist.cumulative()[-1][1]
    assert hist.total > 0
    assert [b for b, _ in hist.cumulative()][:-1] == list(hist.bounds)
