"""
The worker pool through the public API (issue #20), the error forms (#24) and billing (#25).

Transports here are plain Python objects behind the public Transport
interface: what a worker asks of it is what the test observes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import pytest

from lightd_sync import (
    BillingEvent,
    DeliveryError,
    Outcome,
    RemoteConfig,
    RemoteUnreachableError,
    SyncEngine,
    Transport,
    Update,
)
from lightd_sync._model import Event
from lightd_sync.testing import LightdRemote, RecordingTransport

from .servers import wait_until


class Gated(Transport):
    """Sends of server ``slow`` wait for :attr:`release`; every other send returns at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.slow_started = threading.Event()
        # Guards sent: workers append while the test reads.
        self._lock = threading.Lock()
        self.sent: list[str] = []

    def send(self, update: Event) -> None:
        if update.server == "slow":
            self.slow_started.set()
            self.release.wait(30)
        with self._lock:
            self.sent.append(update.server)

    def quick(self) -> int:
        with self._lock:
            return len([s for s in self.sent if s != "slow"])


def test_a_slow_server_never_holds_up_quick_ones_with_4_workers() -> None:
    """On 0.2.0-dev the quick ones queued behind the slow request waited for it (#20)."""
    transport = Gated()
    with SyncEngine(RemoteConfig(workers=4), transport=transport) as engine:
        assert engine.update("slow", "installing")
        assert transport.slow_started.wait(10)  # a worker is now held by "slow"
        for i in range(40):
            assert engine.update(f"quick-{i % 8}", "ready")
        # Delivered while "slow" is still in flight (it waits up to 30 s).
        assert wait_until(lambda: transport.quick() == 40, timeout=10), transport.quick()
        transport.release.set()
        assert engine.flush(10)
        assert 41 == engine.stats().delivered


class Batching(Transport):
    """Takes batches of up to 10; records each request's servers."""

    def __init__(self) -> None:
        # Guards batches.
        self._lock = threading.Lock()
        self.batches: list[list[str]] = []
        self.asked = 0  # max_batch() calls: one per worker turn

    def max_batch(self) -> int:
        with self._lock:
            self.asked += 1
        return 10

    def send(self, update: Event) -> None:
        with self._lock:
            self.batches.append([update.server])

    def send_many(self, updates: Sequence[Event]) -> list[Optional[DeliveryError]]:
        with self._lock:
            self.batches.append([u.server for u in updates])
        return [None] * len(updates)


def test_batches_hold_different_servers_and_each_server_stays_in_order() -> None:
    transport = Batching()
    with SyncEngine(RemoteConfig(workers=2, queue_size=10_000), transport=transport) as engine:
        for i in range(600):
            assert engine.error(f"s{i % 30}", str(i))
        assert engine.flush(10)
        assert 600 == engine.stats().delivered
    assert all(len(b) == len(set(b)) <= 10 for b in transport.batches)
    assert any(len(b) > 1 for b in transport.batches)


def test_idle_workers_do_not_wake_up() -> None:
    transport = Batching()
    with SyncEngine(RemoteConfig(workers=4, health_interval=3600), transport=transport) as engine:
        engine.update("s", "ready")
        assert engine.flush(5)
        # 4 workers asked once each, and the one that delivered once more: all now wait.
        assert wait_until(lambda: transport.asked >= 5, timeout=5)
        asked = transport.asked
        time.sleep(0.5)  # a window for wake-ups to show (none may happen)
        assert asked == transport.asked


@pytest.mark.parametrize("timeout", [10**400, 1e308, float("inf")])
def test_close_and_flush_take_numbers_no_float_holds(timeout: float) -> None:
    """``close(10**400)`` raised OverflowError on 0.2.0-dev (#20)."""
    with SyncEngine(RemoteConfig(), transport=RecordingTransport()) as engine:
        engine.update("s", "ready")
        assert engine.flush(timeout)
        engine.close(timeout)
    assert engine.closed


# -- error forms (#24) ---------------------------------------------------------------


def test_error_takes_any_error_value_and_leaves_data_out_without_a_message() -> None:
    transport = RecordingTransport()
    with SyncEngine(RemoteConfig(), transport=transport) as engine:
        assert engine.error("s1")
        assert engine.error("s2", error="timeout")
        assert engine.error("s3", "disk full", error="no space left")
        assert engine.error("s4", "image not found")
        assert engine.lifecycle("s5", "Error")
        assert engine.flush(5)
    bodies = {u.server: u.body() for u in transport.sent}
    assert {"event": "update", "server": "s1", "error": "failed"} == bodies["s1"]
    assert {"event": "update", "server": "s2", "error": "timeout"} == bodies["s2"]
    assert {
        "event": "update",
        "server": "s3",
        "error": "no space left",
        "data": "disk full",
    } == bodies["s3"]
    assert {"event": "update", "server": "s4", "error": "failed", "data": "image not found"} == (
        bodies["s4"]
    )
    assert {"event": "update", "server": "s5", "error": "failed", "data": ""} == bodies["s5"]


