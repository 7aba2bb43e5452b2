"""SyncEngine.reload(): a new config applied live, nothing lost, order kept."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections import defaultdict
from pathlib import Path

import attrs
import pytest

from lightd_sync import ConfigError, LightdSyncError, RemoteConfig, SyncEngine

from .conftest import TOKEN, LogCapture, http_config
from .servers import ScriptedRemote, lightd_threads, serving, wait_until


def write_config(path: Path, url: str, **extra: object) -> None:
    path.write_text(json.dumps({"remote": {"enabled": True, "url": url, "token": TOKEN, **extra}}))


@pytest.fixture
def second() -> object:
    yield from serving(ScriptedRemote())


def sequence_per_server(*remotes: ScriptedRemote) -> dict[str, list[int]]:
    """Each server's sequence numbers, in the order each remote received them."""
    seen: dict[str, list[int]] = defaultdict(list)
    for remote in remotes:
        for req in remote.posts():
            body = req.json()
            seen[f"{id(remote)}:{body['server']}"].append(int(body["data"]))
    return seen


def test_reload_under_load_loses_nothing_and_keeps_order(
    remote: ScriptedRemote, second: ScriptedRemote
) -> None:
    """8 producers submit while 200 reloads alternate between two live receivers."""
    configs = [
        http_config(remote.url, workers=4, queue_size=100_000),
        http_config(second.url, workers=3, queue_size=100_000, timeout=5),
    ]
    engine = SyncEngine(configs[0])
    stop = threading.Event()
    counts = [0] * 8

    def produce(p: int) -> None:
        n = 0
        while not stop.is_set() and n < 500:
            # The sequence number rides in the error message, to check order at the remote.
            assert engine.error(f"p{p}-s{n % 3}", str(n))
            n += 1
        counts[p] = n

    producers = [threading.Thread(target=produce, args=(p,)) for p in range(8)]
    for t in producers:
        t.start()
    results = [engine.reload(configs[(i + 1) % 2]) for i in range(200)]
    stop.set()
    for t in producers:
        t.join(10)
    assert engine.flush(30)
    stats = engine.stats()
    engine.close(5)
    assert [] == lightd_threads()
    assert stats.balanced
    assert sum(counts) == stats.submitted == stats.delivered
    assert stats.delivered == len(remote.posts()) + len(second.posts())
    assert all({"url", "workers", "timeout"} <= set(r.changed) for r in results)
    for key, seq in sequence_per_server(remote, second).items():
        assert seq == sorted(seq), key


def test_reload_from_file_and_an_invalid_file_changes_nothing(
    tmp_path: Path, remote: ScriptedRemote, second: ScriptedRemote
) -> None:
    path = tmp_path / "config.json"
    write_config(path, remote.url)
    with SyncEngine.from_file(path) as engine:
        engine.update("a", "installing")
        assert engine.flush(5)
        write_config(path, second.url, health_interval=5)
        result = engine.reload()
        assert ("health_interval", "url") == result.changed
        assert {"changed": ["health_interval", "url"], "token": "unchanged"}.items() <= (
            result.to_dict().items()
        )
        engine.update("a", "ready")
        path.write_text('{"remote": {"enabled": true, "url": 42}}')
        with pytest.raises(ConfigError, match=r"remote\.url: expected a string"):
            engine.reload()
        path.write_text("{not json")
        with pytest.raises(ConfigError, match="line 1, column 2"):
            engine.reload()
        assert second.url == engine.config.url, "the engine keeps the last good config"
        engine.update("b", "ready")
        assert engine.flush(5)
    assert ["a"] == [r.json()["server"] for r in remote.posts()]
    assert {"a", "b"} <= {r.json()["server"] for r in second.posts()}
    assert TOKEN not in json.dumps(result.to_dict())


def test_reload_token_change_is_reported_without_the_token(remote: ScriptedRemote) -> None:
    with SyncEngine(http_config(remote.url)) as engine:
        new_token = "lightd_ffffffffffffffffffffffffff"
        result = engine.reload(attrs.evolve(engine.config, token=new_token))
        assert result.token_changed
        summary = json.dumps(result.to_dict())
        assert new_token not in summary and TOKEN not in summary
        engine.update("s", "ready")
        assert engine.flush(5)
    assert f"Bearer {new_token}" == remote.posts()[-1].headers["Authorization"]


def test_reload_without_a_file_or_after_close() -> None:
    engine = SyncEngine(RemoteConfig())
    with pytest.raises(ConfigError, match="not built from a file"):
        engine.reload()
    with pytest.raises(TypeError):
        engine.reload({"enabled": True})  # type: ignore[arg-type]
    engine.close()
    with pytest.raises(LightdSyncError, match="closed"):
        engine.reload(RemoteConfig(queue_size=5))


def test_reload_applies_queue_size_and_health_interval(remote: ScriptedRemote) -> None:
    with SyncEngine(http_config(remote.url, health_interval=60)) as engine:
        assert wait_until(lambda: engine.health.healthy is True)
        checks = len([r for r in remote.requests if r.method == "GET"])
        engine.reload(attrs.evolve(engine.config, health_interval=0.02, queue_size=7))
        assert wait_until(
            lambda: len([r for r in remote.requests if r.method == "GET"]) >= checks + 5
        )
        assert 7 == engine.config.queue_size  # the bound itself: tests/test_outbox.py


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX only")
def test_sighup_reloads(tmp_path: Path, remote: ScriptedRemote, logs: LogCapture) -> None:
    path = tmp_path / "config.json"
    write_config(path, remote.url)
    engine = SyncEngine.from_file(path)
    old = signal.getsignal(signal.SIGHUP)
    try:
        engine.install_sighup_reload()
        write_config(path, remote.url, queue_size=9)
        os.kill(os.getpid(), signal.SIGHUP)
        assert wait_until(lambda: engine.config.queue_size == 9)
        path.write_text("{broken")
        os.kill(os.getpid(), signal.SIGHUP)
        assert wait_until(lambda: any("SIGHUP reload failed" in m for m in logs.messages()))
        assert 9 == engine.config.queue_size
    finally:
        signal.signal(signal.SIGHUP, old)
        engine.close()
