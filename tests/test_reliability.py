"""The delivery policy: retries, Retry-After, superseded updates, resync, fork and exit."""

from __future__ import annotations

import contextlib
import multiprocessing
import subprocess
import sys
import textwrap
import threading
import time
from typing import Callable

import pytest

from lightd_sync import RemoteConfig, SyncEngine, SyncStats, Transport, Update
from lightd_sync._engine.policy import DeliveryPolicy
from lightd_sync._exceptions import RemoteRejectedError
from lightd_sync.testing import RecordingTransport

from .conftest import http_config
from .servers import (
    HEALTHY,
    Reply,
    Request,
    ScriptedRemote,
    SilentServer,
    lightd_threads,
    wait_until,
)


class Switchable:
    """A script whose answers a test can change while the engine runs."""

    def __init__(self, update: Reply | None = None, health: Reply = HEALTHY) -> None:
        self.update, self.health = update or Reply(), health
        self.lock = threading.Lock()  # guards the per-server answers below
        self.per_server: dict[str, list[Reply]] = {}

    def __call__(self, request: Request) -> Reply:
        if request.path.endswith("/health"):
            return self.health
        with self.lock:
            queue = self.per_server.get(request.json()["server"])
            if queue:
                return queue.pop(0)
        return self.update

    def down(self) -> None:
        self.update = self.health = Reply(status=503, body=b'{"success": false}')

    def up(self) -> None:
        self.update, self.health = Reply(), HEALTHY


def run_remote(script: Callable[[Request], Reply]) -> ScriptedRemote:
    return ScriptedRemote(script).start()


def test_backoff_is_full_jitter_capped_and_honours_retry_after() -> None:
    policy = DeliveryPolicy(backoff_base=0.5, backoff_cap=10)
    delays = [policy.backoff(a) for a in range(1, 12) for _ in range(20)]
    assert all(0 <= d <= 10 for d in delays)
    assert max(policy.backoff(1) for _ in range(50)) <= 0.5
    busy = RemoteRejectedError("busy", status=503, retry_after=7)
    decision = policy.after_failure(busy, 0)
    assert decision.retry
    assert 7 <= decision.delay
    assert 7 == decision.pause


@pytest.mark.parametrize(("status", "attempts"), [(503, 3), (502, 3), (429, 3), (500, 1), (400, 1)])
def test_only_retryable_failures_are_retried(status: int, attempts: int) -> None:
    script = Switchable(update=Reply(status=status, body=b'{"success": false}'))
    remote = run_remote(script)
    try:
        with SyncEngine(http_config(remote.url, retries=2, resync=False)) as engine:
            engine.update("s", "ready")
            assert engine.flush(5)
            assert SyncStats(submitted=1, failed=1) == engine.stats()
        assert attempts == len(remote.posts())
        ids = {r.headers["X-Lightd-Event-Id"] for r in remote.posts()}
        assert 1 == len(ids), "every attempt carries the same event id"
    finally:
        remote.stop()


def test_a_retry_succeeds_and_counts_once() -> None:
    script = Switchable()
    script.per_server["s"] = [Reply(status=503), Reply(status=502)]
    remote = run_remote(script)
    try:
        with SyncEngine(http_config(remote.url, retries=2)) as engine:
            engine.update("s", "ready")
            assert engine.flush(5)
            assert SyncStats(submitted=1, delivered=1) == engine.stats()
        assert 3 == len(remote.posts())
    finally:
        remote.stop()


def test_retries_zero_is_the_protocol_behaviour() -> None:
    script = Switchable(update=Reply(status=503))
    remote = run_remote(script)
    try:
        with SyncEngine(http_config(remote.url, retries=0, resync=False)) as engine:
            engine.update("s", "ready")
            assert engine.flush(5)
        assert 1 == len(remote.posts())
    finally:
        remote.stop()


def test_retry_after_holds_the_lane() -> None:
    """After a 429 with Retry-After: 1, the lane sends nothing for at least a second."""
    script = Switchable()
    script.per_server["s"] = [Reply(status=429, headers=(("Retry-After", "1"),))]
    remote = run_remote(script)
    try:
        with SyncEngine(http_config(remote.url, retries=1, workers=1)) as engine:
            engine.update("s", "installing")
            engine.update("t", "ready")  # same lane (workers=1): waits too, is not dropped
            assert engine.flush(5)
            assert SyncStats(submitted=2, delivered=2) == engine.stats()
        assert 3 == len(remote.posts())
    finally:
        remote.stop()