@pytest.mark.parametrize(
    ("error", "exc", "words"),
    [
        ("", ValueError, "error must not be empty"),
        (5, TypeError, "error must be a str"),
        ("x" * 8193, ValueError, "at most 8192"),
    ],
)
def test_a_bad_error_value_is_refused_naming_it(error: object, exc: type, words: str) -> None:
    with SyncEngine(RemoteConfig(), transport=RecordingTransport()) as engine:
        with pytest.raises(exc, match=words):
            engine.error("s", error=error)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="message must be a str or None"):
            engine.error("s", 5)  # type: ignore[arg-type]
        assert 0 == engine.stats().submitted


def test_error_updates_reach_the_test_remote() -> None:
    remote = LightdRemote().start()
    try:
        with SyncEngine(remote.config()) as engine:
            assert engine.error("s1", "image not found")
            assert engine.flush(5)
        assert remote.wait_for("s1", "failed", timeout=5) is not None
    finally:
        remote.stop()


# -- billing (#25) --------------------------------------------------------------------


def usage(**overrides: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "memory_gb": 0.5,
        "cpu_vcpus": 0.25,
        "storage_gb": 2,
        "egress_gb": 0.01,
        "duration_hours": 1,
        "estimated_cost": 0.0123,
    }
    fields.update(overrides)
    return fields


def test_billing_events_are_each_delivered_and_reported() -> None:
    transport = RecordingTransport()
    outcomes: list[Outcome] = []
    with SyncEngine(RemoteConfig(), transport=transport, on_outcome=outcomes.append) as engine:
        for hour in range(5):
            assert engine.billing("s1", **usage(), timestamp=1_767_225_600 + hour)  # type: ignore[arg-type]
        assert engine.billing("s2", **usage())  # type: ignore[arg-type]
        assert engine.update("s1", "ready")
        assert engine.flush(5)
        assert 7 == engine.stats().delivered
    events = [u for u in transport.sent if isinstance(u, BillingEvent)]
    assert [1_767_225_600 + h for h in range(5)] == [e.timestamp for e in events[:5]]
    assert abs(events[5].timestamp - time.time()) < 3600  # None means now
    assert all(e.event_id for e in events)
    assert 6 == len([o for o in outcomes if isinstance(o.update, BillingEvent)])
    assert all(o.result == "delivered" for o in outcomes)


@pytest.mark.parametrize(
    ("field", "value", "exc"),
    [
        ("memory_gb", -1, ValueError),
        ("cpu_vcpus", "1", TypeError),
        ("estimated_cost", float("nan"), ValueError),
        ("timestamp", -5, ValueError),
    ],
)
def test_a_bad_billing_field_is_refused_naming_it(field: str, value: object, exc: type) -> None:
    with SyncEngine(RemoteConfig(), transport=RecordingTransport()) as engine:
        fields = usage()
        fields[field] = value
        with pytest.raises(exc, match=field):
            engine.billing("s", **fields)  # type: ignore[arg-type]
        assert 0 == engine.stats().submitted


class BillingDown(Transport):
    """Refuses billing events (retryable); delivers status updates."""

    def __init__(self) -> None:
        # Guards sent.
        self._lock = threading.Lock()
        self.sent: list[Event] = []

    def send(self, update: Event) -> None:
        if isinstance(update, BillingEvent):
            raise RemoteUnreachableError("billing is down", retryable=True)
        with self._lock:
            self.sent.append(update)


def test_billing_has_its_own_bound_never_delays_updates_and_is_never_resynced() -> None:
    transport = BillingDown()
    outcomes: list[Outcome] = []
    config = RemoteConfig(queue_size=5, retries=1, health_interval=0.05)
    with SyncEngine(config, transport=transport, on_outcome=outcomes.append) as engine:
        results = [engine.billing("s", **usage()) for _ in range(20)]  # type: ignore[arg-type]
        assert results.count(False) >= 1  # its own bound: queue_size billing events
        assert all(engine.update(f"u{i}", "ready") for i in range(5))  # room for updates
        assert engine.flush(10)
        assert wait_until(lambda: engine.health.healthy is True, timeout=5)
        assert engine.flush(10)
        stats = engine.stats()
        reasons = engine.outcome_reasons()
    assert 5 == len([u for u in transport.sent if isinstance(u, Update)])
    assert 0 == stats.resynced  # measurements, never re-sent as a state
    assert stats.balanced
    assert reasons[("dropped", "billing_queue_full")] == results.count(False)
    assert reasons[("failed", "unreachable")] == results.count(True)
    failed = [o for o in outcomes if o.result == "failed"]
    assert all(isinstance(o.update, BillingEvent) and o.attempts == 2 for o in failed)


