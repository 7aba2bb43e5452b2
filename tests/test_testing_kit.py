"""The testing kit: the lightd_remote and lightd_file_sync fixtures, read_events, the plugin."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lightd_sync import (
    HttpTransport,
    Lifecycle,
    RemoteRejectedError,
    RemoteTimeoutError,
    SyncEngine,
    Update,
)
from lightd_sync._transports.requests_transport import RequestsTransport
from lightd_sync.testing import LightdRemote, read_events

PLUGIN_MODULE = "lightd_sync._pytest_plugin"


# The plugin comes in through its pytest11 entry point (setup.cfg), as in a daemon's suite.
pytest_plugins = ["pytester"]


# -- lightd_remote -------------------------------------------------------------


def test_updates_arrive_in_order_and_wait_for_returns_the_body(
    lightd_remote: LightdRemote,
) -> None:
    with SyncEngine(lightd_remote.config()) as engine:
        engine.lifecycle("s1", Lifecycle.STARTED)
        engine.lifecycle("s1", Lifecycle.READY)
        body = lightd_remote.wait_for("s1", "ready")
    assert {"event": "update", "server": "s1", "status": "ready"} == body
    assert [
        {"event": "update", "server": "s1", "status": "installing"},
        {"event": "update", "server": "s1", "status": "ready"},
    ] == lightd_remote.updates


def test_failed_matches_error_updates(lightd_remote: LightdRemote) -> None:
    with SyncEngine(lightd_remote.config()) as engine:
        engine.error("s1", "image not found")
        body = lightd_remote.wait_for("s1", "failed")
    assert {"event": "update", "server": "s1", "error": "failed", "data": "image not found"} == (
        body
    )
    assert {"s1": "failed"} == {
        s: v["status"]
        for s, v in lightd_remote.app.store.latest().items()  # type: ignore[union-attr]
    }


def test_wait_for_fails_in_time_and_says_what_arrived(lightd_remote: LightdRemote) -> None:
    with HttpTransport(lightd_remote.config()) as transport:
        transport.send(Update("s1", "installing"))
    started = time.monotonic()
    with pytest.raises(AssertionError) as info:
        lightd_remote.wait_for("s1", "ready", timeout=0.2)
    assert time.monotonic() - started < 2
    message = str(info.value)
    assert "no 'ready' update of 's1'" in message
    assert "within 0.2 s" in message
    assert '{"event": "update", "server": "s1", "status": "installing"}' in message


def test_wait_for_refuses_an_unknown_status_at_once(lightd_remote: LightdRemote) -> None:
    with pytest.raises(ValueError, match="unknown status 'done'"):
        lightd_remote.wait_for("s1", "done")


def test_config_is_ready_and_takes_overrides(lightd_remote: LightdRemote) -> None:
    config = lightd_remote.config(timeout=0.5, retries=0)
    assert config.enabled
    assert lightd_remote.url == config.url
    assert lightd_remote.token == config.token
    assert (0.5, 0) == (config.timeout, config.retries)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", lightd_remote.url)
    assert re.fullmatch(r"lightd_[0-9a-f]{32}", lightd_remote.token)
    assert lightd_remote.token not in repr(config)


def test_every_remote_has_its_own_token() -> None:
    with LightdRemote() as one, LightdRemote() as two:
        assert one.token != two.token
        assert one.url != two.url


def test_fail_next_fails_updates_then_the_engine_retries(lightd_remote: LightdRemote) -> None:
    lightd_remote.fail_next(2, status=503)
    with SyncEngine(lightd_remote.config(retries=2)) as engine:
        engine.update("s1", "ready")
        lightd_remote.wait_for("s1", "ready")
        assert engine.flush(5)
        stats = engine.stats()
    assert (1, 0) == (stats.delivered, stats.failed)
    assert 1 == len(lightd_remote.updates)


def test_fail_next_counts_down_and_spares_health_checks(lightd_remote: LightdRemote) -> None:
    lightd_remote.fail_next(1)
    with HttpTransport(lightd_remote.config()) as transport:
        transport.check_health()
        with pytest.raises(RemoteRejectedError, match="HTTP 500") as info:
            transport.send(Update("s1", "ready"))
        assert not info.value.retryable
        transport.send(Update("s1", "ready"))
        lightd_remote.fail_next(3, status=429)
        lightd_remote.fail_next(0)  # cancels
        transport.send(Update("s2", "ready"))
    assert ["s1", "s2"] == [u["server"] for u in lightd_remote.updates]


def test_delay_makes_the_client_time_out_and_the_remote_still_stores(
    lightd_remote: LightdRemote,
) -> None:
    lightd_remote.delay(0.3)
    with HttpTransport(lightd_remote.config(timeout=0.1)) as transport:
        with pytest.raises(RemoteTimeoutError):
            transport.send(Update("s1", "installing"))
    lightd_remote.wait_for("s1", "installing")  # a slow remote, not a broken one


def test_delay_zero_ends_the_delay(lightd_remote: LightdRemote) -> None:
    lightd_remote.delay(30)  # the request caught in it is cut short at teardown
    with HttpTransport(lightd_remote.config(timeout=0.1)) as transport:
        with pytest.raises(RemoteTimeoutError):
            transport.check_health()
    lightd_remote.delay(0)
    started = time.monotonic()
    with HttpTransport(lightd_remote.config(timeout=10)) as transport:
        transport.send(Update("s1", "ready"))
    assert time.monotonic() - started < 5


def test_down_answers_503_to_everything_until_up(lightd_remote: LightdRemote) -> None:
    lightd_remote.down()
    with HttpTransport(lightd_remote.config()) as transport:
        with pytest.raises(RemoteRejectedError, match="HTTP 503") as info:
            transport.send(Update("s1", "ready"))
        assert info.value.retryable
        with pytest.raises(RemoteRejectedError, match="HTTP 503"):
            transport.check_health()
        assert [] == lightd_remote.updates
        lightd_remote.up()
        transport.check_health()
        transport.send(Update("s1", "ready"))
    lightd_remote.wait_for("s1", "ready", timeout=0)


def test_an_update_resent_with_its_event_id_is_listed_once(lightd_remote: LightdRemote) -> None:
    with HttpTransport(lightd_remote.config()) as transport:
        update = Update("s1", "ready", event_id="7b1c6b1e-0d7e-4f43-8a9f-0d2f9f3c2a11")
        transport.send(update)
        transport.send(update)  # its first answer was lost, say
        transport.send(Update("s1", "ready", event_id="another"))
    assert 2 == len(lightd_remote.updates)
    assert lightd_remote.app is not None
    assert 2 == len(lightd_remote.app.store.history("s1"))


def test_many_threads_at_once_keep_each_servers_order(lightd_remote: LightdRemote) -> None:
    servers, per_server = 8, 25
    with SyncEngine(lightd_remote.config(workers=4)) as engine:

        def produce(server: str) -> None:
            for i in range(per_server):
                assert engine.error(server, str(i))

        threads = [threading.Thread(target=produce, args=(f"s{n}",)) for n in range(servers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
        assert engine.flush(10)
    updates = lightd_remote.updates
    assert servers * per_server == len(updates)
    for n in range(servers):
        data = [u["data"] for u in updates if u["server"] == f"s{n}"]
        assert [str(i) for i in range(per_server)] == data


def test_fault_switches_check_their_arguments(lightd_remote: LightdRemote) -> None:
    with pytest.raises(ValueError, match="n must be"):
        lightd_remote.fail_next(-1)
    with pytest.raises(ValueError, match="status must be"):
        lightd_remote.fail_next(1, status=200)
    with pytest.raises(ValueError, match="seconds must be"):
        lightd_remote.delay(float("inf"))
    with pytest.raises(ValueError, match="seconds must be"):
        lightd_remote.delay(-1)


def test_the_requests_transport_against_the_reference_remote(
    lightd_remote: LightdRemote,
) -> None:
    config = lightd_remote.config(transport="requests")
    with SyncEngine(config, transport=RequestsTransport(config)) as engine:
        engine.update("s1", "ready")
        lightd_remote.wait_for("s1", "ready")


def test_the_remote_works_without_pytest_and_stops_every_thread() -> None:
    remote = LightdRemote()
    assert "not started" in repr(remote)
    with pytest.raises(RuntimeError, match="start the LightdRemote first"):
        remote.url  # noqa: B018
    with remote:
        with pytest.raises(RuntimeError, match="already started"):
            remote.start()
        with HttpTransport(remote.config()) as transport:
            transport.send(Update("s1", "ready"))
        assert remote.token not in repr(remote)
    assert ["s1"] == [u["server"] for u in remote.updates]  # still readable after stop
    started = time.monotonic()
    assert remote.stop()
    assert time.monotonic() - started < 1
    assert not [t for t in threading.enumerate() if t.name.startswith("lightd-sync")]


def test_stop_cuts_a_delayed_request_short() -> None:
    remote = LightdRemote().start()
    remote.delay(30)
    errors: list[BaseException] = []
    transport = HttpTransport(remote.config(timeout=30))

    def check() -> None:
        try:
            transport.check_health()
        except BaseException as exc:
            errors.append(exc)

    sender = threading.Thread(target=check)
    sender.start()
    assert _wait_until(lambda: bool(_server_threads()), 5)
    started = time.monotonic()
    assert remote.stop()
    sender.join(5)
    transport.close()
    assert time.monotonic() - started < 2
    assert not sender.is_alive()
    assert errors, "the delayed health check got an answer after stop()"


def _server_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("lightd-sync-http-")]


def _wait_until(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


# -- lightd_file_sync and read_events -------------------------------------------


def test_file_sync_logs_the_bodies_in_order(lightd_file_sync: SyncEngine) -> None:
    lightd_file_sync.lifecycle("s1", Lifecycle.STARTED)
    lightd_file_sync.lifecycle("s1", Lifecycle.ERROR, "image not found")
    assert lightd_file_sync.flush(5)
    assert lightd_file_sync.config.path is not None
    assert [
        {"event": "update", "server": "s1", "status": "installing"},
        {"event": "update", "server": "s1", "error": "failed", "data": "image not found"},
    ] == read_events(lightd_file_sync.config.path)


def test_read_events_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert [] == read_events(tmp_path / "nothing-yet.jsonl")


def test_read_events_leaves_out_a_line_being_written(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    body = {"event": "update", "server": "s1", "status": "ready"}
    path.write_text(json.dumps({"ts": "x", "body": body}) + '\n{"ts": "y", "bo', encoding="utf-8")
    assert [body] == read_events(path)


def test_read_events_refuses_a_file_of_something_else(tmp_path: Path) -> None:
    path = tmp_path / "other.jsonl"
    path.write_text('{"ts": "x", "body": {}}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"other\.jsonl:2: not a record of the file transport"):
        read_events(path)


# -- the plugin --------------------------------------------------------------------


def test_importing_the_helpers_does_not_import_pytest() -> None:
    code = (
        "import sys; import lightd_sync.testing; "
        "assert 'pytest' not in sys.modules and '_pytest' not in sys.modules, 'pytest imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert 0 == result.returncode, result.stderr


def test_the_plugin_is_registered_by_entry_point(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.get_plugin("lightd_sync") is sys.modules[PLUGIN_MODULE]


DAEMON_TESTS = """
from lightd_sync import SyncEngine
from lightd_sync.testing import read_events


