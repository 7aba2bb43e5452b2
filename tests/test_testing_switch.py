"""The in-memory testing kit: RecordingTransport, set_testing, SIGHUP chaining, log extras."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from lightd_sync import (
    Outcome,
    RemoteConfig,
    RemoteRejectedError,
    SyncEngine,
    Update,
)
from lightd_sync._engine import policy as _policy
from lightd_sync.testing import RecordingTransport, set_testing

from .conftest import TOKEN, LogCapture
from .servers import wait_until


def test_recording_transport_records_rejected_attempts_and_scripts_the_remote() -> None:
    calls = []

    def busy_once(update: Update) -> None:
        calls.append(update)
        if len(calls) == 1:
            raise RemoteRejectedError("busy", status=503, retryable=True)

    transport = RecordingTransport(busy_once)
    assert transport.healthy is True
    with SyncEngine(RemoteConfig(retries=2), transport=transport) as engine:
        engine.update("s1", "ready")
        assert engine.flush(5)
        assert 1 == engine.stats().delivered
    assert 2 == len(transport.sent), "the rejected attempt is recorded too"
    assert transport.sent[0].event_id == transport.sent[1].event_id
    transport.clear()
    assert [] == transport.sent


def test_recording_transport_health_is_settable() -> None:
    transport = RecordingTransport()
    with SyncEngine(RemoteConfig(), transport=transport) as engine:
        assert engine.check_health().healthy is True
        transport.healthy = False
        state = engine.check_health()
        assert state.healthy is False
        assert "unhealthy" in (state.error or "")


def test_recording_transport_refuses_a_handler_that_is_not_callable() -> None:
    with pytest.raises(TypeError, match="handler must be callable"):
        RecordingTransport(42)  # type: ignore[arg-type]


def test_set_testing_is_a_call_and_a_context_manager_that_restores() -> None:
    with set_testing(False):
        assert _policy.testing_mode() is False
        with set_testing():
            assert _policy.testing_mode() is True
            with set_testing(False):
                assert _policy.testing_mode() is False
            assert _policy.testing_mode() is True
        assert _policy.testing_mode() is False
        set_testing(True)
        assert _policy.testing_mode() is True
        set_testing(False)


@pytest.mark.real_waits
def test_testing_mode_applies_to_a_running_engine_and_cuts_retry_after() -> None:
    def slow_remote(update: Update) -> None:
        if update.status == "installing":
            raise RemoteRejectedError("wait", status=503, retryable=True, retry_after=60)

    transport = RecordingTransport(slow_remote)
    config = RemoteConfig(retries=3, workers=1, resync=False)
    with SyncEngine(config, transport=transport) as engine:
        engine.update("s", "installing")
        assert wait_until(lambda: len(transport.sent) >= 1)
        assert not engine.flush(0.3), "a 60 s Retry-After holds the retry"
        started = time.monotonic()
        with set_testing():
            assert engine.flush(5)
        assert time.monotonic() - started < 2
    assert 4 == len(transport.sent), "retries still happen, instantly"


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX only")
def test_sighup_reload_calls_the_previous_handler_and_close_restores_it(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"remote": {"enabled": false, "queue_size": 10}}')
    seen = []

    def previous(signum: int, frame: object) -> None:
        seen.append(signum)

    old = signal.signal(signal.SIGHUP, previous)
    try:
        engine = SyncEngine.from_file(path, transport=RecordingTransport())
        engine.install_sighup_reload()
        path.write_text('{"remote": {"enabled": false, "queue_size": 20}}')
        os.kill(os.getpid(), signal.SIGHUP)
        assert wait_until(lambda: engine.config.queue_size == 20)
        assert wait_until(lambda: seen == [signal.SIGHUP])
        engine.close(2)
        assert signal.getsignal(signal.SIGHUP) is previous
    finally:
        signal.signal(signal.SIGHUP, old)


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX only")
def test_sighup_reload_thread_survives_any_reload_error(tmp_path: Path, logs: LogCapture) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"remote": {"enabled": false}}')
    old = signal.getsignal(signal.SIGHUP)
    try:
        engine = SyncEngine.from_file(path, transport=RecordingTransport())
        engine.install_sighup_reload()
        for text in ["{not json", '{"remote": {"url": "http://h\\u0000x"}}', "[]"]:
            path.write_text(text)
            before = len(logs.messages())
            os.kill(os.getpid(), signal.SIGHUP)
            assert wait_until(lambda b=before: len(logs.messages()) > b)
        path.write_text('{"remote": {"enabled": false, "queue_size": 33}}')
        os.kill(os.getpid(), signal.SIGHUP)
        assert wait_until(lambda: engine.config.queue_size == 33)
        engine.close(2)
    finally:
        signal.signal(signal.SIGHUP, old)


def test_log_records_about_an_update_carry_extra_fields(logs: LogCapture) -> None:
    def reject(update: Update) -> None:
        raise RemoteRejectedError("nope", status=422)

    with SyncEngine(RemoteConfig(), transport=RecordingTransport(reject)) as engine:
        engine.update("srv-1", "ready")
        assert engine.flush(5)
    about = [r for r in logs.records if getattr(r, "lightd_server", None) == "srv-1"]
    assert any(r.levelno == logging.DEBUG for r in about), "each attempt is logged at DEBUG"
    failed = [r for r in about if r.levelno == logging.ERROR]
    assert failed
    assert "ready" == failed[0].lightd_status
    assert failed[0].lightd_event_id
    assert 422 == failed[0].lightd_http_status


def test_reason_counts_sum_to_the_totals() -> None:
    gate = threading.Event()

    def remote(update: Update) -> None:
        gate.wait(5)
        raise RemoteRejectedError("down", status=500)

    outcomes: list[Outcome] = []
    engine = SyncEngine(
        RemoteConfig(queue_size=5, workers=1, retries=0),
        transport=RecordingTransport(remote),
        on_outcome=outcomes.append,
    )
    with engine:
        for i in range(20):
            engine.update(f"s{i}", "ready")
        gate.set()
        assert engine.flush(5)
    stats = engine.stats()
    reasons = engine.outcome_reasons()
    assert stats.failed == sum(n for (res, _), n in reasons.items() if res == "failed")
    assert stats.dropped == sum(n for (res, _), n in reasons.items() if res == "dropped")
    assert {("failed", "http_5xx"), ("dropped", "queue_full")} <= set(reasons)
    assert stats.submitted == len(outcomes)
    assert TOKEN not in repr(outcomes)