@pytest.mark.real_waits
def test_retry_after_wait_is_measured() -> None:
    script = Switchable()
    script.per_server["s"] = [Reply(status=503, headers=(("Retry-After", "1"),))]
    remote = run_remote(script)
    try:
        with SyncEngine(http_config(remote.url, retries=1, workers=1)) as engine:
            started = time.monotonic()
            engine.update("s", "ready")
            assert engine.flush(5)
            assert time.monotonic() - started >= 0.95
    finally:
        remote.stop()


def test_a_newer_update_supersedes_one_being_retried() -> None:
    """The remote only needs the latest state: a stale retry gives way to the newer update."""
    first_attempt = threading.Event()
    newer_queued = threading.Event()

    def remote(update: Update) -> None:
        if update.status == "installing":
            first_attempt.set()
            assert newer_queued.wait(5)
            raise RemoteRejectedError("busy", status=503, retryable=True)

    transport = RecordingTransport(remote)
    config = RemoteConfig(retries=5, workers=1, resync=False)
    with SyncEngine(config, transport=transport) as engine:
        engine.update("s", "installing")
        assert first_attempt.wait(5)
        engine.update("s", "ready")
        newer_queued.set()
        assert engine.flush(10)
        stats = engine.stats()
    assert 1 == stats.superseded
    assert 1 == stats.delivered
    assert stats.balanced
    assert ["installing", "ready"] == [u.status for u in transport.sent]