def test_daemon_reports_ready(lightd_remote):
    with SyncEngine(lightd_remote.config()) as engine:
        engine.update("s1", "installing")
        engine.update("s1", "ready")
        body = lightd_remote.wait_for("s1", "ready")
    assert body == {"event": "update", "server": "s1", "status": "ready"}
    assert [u["status"] for u in lightd_remote.updates] == ["installing", "ready"]


def test_daemon_rides_out_a_failing_remote(lightd_remote):
    lightd_remote.fail_next(1, status=503)
    with SyncEngine(lightd_remote.config()) as engine:
        engine.update("s1", "ready")
        lightd_remote.wait_for("s1", "ready")


def test_daemon_logs_to_a_file(lightd_file_sync):
    lightd_file_sync.update("s1", "ready")
    assert lightd_file_sync.flush(5)
    assert read_events(lightd_file_sync.config.path) == [
        {"event": "update", "server": "s1", "status": "ready"}
    ]
"""


def test_a_fresh_project_gets_the_fixtures_from_the_entry_point(
    pytester: pytest.Pytester,
) -> None:
    """A daemon's own suite: no conftest, no pytest_plugins; the entry point brings the fixtures."""
    pytester.makepyfile(test_daemon=DAEMON_TESTS)
    result = pytester.runpytest_subprocess("-W", "error", "-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(passed=3)
