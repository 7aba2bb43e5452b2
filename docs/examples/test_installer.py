"""Tests of the toy daemon with lightd-sync's pytest fixtures: no network, no setup."""

from installer import Installer

from lightd_sync import SyncEngine
from lightd_sync.testing import read_events


def test_install_reports_installing_then_ready(lightd_remote):
    with SyncEngine(lightd_remote.config()) as sync:
        assert Installer(sync).install("web-001", "nginx:1.27")
        lightd_remote.wait_for("web-001", "ready")
    statuses = [update["status"] for update in lightd_remote.updates]
    assert statuses == ["installing", "installing", "ready"]


def test_failed_install_sends_the_error(lightd_remote):
    with SyncEngine(lightd_remote.config()) as sync:
        assert not Installer(sync).install("db-003", "postgres:missing")
        body = lightd_remote.wait_for("db-003", "failed")
    assert body == {
        "event": "update",
        "server": "db-003",
        "error": "failed",
        "data": "Docker container creation failed: image postgres:missing not found",
    }


def test_retries_hide_a_flaky_remote(lightd_remote):
    lightd_remote.fail_next(2, status=503)  # the next two updates get 503
    with SyncEngine(lightd_remote.config(retries=2)) as sync:
        Installer(sync).install("cache-002", "redis:7")
        lightd_remote.wait_for("cache-002", "ready")
        assert sync.flush()
        assert sync.stats().failed == 0


def test_the_remote_gets_the_latest_status_after_an_outage(lightd_remote):
    lightd_remote.down()  # every request gets 503 until up()
    with SyncEngine(lightd_remote.config(retries=0, health_interval=0.2)) as sync:
        Installer(sync).install("web-001", "nginx:1.27")
        assert sync.flush()
        assert lightd_remote.updates == []
        lightd_remote.up()
        lightd_remote.wait_for("web-001", "ready")  # resync re-sent the latest status
        assert sync.stats().resynced == 1


def test_offline_with_the_file_transport(lightd_file_sync):
    Installer(lightd_file_sync).install("web-001", "nginx:1.27")
    assert lightd_file_sync.flush()
    events = read_events(lightd_file_sync.config.path)
    assert [event["status"] for event in events] == ["installing", "installing", "ready"]
