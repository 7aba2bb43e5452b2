"""
The engine's promises, attacked: a hostile remote, racing callers, signals, fork, odd numbers.

Each test here failed on 0.1.0: a Retry-After of 99999999999 killed a lane,
a remote whose /update failed while /health worked was flooded, close()
racing the first update() left threads running, huge timeouts overflowed.
"""

from __future__ import annotations

import contextlib
import math
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Callable

import pytest

from lightd_sync import (
    NullTransport,
    Outcome,
    RemoteConfig,
    RemoteRejectedError,
    RemoteUnreachableError,
    SyncEngine,
    Update,
)
from lightd_sync.testing import RecordingTransport

from .conftest import TOKEN, LogCapture, http_config
from .servers import (
    HEALTHY,
    Reply,
    Request,
    ScriptedRemote,
    lightd_threads,
    read_request,
    wait_until,
)
from .storm import storm_round

RACE_ROUNDS = 200


class RawRemote:
    """
    A raw-socket remote: reads one HTTP request per connection and writes ``answer(request)``.

    ``answer`` returns the whole raw response (bytes); ``/health`` gets the
    protocol's healthy answer unless ``health`` says otherwise.
    """

    def __init__(self, answer: Callable[[bytes], bytes]) -> None:
        self.answer = answer
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        # Guards requests: handler threads append while the test reads.
        self._lock = threading.Lock()
        self.requests: list[bytes] = []
        self._thread = threading.Thread(target=self._accept, name="test-raw-remote", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with conn:
            buf = b""
            try:
                while not self._stop.is_set():
                    parts = read_request(conn, buf)
                    if parts is None:
                        return
                    head, body, buf = parts
                    request = head + b"\r\n\r\n" + body
                    with self._lock:
                        self.requests.append(request)
                    if request.startswith(b"GET "):
                        body = b'{"status": 200, "endpoint": "active"}'
                        conn.sendall(_response(200, body))
                    else:
                        conn.sendall(self.answer(request))
            except OSError:
                return

    def posts(self) -> list[bytes]:
        with self._lock:
            return [r for r in self.requests if r.startswith(b"POST ")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def _response(status: int, body: bytes, *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@contextlib.contextmanager
def raw_remote(answer: Callable[[bytes], bytes]) -> Iterator[RawRemote]:
    remote = RawRemote(answer)
    try:
        yield remote
    finally:
        remote.close()


# -- a hostile remote ---------------------------------------------------------


@pytest.mark.real_waits
@pytest.mark.parametrize(
    "retry_after",
    ["99999999999", "inf", "1e400", "Fri, 31 Dec 9999 23:59:59 GMT", "-5", "nan", "a" * 5000],
)
def test_any_retry_after_is_capped_and_no_lane_dies(retry_after: str, logs: LogCapture) -> None:
    """One 503 with an absurd Retry-After pauses delivery max_retry_after s at most."""
    answered = []

    def answer(request: bytes) -> bytes:
        answered.append(request)
        if len(answered) == 1:
            return _response(503, b'{"success": false}', f"Retry-After: {retry_after}")
        return _response(200, b'{"success": true}')

    with raw_remote(answer) as remote:
        config = http_config(remote.url, workers=1, retries=2, max_retry_after=0.3)
        with SyncEngine(config) as engine:
            started = time.monotonic()
            assert engine.update("s1", "ready")
            assert engine.update("s2", "ready")
            assert engine.flush(5), engine.stats()
            took = time.monotonic() - started
            assert 2 == engine.stats().delivered
    assert took < 2.0
    if retry_after in ("99999999999", "Fri, 31 Dec 9999 23:59:59 GMT"):  # the rest is garbage
        assert took >= 0.25
        capped = [m for m in logs.messages() if "max_retry_after" in m]
        assert 1 == len(capped), capped
    assert not [t for t in lightd_threads() if "lane" in t.name]


@pytest.mark.real_waits
def test_retry_after_pauses_every_lane_then_everything_is_delivered() -> None:
    calls = Counter[str]()

    def answer(request: bytes) -> bytes:
        calls["post"] += 1
        if calls["post"] == 1:
            return _response(429, b"{}", "Retry-After: 1")
        return _response(200, b'{"success": true}')

    with raw_remote(answer) as remote, SyncEngine(http_config(remote.url, workers=4)) as engine:
        started = time.monotonic()
        engine.update("first", "ready")
        assert wait_until(lambda: calls["post"] >= 1)
        for i in range(20):
            engine.update(f"s{i}", "ready")
        assert engine.flush(5)
        assert time.monotonic() - started >= 0.9
        assert 21 == engine.stats().delivered


def test_update_failing_while_health_succeeds_is_not_a_resync_storm() -> None:
    """50 servers, /update answers 500, /health 200: each POSTed at most 1 + retries + 1 times."""
    state = {"update": Reply(status=500, body=b'{"success": false}')}

    def script(request: Request) -> Reply:
        return HEALTHY if request.path.endswith("/health") else state["update"]

    remote = ScriptedRemote(script).start()
    try:
        config = http_config(remote.url, retries=2, health_interval=30)
        with SyncEngine(config) as engine:
            for i in range(50):
                engine.update(f"s{i}", "ready")
            assert engine.flush(5)
            deadline = time.monotonic() + 1
            # Probes and resyncs for 1 s (some 20 rounds): a storm would re-send every
            # server at each successful probe, over the bound within two rounds.
            while time.monotonic() < deadline:
                engine.check_health()
                engine.flush(1)
                time.sleep(0.05)
            per_server = Counter(r.json()["server"] for r in remote.posts())
            assert max(per_server.values()) <= 1 + 2 + 1, per_server.most_common(3)
            assert 50 == len(per_server)
    finally:
        remote.stop()


def test_after_update_recovers_every_server_converges() -> None:
    state = {"update": Reply(status=500, body=b'{"success": false}')}

    def script(request: Request) -> Reply:
        return HEALTHY if request.path.endswith("/health") else state["update"]

    remote = ScriptedRemote(script).start()
    try:
        config = http_config(remote.url, retries=0, health_interval=0.2)
        with SyncEngine(config) as engine:
            for i in range(30):
                engine.update(f"s{i}", "installing")
                engine.update(f"s{i}", "ready")
            assert engine.flush(5)
            state["update"] = Reply()

            def converged() -> bool:
                latest = {}
                for r in remote.posts():
                    if r.json()["server"] not in latest or True:
                        latest[r.json()["server"]] = r
                return len(latest) == 30 and all(
                    r.json()["status"] == "ready" for r in latest.values()
                )

            assert wait_until(converged, timeout=10)
            # Converged: each server's latest delivered, nothing missed any more, so
            # later healthy checks re-send nothing.
            assert wait_until(lambda: engine.stats().delivered == 30, timeout=10)
            assert engine.flush(5)
            resynced = engine.stats().resynced
            checks = len([r for r in remote.requests if r.method == "GET"])
            assert wait_until(
                lambda: len([r for r in remote.requests if r.method == "GET"]) >= checks + 3
            )
            assert engine.flush(5)
            assert resynced == engine.stats().resynced
    finally:
        remote.stop()


# -- racing callers -------------------------------------------------------------


def _race(first: Callable[[], object], second: Callable[[], object]) -> None:
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(fn: Callable[[], object]) -> None:
        try:
            barrier.wait(5)
            fn()
        except BaseException as exc:  # a test thread: report, do not hide
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f,)) for f in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    assert not errors, errors


@pytest.mark.parametrize("other", ["update", "start", "flush", "reload", "close"])
def test_close_racing_another_call_leaves_no_thread(other: str) -> None:
    config = RemoteConfig(workers=2)
    for _ in range(RACE_ROUNDS):
        engine = SyncEngine(config, transport=RecordingTransport())
        calls: dict[str, Callable[[], object]] = {
            "update": lambda e=engine: e.update("s", "ready"),
            "start": lambda e=engine: e.start(),
            "flush": lambda e=engine: e.flush(1),
            "reload": lambda e=engine: _reload_quietly(e),
            "close": lambda e=engine: e.close(1),
        }
        started = time.monotonic()
        _race(lambda e=engine: e.close(1), calls[other])
        assert time.monotonic() - started < 3
        assert engine.closed
        assert engine.stats().balanced
        assert wait_until(lambda: not lightd_threads(), timeout=2), lightd_threads()


def _reload_quietly(engine: SyncEngine) -> None:
    from lightd_sync import LightdSyncError

    with contextlib.suppress(LightdSyncError):
        engine.reload(RemoteConfig(workers=3))


@pytest.mark.owns_signals
@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer")
@pytest.mark.parametrize("interval", [0.002, 0.0005, 0.0002])
def test_calls_from_a_signal_handler_that_interrupted_the_library_never_deadlock(
    interval: float,
) -> None:
    """
    SIGALRM every interval, a CPU hog beside: the handler calls the engine the main loop is in.

    On 0.2.0-dev one such round hung for good (issue #26): the handler took the
    ledger lock and worked through what earlier handlers deferred. Looped 200
    times by ``python -m tests.storm``.
    """
    for _ in range(3):
        storm_round(interval)


# -- odd numbers and long input ------------------------------------------------


@pytest.mark.parametrize("timeout", [1e10, math.inf, 10**30, -1.0, 0, float("nan")])
def test_close_and_flush_take_any_number(timeout: float) -> None:
    engine = SyncEngine(RemoteConfig(), transport=RecordingTransport())
    engine.update("s", "ready")
    started = time.monotonic()
    assert engine.flush(timeout) in (True, False)
    engine.close(timeout)
    assert time.monotonic() - started < 5
    # close(0) does not wait: its threads end a moment after it returned.
    assert wait_until(lambda: not lightd_threads(), timeout=1)


def test_the_largest_intervals_overflow_nothing() -> None:
    config = RemoteConfig(health_interval=86_400, shutdown_timeout=86_400, timeout=86_400)
    engine = SyncEngine(config, transport=RecordingTransport())
    engine.update("s", "ready")
    assert engine.flush(5)
    engine.close(1)
    assert not lightd_threads()


def test_a_long_error_message_is_cut_to_8192_characters() -> None:
    transport = RecordingTransport()
    with SyncEngine(RemoteConfig(), transport=transport) as engine:
        assert engine.error("s", "é" * 100_000)
        assert engine.lifecycle("s", "Error", "x" * 9000)
        assert engine.flush(5)
    assert [8192, 8192] == [len(u.data or "") for u in transport.sent]


# -- fork --------------------------------------------------------------------------


# Fork under load: tests/test_engine_pool.py forks 200 times, with both transports.


@contextlib.contextmanager
def _fork_allowed() -> Iterator[None]:
    """Python 3.12+ warns when forking a process with threads; that is the point here."""
    if sys.version_info >= (3, 12):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    else:
        yield


# -- outcomes ------------------------------------------------------------------------


def test_every_update_gets_one_outcome_off_the_callers_thread() -> None:
    outcomes: list[tuple[Outcome, str]] = []
    lock = threading.Lock()

    def on_outcome(outcome: Outcome) -> None:
        with lock:
            outcomes.append((outcome, threading.current_thread().name))

    def remote(update: Update) -> None:
        if update.server == "bad":
            raise RemoteRejectedError("nope", status=400)
        if update.server == "down":
            raise RemoteUnreachableError("refused", retryable=True)

    caller = threading.current_thread().name
    engine = SyncEngine(
        RemoteConfig(retries=1, queue_size=3, workers=1, resync=False),
        transport=RecordingTransport(remote),
        on_outcome=on_outcome,
    )
    with engine:
        engine.update("ok", "ready")
        engine.update("bad", "ready")
        engine.update("down", "ready")
        assert engine.flush(5)
    assert not engine.update("late", "ready")
    results = {(o.update.server, o.result, o.reason) for o, _ in outcomes}
    assert {
        ("ok", "delivered", None),
        ("bad", "failed", "http_4xx"),
        ("down", "failed", "unreachable"),
        ("late", "dropped", "closed"),
    } == results
    for outcome, thread in outcomes:
        assert (thread == caller) == (outcome.result == "dropped")
        assert outcome.update.event_id
    attempts = {o.update.server: o.attempts for o, _ in outcomes}
    assert {"ok": 1, "bad": 1, "down": 2, "late": 0} == attempts
    reasons = engine.outcome_reasons()
    assert {("failed", "http_4xx"): 1, ("failed", "unreachable"): 1} == {
        k: v for k, v in reasons.items() if k[0] == "failed"
    }


def test_a_raising_outcome_hook_is_logged_and_delivery_goes_on(logs: LogCapture) -> None:
    def on_outcome(outcome: Outcome) -> None:
        raise RuntimeError(f"dashboard down {TOKEN}"[:20])

    transport = RecordingTransport()
    with SyncEngine(RemoteConfig(), transport=transport, on_outcome=on_outcome) as engine:
        for i in range(100):
            engine.update(f"s{i}", "ready")
        assert engine.flush(5)
        assert 100 == engine.stats().delivered
    hook_lines = [m for m in logs.messages() if "on_outcome raised" in m]
    assert 1 <= len(hook_lines) <= 2


def test_null_transport_engine_still_counts(logs: LogCapture) -> None:
    with SyncEngine(RemoteConfig(), transport=NullTransport()) as engine:
        engine.update("s", "ready")
        assert engine.flush(5)
    assert 1 == engine.stats().delivered


# -- odd but legal URLs ---------------------------------------------------------


def test_a_non_ascii_path_is_delivered_percent_encoded(remote: ScriptedRemote) -> None:
    from urllib.parse import quote

    config = http_config(f"{remote.url}/статус")
    with SyncEngine(config) as engine:
        assert engine.update("s", "ready")
        assert engine.flush(5)
        assert 1 == engine.stats().delivered
        second = ScriptedRemote().start()
        try:  # a reload into another such URL
            engine.reload(http_config(f"{second.url}/ünï"))
            assert engine.update("s", "installing")
            assert engine.flush(5)
            assert [f"/{quote('ünï')}/update"] == [r.path for r in second.posts()]
        finally:
            second.stop()
    assert [f"/{quote('статус')}/update"] == [r.path for r in remote.posts()]