# -- fork under load (#20) -------------------------------------------------------------

FORKS = 200

#: The loaded parent, in a fresh interpreter: a fork copies only lightd_sync's process,
#: not the test run's heap (a fork of the pytest process cost 2-5x as much). Prints one
#: line per child that failed, then "done".
FORKING_PARENT = """
import json, os, signal, sys, threading

from lightd_sync import RemoteConfig, SyncEngine
from lightd_sync.testing import set_testing

set_testing(True).__enter__()  # what the suite's fast_backoff fixture sets
config = RemoteConfig(**json.loads(sys.argv[1]))
forks = int(sys.argv[2])
engine = SyncEngine(config)
stop = threading.Event()


def produce(n):
    i = 0
    while not stop.is_set():
        engine.update(f"parent-{n}-{i % 7}", "installing")
        engine.error(f"parent-{n}-{i % 5}", "busy")
        i += 1


producers = [threading.Thread(target=produce, args=(n,)) for n in range(4)]
for t in producers:
    t.start()
try:
    for round_ in range(forks):
        pid = os.fork()
        if pid == 0:  # the child: deliver one update within 10 s, or die
            code = 1
            try:
                signal.alarm(10)
                ok = engine.update(f"child-{round_}", "ready") and engine.flush(8)
                engine.close(1)
                code = 0 if ok and engine.stats().delivered == 1 else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            print(f"child {round_} failed: wait status {status}", flush=True)
finally:
    stop.set()
    for t in producers:
        t.join(5)
    engine.close(0.5)  # the parent's backlog of 100,000 is not what this test is about
print("done", flush=True)
"""


@pytest.mark.timeout(240)  # 200 forks beside 4 busy threads, on a busy host
@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
@pytest.mark.parametrize("kind", ["http", "file"])
def test_a_forked_child_always_delivers_under_load(kind: str, tmp_path: Path) -> None:
    """Forked 200 times while 4 threads update: every child delivers (#20: 2 in 50 failed)."""
    from lightd_sync.testing import read_events

    remote = LightdRemote().start()  # here, in a process that waits: it answers at once
    events = tmp_path / "events.jsonl"
    config: dict[str, object] = (
        {"enabled": True, "url": remote.url, "token": remote.token, "queue_size": 100_000}
        if kind == "http"
        else {"enabled": True, "transport": "file", "path": str(events), "queue_size": 100_000}
    )
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-W",
                "ignore::DeprecationWarning",  # 3.12+: fork with threads
                "-c",
                FORKING_PARENT,
                json.dumps(config),
                str(FORKS),
            ],
            capture_output=True,
            text=True,
            timeout=200,
            check=False,
        )
    finally:
        remote.stop()
    assert (done.returncode, done.stdout) == (0, "done\n"), done.stdout + done.stderr[-3000:]
    if kind == "http":
        servers = {u["server"] for u in remote.updates}
    else:
        servers = {e["server"] for e in read_events(events)}
    children = defaultdict(int)
    for server in servers:
        if server.startswith("child-"):
            children[server] += 1
    assert {f"child-{i}" for i in range(FORKS)} == set(children)


def _workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("lightd-sync-worker-")]


def test_the_pool_is_workers_daemon_threads_and_a_reload_resizes_it_keeping_order() -> None:
    transport = RecordingTransport()
    with SyncEngine(RemoteConfig(workers=4, queue_size=10_000), transport=transport) as engine:
        assert wait_until(lambda: len(_workers()) == 4, timeout=5)
        assert all(t.daemon for t in _workers())
        for i in range(300):
            engine.error(f"s{i % 7}", str(i))
            if i == 150:
                engine.reload(RemoteConfig(workers=2, queue_size=10_000))
        assert engine.flush(10)
        assert wait_until(lambda: len(_workers()) == 2, timeout=5), _workers()
        engine.reload(RemoteConfig(workers=3, queue_size=10_000))
        assert wait_until(lambda: len(_workers()) == 3, timeout=5), _workers()
        assert 300 == engine.stats().delivered
    assert not _workers()
    for server in {u.server for u in transport.sent}:
        seq = [int(u.data or "0") for u in transport.sent if u.server == server]
        assert seq == sorted(seq), server


def test_the_engine_is_a_subpackage_of_modules_of_at_most_400_lines() -> None:
    """#20's layout: lightd_sync/_engine/, none of its modules over 400 lines."""
    import lightd_sync

    folder = Path(lightd_sync.__file__).parent / "_engine"
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in folder.glob("*.py")}
    assert len(sizes) >= 10, sizes
    assert {} == {name: size for name, size in sizes.items() if size > 400}
