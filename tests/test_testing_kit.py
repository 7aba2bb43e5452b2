"""The testing kit: the lightd_remote and lightd_file_sync fixtures, read_events, the plugin."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

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
from lightd_sync.testing import LightdRemote, read_events, set_testing

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


@pytest.mark.parametrize("batch_max", [None, 5, 100])
def test_many_threads_at_once_keep_each_servers_order(batch_max: Optional[int]) -> None:
    servers, per_server = 8, 25
    with set_testing(), LightdRemote(batch_max=batch_max) as lightd_remote:
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
        sizes = lightd_remote.batch_sizes
    assert servers * per_server == len(updates)
    assert all(size <= (batch_max or 0) for size in sizes), sizes  # never beyond the offer
    for n in range(servers):
        data = [u["data"] for u in updates if u["server"] == f"s{n}"]
        assert [str(i) for i in range(per_server)] == data


BILLING = {
    "memory_gb": 0.5,
    "cpu_vcpus": 0.25,
    "storage_gb": 2.0,
    "egress_gb": 0.01,
    "duration_hours": 1.0,
    "estimated_cost": 0.0123,
}


def test_error_forms_and_billing_events_are_recorded_apart(lightd_remote: LightdRemote) -> None:
    with SyncEngine(lightd_remote.config()) as engine:
        engine.error("s1", error="timeout")
        engine.error("s2", "/var full", error="disk full")
        engine.billing("s1", **BILLING, timestamp=1767225600)
        assert {"event": "update", "server": "s1", "error": "timeout"} == (
            lightd_remote.wait_for("s1", "failed")
        )
        billed = lightd_remote.wait_for_billing("s1")
        lightd_remote.wait_for("s2", "failed")
    assert {"event": "billing", "server": "s1", **BILLING, "timestamp": 1767225600} == billed
    assert [billed] == lightd_remote.billing
    assert [
        {"event": "update", "server": "s1", "error": "timeout"},
        {"event": "update", "server": "s2", "error": "disk full", "data": "/var full"},
    ] == sorted(lightd_remote.updates, key=lambda u: u["server"])


def test_wait_for_billing_fails_in_time_and_says_what_arrived(
    lightd_remote: LightdRemote,
) -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match="no billing event of 's1' arrived") as info:
        lightd_remote.wait_for_billing("s1", timeout=0.2)
    assert time.monotonic() - started < 2
    assert "nothing" in str(info.value)


def _health(remote: LightdRemote) -> dict[str, Any]:
    with urllib.request.urlopen(
        urllib.request.Request(
            remote.url + "/health", headers={"Authorization": f"Bearer {remote.token}"}
        ),
        timeout=5,
    ) as answer:
        doc: dict[str, Any] = json.loads(answer.read())
    return doc


def _post_batch(remote: LightdRemote, items: list[dict[str, Any]]) -> tuple[int, Any]:
    request = urllib.request.Request(
        remote.url + "/updates",
        data=json.dumps({"updates": items}).encode(),
        headers={"Authorization": f"Bearer {remote.token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_batch_switches_offer_withdraw_and_refuse() -> None:
    with LightdRemote(batch_max=3) as remote:
        assert {"max": 3} == _health(remote)["batch"]
        assert {"status": 200, "endpoint": "active"}.items() <= _health(remote).items()
        items = [
            {"event": "update", "server": "a", "status": "ready", "event_id": "id-1"},
            {"event": "update", "server": "b", "error": "timeout", "event_id": "id-2"},
            {"event": "billing", "server": "a", **BILLING, "timestamp": 1, "event_id": "id-3"},
        ]
        status, doc = _post_batch(remote, items)
        assert (200, True) == (status, doc["success"])
        assert [
            {"event": "update", "server": "a", "status": "ready"},
            {"event": "update", "server": "b", "error": "timeout"},
        ] == remote.updates
        assert [{"event": "billing", "server": "a", **BILLING, "timestamp": 1}] == remote.billing
        assert [3] == remote.batch_sizes
        # A refused item is not recorded; a re-sent one is recorded once.
        status, doc = _post_batch(
            remote,
            [
                {"event": "update", "server": "a", "status": "ready", "event_id": "id-1"},
                {"event": "update", "server": "c", "status": "done", "event_id": "id-4"},
            ],
        )
        assert 200 == status
        assert [True, False] == [r["success"] for r in doc["results"]]
        assert 2 == len(remote.updates)
        remote.withdraw_batches()
        assert "batch" not in _health(remote)
        remote.refuse_batches()
        remote.offer_batches(10)
        assert {"max": 10} == _health(remote)["batch"]
        assert 404 == _post_batch(remote, items[:1])[0]
        remote.refuse_batches(501)
        assert 501 == _post_batch(remote, items[:1])[0]
        remote.refuse_batches(None)
        remote.fail_next(1, status=503)
        assert 503 == _post_batch(remote, items[:1])[0]  # fail_next covers batches too
        assert 200 == _post_batch(remote, items[:1])[0]
        assert [3, 2, 1] == remote.batch_sizes
        for bad in (0, 10_001, 1.5, True):
            with pytest.raises(ValueError, match="batch_max must be a whole number"):
                remote.offer_batches(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="status must be one of 404, 405, 415, 501"):
            remote.refuse_batches(500)
        # More than ever offered: the client is wrong, 413 (nothing stored).
        many = [{"event": "update", "server": f"m{n}", "status": "ready"} for n in range(11)]
        status, doc = _post_batch(remote, many)
        assert 413 == status
        assert "never offered more than 10" in doc["error"]
        assert not any(u["server"].startswith("m") for u in remote.updates)
    with pytest.raises(ValueError, match="batch_max must be"):
        LightdRemote(batch_max=0)


def test_the_default_remote_offers_no_batches_as_lightd_s_own_remotes(
    lightd_remote: LightdRemote,
) -> None:
    assert {"status": 200, "endpoint": "active"} == _health(lightd_remote)
    item = {"event": "update", "server": "a", "status": "ready"}
    assert 404 == _post_batch(lightd_remote, [item])[0]
    assert [] == lightd_remote.updates


def test_an_engine_batches_to_a_remote_that_offers_them_and_falls_back_when_refused() -> None:
    with LightdRemote(batch_max=50) as remote:
        with SyncEngine(remote.config(health_interval=0.05)) as engine:
            for n in range(20):
                engine.update(f"s{n}", "installing")
            assert engine.flush(10)
            assert remote.batch_sizes, "the engine sent no batch to a remote that offers them"
            sent_in_batches = sum(remote.batch_sizes)
            remote.refuse_batches()
            for n in range(20):
                engine.update(f"s{n}", "ready")
            assert engine.flush(10)
            stats = engine.stats()
        assert (40, 0) == (stats.delivered, stats.failed)
        assert 40 == len(remote.updates)
        assert sent_in_batches == sum(remote.batch_sizes)  # refused batches store nothing
        for n in range(20):
            assert ["installing", "ready"] == [
                u["status"] for u in remote.updates if u["server"] == f"s{n}"
            ]


@pytest.mark.lightd_remote(batch_max=25)
def test_the_marker_builds_the_fixture_with_its_arguments(lightd_remote: LightdRemote) -> None:
    assert {"max": 25} == _health(lightd_remote)["batch"]


def test_recording_transport_takes_batches_as_it_is_told() -> None:
    from lightd_sync import DeliveryError
    from lightd_sync.testing import RecordingTransport

    def refuse_b(update: Any) -> None:
        if update.server == "b":
            raise DeliveryError("refused")

    transport = RecordingTransport(refuse_b, batch=3)
    assert 3 == transport.max_batch()
    events = [Update("a", "ready"), Update("b", "ready"), Update("c", "ready")]
    results = transport.send_many(events)
    assert [None, DeliveryError, None] == [r if r is None else type(r) for r in results]
    assert [events] == transport.batches
    assert events == transport.sent
    transport.batch = 1
    assert 1 == transport.max_batch()
    transport.clear()
    assert ([], []) == (transport.sent, transport.batches)
    with pytest.raises(ValueError, match="batch must be"):
        RecordingTransport(batch=0)


def test_an_engine_hands_a_recording_transport_batches_up_to_its_batch() -> None:
    from lightd_sync import RemoteConfig
    from lightd_sync.testing import RecordingTransport

    gate = threading.Event()

    def remote(update: Any) -> None:
        gate.wait(10)  # the first call holds the worker: the rest queue up behind it

    transport = RecordingTransport(remote, batch=10)
    with SyncEngine(RemoteConfig(workers=1), transport=transport) as engine:
        for n in range(41):
            engine.update(f"s{n}", "ready")
        gate.set()
        assert engine.flush(10)
        assert 41 == engine.stats().delivered
    sizes = [len(batch) for batch in transport.batches]
    assert 41 == len(transport.sent)  # a lone event may go through send() instead
    assert max(sizes) == 10, sizes  # full batches once the queue had them
    assert all(len({u.server for u in batch}) == len(batch) for batch in transport.batches)


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
