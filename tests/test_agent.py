"""The sidecar, ``lightd-sync agent``: JSON lines in on stdin, updates out, routes, exit."""

from __future__ import annotations

import http.client
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Optional
from urllib.parse import urlsplit

import pytest

from lightd_sync import receiver
from lightd_sync.__main__ import main
from lightd_sync._cli._common import CliError
from lightd_sync._cli.agent import MAX_LINE, AgentLine, parse_event, parse_listen
from lightd_sync._server.http import serve

from .conftest import TOKEN
from .procfs import HAS_TASKS, blocked_signals
from .servers import ScriptedRemote, wait_until

API_TOKEN = "lightd_api_5f0c2b7d9e4a41c3a8b6d0e2f4a6c8e0"

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX only")


def write_config(
    path: Path, url: str, *, api_token: Optional[str] = API_TOKEN, **extra: Any
) -> None:
    doc: dict[str, Any] = {"remote": {"enabled": True, "url": url, "token": TOKEN, **extra}}
    if api_token is not None:
        doc["authorization"] = {"token": api_token}
    path.write_text(json.dumps(doc))


class Agent:
    """``python -m lightd_sync agent ...`` in a subprocess, its stderr read as it comes."""

    def __init__(self, *args: str, env: Optional[dict[str, str]] = None) -> None:
        clean_env = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTD_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lightd_sync", "agent", "--listen", "127.0.0.1:0", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # faulthandler: a hung agent killed with SIGABRT (wait()) prints every thread's stack
            env={**clean_env, "PYTHONFAULTHANDLER": "1", **(env or {})},
        )
        # Guards the output lists: the reader threads append while the test reads.
        self._changed = threading.Condition()
        self.err: list[str] = []
        self.out: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[bytes], lines: list[str]) -> None:
        for raw in stream:
            with self._changed:
                lines.append(raw.decode("utf-8", "replace"))
                self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait for a stderr line matching *pattern*."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        with self._changed:
            while True:
                for line in self.err:
                    match = regex.search(line)
                    if match:
                        return match
                left = deadline - time.monotonic()
                assert left > 0, f"no {pattern!r} on stderr: {self.err}"
                self._changed.wait(left)

    def url(self) -> str:
        return self.wait_for(r"listening on (http://\S+);").group(1)

    def send(self, *lines: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("".join(line + "\n" for line in lines).encode())
        self.proc.stdin.flush()

    def wait(self, timeout: float = 15.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)  # faulthandler: every thread's stack
            self.proc.wait(10)
            for reader in self._readers:
                reader.join(5)
            raise AssertionError(
                f"the agent did not exit within {timeout} s:\n{self.output()}"
            ) from None
        for reader in self._readers:
            reader.join(5)
        return code

    def finish(self, timeout: float = 15.0) -> int:
        """Close stdin (end of input) and wait for the exit code."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.wait(timeout)

    def output(self) -> str:
        with self._changed:
            return "".join(self.err + self.out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    """Start agents with ``agents.append(Agent(...))``; all are killed at the end, if need be."""
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.kill()
        text = agent.output()
        assert TOKEN not in text and API_TOKEN not in text


def get(url: str, path: str, token: Optional[str] = API_TOKEN) -> tuple[int, Any]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        headers = {"Accept": "Application/vnd.pkglatv1+json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert TOKEN.encode() not in body and API_TOKEN.encode() not in body
    return response.status, body if path == "/metrics" else json.loads(body)


@pytest.fixture
def reference() -> Iterator[tuple[receiver.ReceiverApp, str]]:
    with receiver.create_app(TOKEN, rate=math.inf) as app, serve(app) as server:
        yield app, server.url


def test_lines_in_updates_out_bad_lines_skipped_exit_0_on_eof(
    tmp_path: Path, reference: tuple[receiver.ReceiverApp, str], agents: list[Agent]
) -> None:
    app, url = reference
    config = tmp_path / "config.json"
    write_config(config, url)
    agents.append(agent := Agent("--config", str(config)))
    base = agent.url()
    agent.send(
        '{"server": "srv-a", "event": "Started"}',
        "this is not JSON",
        '{"server": "srv-a", "event": "CreatingContainer"}',
        '{"server": "srv-b", "status": "ready"}',
        '{"server": "srv-c", "event": "Error", "data": "image not found"}',
        '{"server": "srv-d", "event": "Exploded"}',
        "x" * (MAX_LINE + 10),
        '{"server": "srv-d", "status": "installing", "extra": 1}',
        '{"server": "srv-a", "event": "Ready"}',
    )
    assert wait_until(lambda: {"srv-a", "srv-b", "srv-c"} <= set(app.store.latest()), 10)
    assert wait_until(lambda: app.store.latest()["srv-a"]["status"] == "ready", 10)
    latest = app.store.latest()
    assert ("ready", None) == (latest["srv-b"]["status"], latest["srv-b"]["data"])
    assert ("failed", "image not found") == (latest["srv-c"]["status"], latest["srv-c"]["data"])
    assert ["installing", "installing", "ready"] == [
        h["status"] for h in app.store.history("srv-a")
    ]
    assert "srv-d" not in latest
    agent.wait_for(r"stdin:2: skipped a malformed line: not JSON")
    agent.wait_for(r"stdin:6: skipped a malformed line: unknown lifecycle event 'Exploded'")
    agent.wait_for(rf"stdin:7: skipped a malformed line: longer than {MAX_LINE} bytes")
    agent.wait_for(r"stdin:8: skipped a malformed line: unknown key 'extra'")
    # The routes answer while it runs, and only with the API token.
    assert 401 == get(base, "/remote/stats", token=None)[0]
    assert 401 == get(base, "/remote/stats", token=TOKEN)[0]
    status, stats = get(base, "/remote/stats")
    assert (200, 5) == (status, stats["submitted"])
    status, doc = get(base, "/remote/config")
    assert (200, url) == (status, doc["url"])
    assert 0 == agent.finish()
    agent.wait_for(r"stopped end of input: 9 lines read, 4 skipped; .*5 submitted, 5 delivered")
    assert [] == agent.out


def test_sigterm_flushes_what_is_queued_and_exits_0(
    tmp_path: Path, remote: ScriptedRemote, agents: list[Agent]
) -> None:
    remote.gate.clear()  # hold every POST: the updates stay pending
    config = tmp_path / "config.json"
    write_config(config, remote.url)
    agents.append(agent := Agent("--config", str(config), "--flush-timeout", "10"))
    base = agent.url()
    agent.send(*(f'{{"server": "s{i}", "status": "installing"}}' for i in range(3)))
    assert wait_until(lambda: get(base, "/remote/stats")[1]["pending"] == 3, 10)
    agent.proc.send_signal(signal.SIGTERM)
    remote.gate.set()
    assert 0 == agent.wait()
    agent.wait_for(r"stopped by SIGTERM: 3 lines read, 0 skipped; .*3 delivered, 0 failed")
    assert ["s0", "s1", "s2"] == sorted(r.json()["server"] for r in remote.posts())


@pytest.mark.skipif(not HAS_TASKS, reason="needs /proc/PID/task (Linux)")
def test_only_the_agents_main_thread_can_take_sigterm_sigint_or_sighup(
    tmp_path: Path, remote: ScriptedRemote, agents: list[Agent]
) -> None:
    """A process's signal goes to a thread that does not block it: here, only the main loop's."""
    config = tmp_path / "config.json"
    write_config(config, remote.url)
    agents.append(agent := Agent("--config", str(config)))
    agent.url()
    agent.send('{"server": "s1", "status": "installing"}')  # a worker and the deadline guard
    assert wait_until(lambda: len(remote.posts()) == 1, 10)
    pid = agent.proc.pid
    tids = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    assert len(tids) >= 4, "the engine's and the API server's threads run beside the main one"
    wanted = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    for tid in tids:
        blocked = wanted & blocked_signals(tid, pid)
        assert blocked == (set() if tid == pid else wanted), tid


@pytest.mark.owns_signals
@pytest.mark.timeout(30)
@pytest.mark.skipif(not HAS_TASKS, reason="reads /proc (Linux)")
def test_a_signal_another_thread_takes_wakes_the_agents_main_loop_at_once() -> None:
    """
    Python runs a handler in the main thread only once that thread wakes up.

    The agent's loop sleeps in poll() on stdin and its wakeup pipe, so the
    interpreter itself must write to the pipe, from whichever thread took the
    signal (signal.set_wakeup_fd): the handler alone never ran, and the agent
    waited for stdin's next line.
    """
    from lightd_sync._cli.agent import _from_fd, _Wakeup

    silent_in, writer = os.pipe()  # a stdin that says nothing
    main = threading.main_thread().native_id
    woken = threading.Event()

    def other() -> None:
        # Once the main thread sleeps in poll(), take a SIGTERM in this thread.
        wchan = Path(f"/proc/self/task/{main}/wchan")
        wait_until(lambda: "poll" in wchan.read_text(), 10)
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
        if not woken.wait(5):
            os.write(writer, b"not woken\n")  # unblock the loop so that the test fails, not hangs

    try:
        with _Wakeup() as wake:
            thread = threading.Thread(target=other, name="test-takes-the-signal")
            thread.start()
            item = next(_from_fd(silent_in, wake))
            woken.set()
            thread.join(10)
        assert ("signal", signal.SIGTERM) == item
    finally:
        os.close(silent_in)
        os.close(writer)


def test_api_token_env_and_sighup_reload(
    tmp_path: Path, reference: tuple[receiver.ReceiverApp, str], agents: list[Agent]
) -> None:
    _, url = reference
    config = tmp_path / "config.json"
    write_config(config, url, api_token=None)
    env = {"MY_API_TOKEN": API_TOKEN}
    agents.append(
        agent := Agent("--config", str(config), "--api-token-env", "MY_API_TOKEN", env=env)
    )
    base = agent.url()
    assert 1000 == get(base, "/remote/config")[1]["queue_size"]
    write_config(config, url, api_token=None, queue_size=77)
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait_for(r"SIGHUP: reloaded; changed: queue_size")
    assert 77 == get(base, "/remote/config")[1]["queue_size"]
    config.write_text("{broken")
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait_for(r"SIGHUP: reload failed, the config is unchanged: .*line 1, column 2")
    status, text = get(base, "/metrics")
    assert 200 == status and b"lightd_sync_updates_pending 0\n" in text
    assert 0 == agent.finish()


def test_without_an_api_token_it_refuses_to_start(
    tmp_path: Path, reference: tuple[receiver.ReceiverApp, str], agents: list[Agent]
) -> None:
    config = tmp_path / "config.json"
    write_config(config, reference[1], api_token=None)
    agents.append(agent := Agent("--config", str(config)))
    agents.append(unset := Agent("--config", str(config), "--api-token-env", "NOT_SET_ANYWHERE"))
    assert 2 == agent.finish()
    assert "no API token: set authorization.token" in agent.output()
    assert 2 == unset.finish()
    assert "$NOT_SET_ANYWHERE is empty or unset" in unset.output()
    assert "listening" not in agent.output() + unset.output()


# -- in-process: the parser, and stdin without a file descriptor -------------------


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("", "not JSON"),
        ("{", "not JSON"),
        ('{"server": "a", "event": "Started"} junk', "not JSON (Extra data"),
        ("[]", "expected a JSON object, got list"),
        ('"Started"', "expected a JSON object, got str"),
        ('{"event": "Started"}', "no server id"),
        ('{"server": "", "event": "Started"}', "must not be empty"),
        ('{"server": 7, "event": "Started"}', "must be a str"),
        ('{"server": "a\\u0000b", "event": "Started"}', "control"),
        ('{"server": "a"}', 'exactly one of "event", "status" and "error"'),
        ('{"server": "a", "event": "Started", "status": "ready"}', "exactly one of"),
        ('{"server": "a", "event": "started"}', "unknown lifecycle event 'started'"),
        ('{"server": "a", "event": 1}', "event: expected a string, got int"),
        ('{"server": "a", "status": "done"}', "unknown status 'done'"),
        ('{"server": "a", "status": "ready", "data": "x"}', '"data" goes only with status failed'),
        ('{"server": "a", "event": "Ready", "data": "x"}', '"data" goes only with event Error'),
        ('{"server": "a", "event": "Error", "data": 3}', "data: expected a string, got int"),
        ('{"server": "a", "server": "b", "event": "Ready"}', "duplicate key 'server'"),
        ('{"server": "a", "status": Infinity}', "Infinity is not JSON"),
        ('{"server": "a", "event": "Ready", "ts": 1}', "unknown key 'ts'"),
        ("[" * 100_000, "not JSON"),
    ],
)
def test_parse_event_says_what_is_wrong(line: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        parse_event(line)


def test_parse_event_accepts_the_three_forms() -> None:
    assert ("a", "event", "Started", None, None) == parse_event(
        '{"server": "a", "event": "Started"}'
    )[:5]
    assert ("a", "event", "Error", "boom", None) == parse_event(
        '{"server": "a", "event": "Error", "data": "boom"}'
    )[:5]
    assert ("a", "event", "Error", None) == parse_event('{"event": "Error", "server": "a"}')[:4]
    assert ("a", "status", "ready", None) == parse_event('{"server": "a", "status": "ready"}')[:4]
    assert ("a", "status", "failed", "x") == parse_event(
        '{"server": "a", "status": "failed", "data": "x"}'
    )[:4]
    assert ("a", "event", "Ready", None) == parse_event(
        '{"server": "a", "event": "Ready", "data": null}'
    )[:4]


def test_parse_event_takes_every_error_form_lightd_documents() -> None:
    # Lightd's documentation: "failed", "timeout", custom messages; "data" optional.
    assert AgentLine("a", "error", "timeout") == parse_event('{"server": "a", "error": "timeout"}')
    assert AgentLine("a", "error", "failed", "x") == parse_event(
        '{"server": "a", "error": "failed", "data": "x"}'
    )
    assert AgentLine("a", "error", "disk full") == parse_event(
        '{"server": "a", "error": "disk full", "data": null}'
    )
    assert AgentLine("a", "event", "Error", "x", "timeout") == parse_event(
        '{"server": "a", "event": "Error", "error": "timeout", "data": "x"}'
    )
    assert AgentLine("a", "status", "failed", None, "timeout") == parse_event(
        '{"server": "a", "status": "failed", "error": "timeout"}'
    )
    # The body as the protocol carries it, piped from elsewhere.
    assert AgentLine("a", "error", "timeout") == parse_event(
        '{"event": "update", "server": "a", "error": "timeout"}'
    )
    assert AgentLine("a", "status", "ready") == parse_event(
        '{"event": "update", "server": "a", "status": "ready"}'
    )


BILLING = (
    '"memory_gb": 0.5, "cpu_vcpus": 0.25, "storage_gb": 2, "egress_gb": 0.01, '
    '"duration_hours": 1, "estimated_cost": 0.0123'
)


def test_parse_event_takes_billing_events() -> None:
    line = parse_event(f'{{"event": "billing", "server": "a", {BILLING}, "timestamp": 1767225600}}')
    assert ("a", "billing") == (line.server, line.kind)
    assert {
        "memory_gb": 0.5,
        "cpu_vcpus": 0.25,
        "storage_gb": 2,
        "egress_gb": 0.01,
        "duration_hours": 1,
        "estimated_cost": 0.0123,
        "timestamp": 1767225600,
    } == line.billing
    assert line.billing is not None
    assert "timestamp" not in parse_event(f'{{"event": "billing", "server": "a", {BILLING}}}')[5]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('{"server": "a", "error": ""}', "error must not be empty"),
        ('{"server": "a", "error": 3}', "error must be a str, not int"),
        ('{"server": "a", "error": "' + "x" * 9000 + '"}', "error is 9000 characters long"),
        ('{"server": "a", "error": "timeout", "status": "failed", "event": "Error"}',
         "exactly one of"),
        ('{"server": "a", "event": "Ready", "error": "timeout"}',
         '"error" goes only with event Error'),
        ('{"server": "a", "status": "ready", "error": "timeout"}',
         '"error" goes only with status failed'),
        ('{"event": "update", "server": "a"}', '"event": "update" needs "status" or "error"'),
        ('{"event": "billing", "server": "a"}', "memory_gb: missing"),
        ('{"event": "billing", "server": "a", ' + BILLING.replace("0.5", "-1") + "}",
         "memory_gb: must not be negative"),
        ('{"event": "billing", "server": "a", ' + BILLING.replace("0.25", '"1"') + "}",
         "cpu_vcpus: must be a number, not str"),
        ('{"event": "billing", "server": "a", ' + BILLING.replace("0.0123", "true") + "}",
         "estimated_cost: must be a number, not bool"),
        ('{"event": "billing", "server": "a", ' + BILLING + ', "timestamp": 1.5}',
         "timestamp: must be whole seconds"),
        ('{"event": "billing", "server": "a", ' + BILLING + ', "status": "ready"}',
         "unknown key 'status' in a billing event"),
        ('{"event": "billing", ' + BILLING + "}", "no server id"),
        ('{"event": "billing", "server": "a", ' + BILLING.replace("0.5", "1e400") + "}",
         "memory_gb: must be a finite number"),
        ('{"event": "billing", "server": "a", ' + BILLING.replace("0.5", "1" + "0" * 400) + "}",
         "memory_gb: must be a finite number"),
        ('{"event": "billing", "server": "a", ' + BILLING.replace("0.5", "1" + "0" * 5000) + "}",
         "not JSON"),
        ('{"event": "billing", "server": "a", ' + BILLING + ', "timestamp": -1}',
         "timestamp: must be from 0"),
        ('{"event": "billing", "server": "a", "server": "b", ' + BILLING + "}",
         "duplicate key 'server'"),
    ],
)  # fmt: skip
def test_parse_event_says_what_is_wrong_with_error_and_billing_forms(line: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        parse_event(line)


def test_error_forms_and_billing_lines_reach_the_remote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightd_sync.testing import LightdRemote

    billing = (
        '"memory_gb": 0.5, "cpu_vcpus": 0.25, "storage_gb": 2, "egress_gb": 0.01, '
        '"duration_hours": 1, "estimated_cost": 0.0123'
    )
    lines = [
        '{"server": "e1", "error": "timeout"}',
        '{"server": "e2", "error": "disk full", "data": "/var at 100%"}',
        '{"server": "e3", "event": "Error", "error": "timeout", "data": "pull took 10 min"}',
        '{"server": "e4", "event": "Error", "data": "image not found"}',
        '{"server": "e5", "status": "failed", "error": "oom"}',
        f'{{"event": "billing", "server": "e1", {billing}, "timestamp": 1767225600}}',
        f'{{"event": "billing", "server": "e2", {billing}}}',
        '{"event": "billing", "server": "e3", "memory_gb": -1}',
    ]
    with LightdRemote() as remote:
        config = tmp_path / "config.json"
        write_config(config, remote.url)
        config.write_text(config.read_text().replace(TOKEN, remote.token))
        monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"{line}\n" for line in lines)))
        for var in ("LIGHTD_REMOTE_ENABLED", "LIGHTD_REMOTE_URL", "LIGHTD_REMOTE_TOKEN"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv("LIGHTD_API_TOKEN", raising=False)
        before = int(time.time())
        assert 0 == main(["agent", "--config", str(config), "--listen", "127.0.0.1:0"])
        err = capsys.readouterr().err
        assert "stdin:8: skipped a malformed line: memory_gb: must not be negative" in err
        assert "8 lines read, 1 skipped" in err
        assert sorted(
            [
                {"event": "update", "server": "e1", "error": "timeout"},
                {"event": "update", "server": "e2", "error": "disk full", "data": "/var at 100%"},
                {"event": "update", "server": "e3", "error": "timeout", "data": "pull took 10 min"},
                {"event": "update", "server": "e4", "error": "failed", "data": "image not found"},
                {"event": "update", "server": "e5", "error": "oom"},
            ],
            key=str,
        ) == sorted(remote.updates, key=str)
        billed = {b["server"]: b for b in remote.billing}
        assert 1767225600 == billed["e1"]["timestamp"]
        assert before <= billed["e2"]["timestamp"] <= int(time.time())
        assert ["event", "server", "memory_gb", "cpu_vcpus", "storage_gb", "egress_gb",
                "duration_hours", "estimated_cost", "timestamp"] == list(billed["e2"])  # fmt: skip


def test_parse_listen() -> None:
    assert ("127.0.0.1", 8071) == parse_listen("127.0.0.1:8071")
    assert ("::1", 0) == parse_listen("[::1]:0")
    for bad in ("8071", ":8071", "host:", "host:x", "host:70000", "[::1]"):
        with pytest.raises(CliError):
            parse_listen(bad)


def test_in_process_with_a_stdin_that_has_no_file_descriptor(
    tmp_path: Path,
    reference: tuple[receiver.ReceiverApp, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app, url = reference
    config = tmp_path / "config.json"
    write_config(config, url)
    lines = '{"server": "p1", "event": "Started"}\nnope\n{"server": "p1", "status": "ready"}\n'
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    for var in ("LIGHTD_REMOTE_ENABLED", "LIGHTD_REMOTE_URL", "LIGHTD_REMOTE_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("LIGHTD_API_TOKEN", raising=False)
    before = signal.getsignal(signal.SIGTERM)
    assert 0 == main(["agent", "--config", str(config), "--listen", "127.0.0.1:0"])
    assert before == signal.getsignal(signal.SIGTERM)
    err = capsys.readouterr().err
    assert "stdin:2: skipped a malformed line: not JSON" in err
    assert "3 lines read, 1 skipped" in err
    assert ["installing", "ready"] == [h["status"] for h in app.store.history("p1")]
    assert TOKEN not in err and API_TOKEN not in err