def test_resync_after_an_outage_sends_every_servers_latest_status() -> None:
    script = Switchable()
    script.down()
    remote = run_remote(script)
    try:
        config = http_config(remote.url, retries=0, health_interval=0.05, queue_size=20)
        with SyncEngine(config) as engine:
            for i in range(200):  # more than the queue holds: some are dropped
                engine.update(f"s{i % 40}", ["installing", "ready"][i // 100])
            assert wait_until(lambda: engine.stats().pending == 0)
            outage = engine.stats()
            assert outage.dropped > 0
            script.up()
            assert wait_until(lambda: _latest(remote) == {f"s{i}": "ready" for i in range(40)})
            assert engine.flush(5)
            stats = engine.stats()
        assert stats.balanced
        assert stats.resynced >= 40 - (outage.delivered)
    finally:
        remote.stop()


def _latest(remote: ScriptedRemote) -> dict[str, str]:
    state: dict[str, str] = {}
    for req in remote.posts():
        body = req.json()
        state[body["server"]] = body.get("status", "failed")
    return {k: v for k, v in state.items() if v}


def test_resync_off_sends_nothing_again() -> None:
    script = Switchable()
    script.down()
    remote = run_remote(script)
    try:
        config = http_config(remote.url, retries=0, health_interval=0.05, resync=False)
        with SyncEngine(config) as e:
            e.update("s", "ready")
            assert e.flush(5)
            script.up()
            before = len(remote.posts())
            assert wait_until(lambda: e.health.healthy is True)
            assert e.flush(1)
            assert before == len(remote.posts())
    finally:
        remote.stop()


def test_resync_memory_is_bounded_by_max_servers() -> None:
    """5,000 servers miss their update; once the remote is back, the 100 remembered converge."""

    class Refuse(Transport):
        def __init__(self) -> None:
            self.down = True
            # Guards up: what was sent once the remote was back.
            self.lock = threading.Lock()
            self.up: set[str] = set()

        def send(self, update: Update) -> None:
            from lightd_sync import RemoteUnreachableError

            if self.down:
                raise RemoteUnreachableError("down", retryable=True)
            with self.lock:
                self.up.add(update.server)

    transport = Refuse()
    config = RemoteConfig(max_servers=100, retries=0, queue_size=10_000, health_interval=0.2)
    with SyncEngine(config, transport=transport) as engine:
        for i in range(5000):
            engine.update(f"s{i}", "ready")
        assert engine.flush(10)
        transport.down = False
        assert wait_until(lambda: len(transport.up) == 100, timeout=10), len(transport.up)
        assert engine.flush(10)
    assert {f"s{i}" for i in range(4900, 5000)} == transport.up


def _child_uses_engine(engine: SyncEngine, conn: object) -> None:
    stats_before = engine.stats()
    engine.update("child", "ready")
    ok = engine.flush(5)
    engine.close(2)
    conn.send((stats_before.submitted, ok, engine.stats().delivered))  # type: ignore[attr-defined]


def test_fork_gives_the_child_a_fresh_engine(remote: ScriptedRemote) -> None:
    with SyncEngine(http_config(remote.url)) as engine:
        for i in range(100):
            engine.update(f"p{i % 5}", "installing")
        ctx = multiprocessing.get_context("fork")
        parent_conn, child_conn = ctx.Pipe()
        forking = (
            pytest.warns(DeprecationWarning, match="fork")
            if sys.version_info >= (3, 12)
            else contextlib.nullcontext()
        )
        with forking:
            proc = ctx.Process(target=_child_uses_engine, args=(engine, child_conn))
            proc.start()
        assert parent_conn.poll(15)
        child_submitted_before, child_flushed, child_delivered = parent_conn.recv()
        proc.join(10)
        parent_conn.close()
        child_conn.close()
        assert 0 == proc.exitcode
        assert 0 == child_submitted_before, "the child starts with empty counters"
        assert child_flushed
        assert 1 == child_delivered
        assert engine.flush(10)
        assert 100 == engine.stats().delivered, "the parent carries on untouched"
    servers = {r.json()["server"] for r in remote.posts()}
    assert "child" in servers


def _run(code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_os_fork_under_load(remote: ScriptedRemote) -> None:
    """os.fork() while producer threads submit: the child's engine works, the parent's too."""
    code = f"""
        import os, threading, sys
        from lightd_sync import RemoteConfig, SyncEngine
        TOKEN = "lightd_0123456789abcdef0123"
        e = SyncEngine(RemoteConfig(enabled=True, url="{remote.url}", token=TOKEN))
        stop = threading.Event()
        def produce():
            i = 0
            while not stop.is_set():
                e.update(f"p{{i % 9}}", "installing"); i += 1
        ts = [threading.Thread(target=produce) for _ in range(2)]
        [t.start() for t in ts]
        pid = os.fork()
        if pid == 0:
            e.update("forked-child", "ready")
            ok = e.flush(5)
            e.close(2)
            os._exit(0 if ok and e.stats().delivered == 1 else 3)
        _, status = os.waitpid(pid, 0)
        stop.set(); [t.join() for t in ts]
        assert e.flush(10), e.stats()
        e.close(2)
        assert e.stats().balanced
        sys.exit(status >> 8)
    """
    result = _run(code)
    assert 0 == result.returncode, result.stderr
    assert any(r.json()["server"] == "forked-child" for r in remote.posts())


def test_exit_never_waits_longer_than_shutdown_timeout(silent: SilentServer) -> None:
    """A process whose remote never answers exits within shutdown_timeout (plus start-up)."""
    code = f"""
        import time
        from lightd_sync import RemoteConfig, SyncEngine
        TOKEN = "lightd_0123456789abcdef0123"
        e = SyncEngine(RemoteConfig(enabled=True, url="{silent.url}", token=TOKEN,
                                    timeout=30, shutdown_timeout=0.5))
        for i in range(500):
            e.update(f"s{{i}}", "installing")
        print(time.monotonic(), flush=True)
    """
    result = _run(code)
    assert 0 == result.returncode, result.stderr
    ended = time.monotonic()
    printed = float(result.stdout.strip())
    assert ended - printed < 2.0, "the exit hook took too long"
    assert "Traceback" not in result.stderr


@pytest.mark.owns_signals
def test_close_from_a_signal_handler_does_not_deadlock(remote: ScriptedRemote) -> None:
    code = f"""
        import os, signal, threading
        from lightd_sync import RemoteConfig, SyncEngine
        TOKEN = "lightd_0123456789abcdef0123"
        e = SyncEngine(RemoteConfig(enabled=True, url="{remote.url}", token=TOKEN))
        signal.signal(signal.SIGALRM, lambda *a: e.close(1))
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        n = 0
        while not e.closed:
            e.update(f"s{{n % 50}}", "ready"); n += 1
        assert e.stats().balanced, e.stats()
        print("ok", n)
    """
    result = _run(code, timeout=20)
    assert 0 == result.returncode, result.stderr
    assert result.stdout.startswith("ok")


def test_no_thread_growth_over_many_updates_and_health_cycles(remote: ScriptedRemote) -> None:
    """A scaled-down soak: 50,000 updates and 200 health cycles, threads flat."""
    config = http_config(remote.url, health_interval=0.005, queue_size=100)
    with SyncEngine(config) as engine:
        engine.update("warm", "ready")
        ours = {t.name for t in lightd_threads()}
        assert 6 == len(ours), ours  # 4 lanes, health, the transport's deadline watchdog
        for i in range(50_000):
            engine.update(f"s{i % 100}", "installing")
        assert wait_until(lambda: len([r for r in remote.requests if r.method == "GET"]) >= 200, 20)
        assert ours == {t.name for t in lightd_threads()}
        assert engine.flush(20)
        assert engine.stats().balanced
