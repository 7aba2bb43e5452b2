"""The ``lightd-sync`` command, run as users run it: a real subprocess per case."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

import lightd_sync
from lightd_sync.__main__ import main

from .conftest import TOKEN
from .servers import ScriptedRemote, refused_url

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
BILLING = {
    "memory_gb": 0.5,
    "cpu_vcpus": 0.25,
    "storage_gb": 2,
    "egress_gb": 0.01,
    "duration_hours": 1,
    "estimated_cost": 0.0123,
}

#: A token the receivers in these tests never accept.
WRONG_TOKEN = "lightd_00000000000000000000000000000bad"
#: Budget of one short command (interpreter start-up included), generous for slow CI.
RUN_TIMEOUT = 20


def cli_env(**extra: str) -> dict[str, str]:
    """A CLI subprocess's environment: UTF-8; no LIGHTD_REMOTE_* nor proxy of the developer's."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LIGHTD_REMOTE_") and not k.lower().endswith("_proxy")
    }
    env.update(PYTHONUTF8="1", PYTHONIOENCODING="utf-8", **extra)
    return env


def run_cli(
    *args: str, env: Optional[dict[str, str]] = None, timeout: float = RUN_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m lightd_sync ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "lightd_sync", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env or cli_env(),
        timeout=timeout,
        check=False,
    )


def assert_no_secret(proc: Any, *secrets: str) -> None:
    """The token appears nowhere in what the command printed."""
    for secret in secrets or (TOKEN,):
        assert secret not in proc.stdout
        assert secret not in proc.stderr


def write_config(path: Path, url: str, token: str = TOKEN, **remote: Any) -> str:
    """Write a Lightd config.json pointing at *url*; return its path."""
    document = {"remote": {"enabled": True, "url": url, "token": token, **remote}}
    path.write_text(json.dumps(document), encoding="utf-8")
    return str(path)


@contextlib.contextmanager
def running_receiver(token: str = TOKEN) -> Iterator[Any]:
    """The reference receiver, in this process, on 127.0.0.1 and a free port (at ``.url``)."""
    from lightd_sync._server.http import serve
    from lightd_sync.receiver import create_app

    with create_app(token, audit=None) as app, serve(app) as server:
        app.url = server.url  # type: ignore[attr-defined]
        yield app


@pytest.fixture
def receiver() -> Iterator[Any]:
    with running_receiver() as app:
        yield app


class Streaming:
    """A long-running CLI subprocess whose output lines are read as they come."""

    def __init__(self, *args: str, env: Optional[dict[str, str]] = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lightd_sync", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env=env or cli_env(),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout, True)),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr, False)),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, keep: list[str], forward: bool) -> None:
        for line in stream:
            keep.append(line)
            if forward:
                self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 10.0) -> str:
        """Return the first next stdout line matching *pattern*; fail after *timeout*."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(0.0, left))
            except queue.Empty:
                raise AssertionError(
                    f"no line matching {pattern!r} within {timeout} s; "
                    f"stdout={''.join(self.stdout)!r} stderr={''.join(self.stderr)!r}"
                ) from None
            if re.search(pattern, line):
                return line

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send *sig*, wait for the exit, collect the output; return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for reader in self._readers:
            reader.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    @property
    def stdout_text(self) -> str:
        return "".join(self.stdout)

    @property
    def stderr_text(self) -> str:
        return "".join(self.stderr)


# -- the command itself ---------------------------------------------------------


def test_version() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"lightd-sync {lightd_sync.__version__}"


@pytest.mark.parametrize("command", ["demo", "check", "send", "tail", "receiver"])
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: lightd-sync {command}")
    assert "--debug" in out


def test_help_lists_the_subcommands_and_exit_codes() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ("demo", "check", "send", "tail", "receiver"):
        assert f"    {command} " in proc.stdout
    assert "exit codes" in proc.stdout


@pytest.mark.parametrize(
    "argv",
    [[], ["bogus"], ["check"], ["send", "--config", "x.json", "only-server"], ["tail"]],
    ids=["nothing", "unknown-command", "check-without-config", "send-without-status", "tail"],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err
    assert "Traceback" not in err


def test_unexpected_errors_are_one_line_unless_debug(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightd_sync._cli import tail

    def boom(args: Any) -> int:
        raise RuntimeError("something broke")

    monkeypatch.setattr(tail, "run", boom)
    assert main(["tail", "x"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "lightd-sync: error: unexpected RuntimeError: something broke "
        "(run with --debug to see the traceback)\n"
    )
    assert main(["--debug", "tail", "x"]) == 1
    assert "Traceback" in capsys.readouterr().err
    assert main(["tail", "x", "--debug"]) == 1  # accepted after the subcommand too
    assert "Traceback" in capsys.readouterr().err


def test_ctrl_c_exits_130_quietly(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightd_sync._cli import tail

    def interrupted(args: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(tail, "run", interrupted)
    assert main(["tail", "x"]) == 130
    assert capsys.readouterr().err == ""


# -- demo ---------------------------------------------------------------------


def test_demo_plays_the_three_flows_against_the_receiver_within_5_s() -> None:
    started = time.monotonic()
    proc = run_cli("demo", timeout=10)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 5
    out = proc.stdout
    for flow in ("installation", "error", "reinstall"):
        assert f"── {flow}:" in out
    for server in ("demo-web-001", "demo-cache-002", "demo-db-003"):
        assert server in out
    assert '"Docker container creation failed: image not found"' in out
    assert "✗" not in out
    assert "✓ healthy" in out
    assert re.search(r"submitted 15 +delivered 15 +failed 0 +dropped 0 +pending 0", out)
    assert "✓ every update arrived as sent" in out
    assert not re.search(r"lightd_[0-9a-f]{32}", out + proc.stderr)  # only ever redacted
    assert re.search(r"token +lightd_…[0-9a-f]{4} ", out)
    assert proc.stderr == ""


def test_demo_through_the_file_transport_shows_the_lines(tmp_path: Path) -> None:
    path = tmp_path / "updates.jsonl"
    proc = run_cli("demo", "--transport", "file", "--path", str(path))
    assert proc.returncode == 0, proc.stderr
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 15
    bodies = [json.loads(line)["body"] for line in lines]
    assert {"event": "update", "server": "demo-db-003", "error": "failed",
            "data": "Docker container creation failed: image not found"} in bodies  # fmt: skip
    for line in lines:
        assert line in proc.stdout
    assert f"lightd-sync tail {path}" in proc.stdout


def test_demo_file_transport_needs_a_path(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--transport", "file"]) == 2
    assert "--transport file needs --path FILE" in capsys.readouterr().err


# -- send ---------------------------------------------------------------------


def test_send_a_status_update(receiver: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.json", receiver.url)
    proc = run_cli("send", "--config", config, "my-server-001", "installing")
    assert proc.returncode == 0, proc.stderr
    assert "✓ accepted" in proc.stdout
    assert f"POST {receiver.url}/update" in proc.stdout
    assert receiver.store.latest()["my-server-001"]["status"] == "installing"
    assert_no_secret(proc)


def test_send_an_error_update(receiver: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.json", receiver.url)
    proc = run_cli("send", "--config", config, "my-server-001", "failed", "--data", "no image")
    assert proc.returncode == 0, proc.stderr
    (stored,) = receiver.store.history("my-server-001")
    assert (stored["status"], stored["error"], stored["data"]) == ("failed", "failed", "no image")
    assert_no_secret(proc)


def test_send_refused_by_the_remote_exits_1(receiver: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.json", receiver.url, token=WRONG_TOKEN)
    proc = run_cli("send", "--config", config, "my-server-001", "ready")
    assert proc.returncode == 1
    assert "lightd-sync: error: not accepted:" in proc.stderr
    assert "tokens match on both sides" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert receiver.store.count() == 0
    assert_no_secret(proc, TOKEN, WRONG_TOKEN)


def test_send_answered_404_names_the_url_and_the_base_url(receiver: Any, tmp_path: Path) -> None:
    for url, hint in [
        (receiver.url + "/update", f"without /update or /health: try {receiver.url}"),
        (receiver.url + "/api", "/update and /health are appended to it"),
    ]:
        proc = run_cli("send", "--config", write_config(tmp_path / "c.json", url), "s1", "ready")
        assert proc.returncode == 1
        assert f"POST {url}/update answered HTTP 404" in proc.stderr
        assert hint in proc.stderr
        assert proc.stderr.count("lightd-sync: error:") == 1
        assert_no_secret(proc)


def test_send_to_an_unreachable_remote_exits_1(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.json", refused_url())
    proc = run_cli("send", "--config", config, "my-server-001", "ready")
    assert proc.returncode == 1
    assert "refused" in proc.stderr
    assert_no_secret(proc)


def test_send_carries_an_event_id_and_takes_every_error_form(
    remote: ScriptedRemote, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "config.json", remote.url)
    cases = [
        (["s1", "ready"], {"event": "update", "server": "s1", "status": "ready"}),
        (["s1", "--error", "timeout"], {"event": "update", "server": "s1", "error": "timeout"}),
        (
            ["s1", "failed", "--error", "disk full", "--data", "/var at 100%"],
            {"event": "update", "server": "s1", "error": "disk full", "data": "/var at 100%"},
        ),
        (
            ["s1", "failed", "--data", "no image"],
            {"event": "update", "server": "s1", "error": "failed", "data": "no image"},
        ),
    ]
    for args, body in cases:
        proc = run_cli("send", "--config", config, *args)
        assert proc.returncode == 0, proc.stderr
        assert json.dumps(body, separators=(",", ":")) in proc.stdout
    posts = remote.posts()
    assert [body for _, body in cases] == [p.json() for p in posts]
    ids = [p.headers.get("X-Lightd-Event-Id", "") for p in posts]
    assert all(UUID.fullmatch(i) for i in ids), ids
    assert len(set(ids)) == len(ids)


def test_send_a_billing_event_in_lightd_s_field_order(
    remote: ScriptedRemote, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "config.json", remote.url)
    before = int(time.time())
    proc = run_cli("send", "--config", config, "s1", "--billing", json.dumps(BILLING))
    assert proc.returncode == 0, proc.stderr
    (post,) = remote.posts()
    assert post.path == "/update"
    body = post.json()
    assert list(body) == ["event", "server", *BILLING, "timestamp"]
    assert {"event": "billing", "server": "s1", **BILLING}.items() <= body.items()
    assert before <= body["timestamp"] <= int(time.time())
    assert UUID.fullmatch(post.headers["X-Lightd-Event-Id"])
    stamped = dict(BILLING, timestamp=1767225600)
    proc = run_cli("send", "--config", config, "s2", "--billing", json.dumps(stamped))
    assert proc.returncode == 0, proc.stderr
    assert 1767225600 == remote.posts()[1].json()["timestamp"]


def test_send_needs_no_config_file_when_the_variables_give_the_config(
    remote: ScriptedRemote,
) -> None:
    env = cli_env(LIGHTD_REMOTE_URL=remote.url, LIGHTD_REMOTE_TOKEN=TOKEN)
    proc = run_cli("send", "my-server-001", "ready", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "✓ accepted" in proc.stdout
    (post,) = remote.posts()
    assert f"Bearer {TOKEN}" == post.headers["Authorization"]
    assert_no_secret(proc)
    # Half a config: it names the variable that is missing.
    proc = run_cli("send", "s1", "ready", env=cli_env(LIGHTD_REMOTE_URL=remote.url))
    assert proc.returncode == 2
    assert "remote.token: missing" in proc.stderr
    assert "set LIGHTD_REMOTE_TOKEN or LIGHTD_REMOTE_TOKEN_FILE" in proc.stderr
    proc = run_cli("send", "s1", "ready")
    assert proc.returncode == 2
    assert proc.stderr.startswith("lightd-sync: error: no config: give Lightd's config.json")
    off = cli_env(LIGHTD_REMOTE_URL=remote.url, LIGHTD_REMOTE_TOKEN=TOKEN)
    off["LIGHTD_REMOTE_ENABLED"] = "false"
    proc = run_cli("send", "s1", "ready", env=off)
    assert proc.returncode == 2
    assert "LIGHTD_REMOTE_ENABLED turns sync off" in proc.stderr
    assert 1 == len(remote.posts())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["my-server-001", "done"], "unknown status 'done'"),
        (["my-server-001"], "give a STATUS (installing, ready, failed), --error VALUE"),
        (["s1", "ready", "--error", "timeout"], "--error is only sent with status 'failed'"),
        (["s1", "--error", ""], "--error: error must not be empty"),
        (["s1", "--billing", "{"], "--billing: not JSON"),
        (["s1", "--billing", "[]"], "--billing: expected a JSON object, got list"),
        (
            ["s1", "--billing", json.dumps({**BILLING, "memory_gb": -1})],
            "--billing: memory_gb: must not be negative",
        ),
        (
            ["s1", "--billing", json.dumps({k: v for k, v in BILLING.items() if k != "egress_gb"})],
            "--billing: egress_gb: missing",
        ),
        (
            ["s1", "--billing", json.dumps({**BILLING, "server": "s2"})],
            '--billing: "event" and "server", if given, must be "billing" and SERVER',
        ),
        (
            ["s1", "ready", "--billing", json.dumps(BILLING)],
            "--billing sends a billing event: STATUS goes with a status update",
        ),
        (
            ["s1", "--data", "x", "--billing", json.dumps(BILLING)],
            "--billing sends a billing event: --data goes with a status update",
        ),
        (["", "ready"], "server id must not be empty"),
        (["bad\x1bid", "ready"], "control or non-printable characters"),
        (["x" * 256, "ready"], "at most 255"),
        (["my-server-001", "ready", "--data", "x"], "--data is only sent with status 'failed'"),
    ],
    ids=[
        "status",
        "no-status",
        "error-with-ready",
        "empty-error",
        "billing-not-json",
        "billing-list",
        "billing-negative",
        "billing-missing",
        "billing-other-server",
        "billing-with-status",
        "billing-with-data",
        "empty-server",
        "control-chars",
        "long-server",
        "data-without-failed",
    ],
)
def test_send_bad_arguments_exit_2(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "config.json", refused_url())
    assert main(["send", "--config", config, *args]) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.err.startswith("lightd-sync: error: ")
    assert captured.err.count("\n") == 1
    assert TOKEN not in captured.out + captured.err


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ('{"remote": {"enabled": false}}', "remote.enabled is false"),
        ('{"remote": {"enabled": tru}}', "invalid JSON at line 1"),
        (json.dumps({"remote": {"enabled": True, "url": "ftp://x", "token": TOKEN}}), "remote.url"),
    ],
    ids=["disabled", "bad-json", "bad-url"],
)
def test_send_with_a_bad_config_exits_2(
    document: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.json"
    config.write_text(document, encoding="utf-8")
    assert main(["send", "--config", str(config), "my-server-001", "ready"]) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert TOKEN not in captured.out + captured.err


# -- tail ---------------------------------------------------------------------


def record(server: str, status: str, ts: str = "2024-05-01T10:00:00.000Z", **extra: str) -> str:
    body = {"event": "update", "server": server, "status": status, **extra}
    if "data" in extra:
        del body["status"]
        body["error"] = "failed"
    return json.dumps({"ts": ts, "body": body}) + "\n"


def test_tail_prints_one_line_per_update_and_skips_malformed_ones(tmp_path: Path) -> None:
    log = tmp_path / "updates.jsonl"
    log.write_text(
        record("my-server-001", "installing")
        + "this is not json\n"
        + record("my-server-001", "failed", data="image not found\x1b[2J")
        + '{"ts": "2024-05-01T10:00:02.000Z"}\n'
        + record("my-server-002", "ready"),
        encoding="utf-8",
    )
    proc = run_cli("tail", str(log))
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == [
        "2024-05-01T10:00:00.000Z  my-server-001     installing",
        "2024-05-01T10:00:00.000Z  my-server-001     failed: image not found\\x1b[2J",
        "2024-05-01T10:00:00.000Z  my-server-002     ready",
    ]
    assert f"{log}:2: skipped a malformed line: not valid JSON" in proc.stderr
    assert f'{log}:4: skipped a malformed line: no "body" object' in proc.stderr
    assert "Traceback" not in proc.stderr


def test_tail_of_a_missing_file_exits_2(tmp_path: Path) -> None:
    proc = run_cli("tail", str(tmp_path / "nope.jsonl"))
    assert proc.returncode == 2
    assert proc.stderr == (
        f"lightd-sync: error: {tmp_path / 'nope.jsonl'}: no such file "
        "(the file transport creates it on the first update)\n"
    )


def test_tail_follow_sees_appended_lines_and_stops_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "updates.jsonl"
    log.write_text(record("first-server", "installing"), encoding="utf-8")
    tail = Streaming("tail", "--follow", "--interval", "0.05", str(log))
    try:
        tail.wait_for("first-server +installing")
        with log.open("a", encoding="utf-8") as fh:
            fh.write(record("second-server", "ready"))
        tail.wait_for("second-server +ready")
    finally:
        code = tail.stop(signal.SIGTERM)
    assert code == 0
    assert tail.stderr_text == ""


def test_tail_shows_every_error_form_and_billing_events(tmp_path: Path) -> None:
    from lightd_sync import BillingEvent, Status, Update
    from lightd_sync._transports.file import FileTransport

    log = tmp_path / "updates.jsonl"
    with FileTransport(log) as transport:
        transport.send(Update("s1", Status.FAILED, error="timeout"))
        transport.send(Update("s1", Status.FAILED, "no image"))
        transport.send(Update("s1", Status.FAILED, "/var full", error="disk"))
        transport.send(BillingEvent("s1", **BILLING, timestamp=1767225600))
    proc = run_cli("tail", str(log))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert [line.split(None, 2)[2] for line in proc.stdout.splitlines()] == [
        "timeout",
        "failed: no image",
        "disk: /var full",
        "billing: memory 0.5 GB, 0.25 vCPU, storage 2 GB, egress 0.01 GB, 1 h, cost 0.0123",
    ]


def test_tail_of_a_file_that_is_no_file_transport_log_says_so_in_one_line(
    tmp_path: Path,
) -> None:
    import urllib.error
    import urllib.request

    from lightd_sync._server.http import serve
    from lightd_sync.receiver import create_app

    audit = tmp_path / "audit.jsonl"
    with create_app(TOKEN, audit=str(audit)) as app, serve(app) as server:
        for path in ("/health", "/update", "/servers"):
            request = urllib.request.Request(
                server.url + path, headers={"Authorization": f"Bearer {WRONG_TOKEN}"}
            )
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(request, timeout=5)
    assert audit.read_text(encoding="utf-8").count("\n") == 3
    for args in ([str(audit)], ["-f", str(audit)], ["-n", "1", str(audit)]):
        proc = run_cli("tail", *args)
        assert proc.returncode == 1, args
        assert proc.stdout == ""
        assert proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith(
            f"lightd-sync: error: {audit} is not a file-transport log: tail reads the lines "
            'the file transport writes to remote.path ({"ts": ..., "body": {...}}), and none '
            "of its 3 lines is one; it looks like a receiver's audit log"
        ), proc.stderr
        assert_no_secret(proc, TOKEN, WRONG_TOKEN)
    # One good record among them: the others are only skipped lines.
    with audit.open("a", encoding="utf-8") as fh:
        fh.write(record("s1", "ready"))
    proc = run_cli("tail", str(audit))
    assert proc.returncode == 0
    assert proc.stdout.split()[-2:] == ["s1", "ready"]
    assert proc.stderr.count("skipped a malformed line") == 3


def test_tail_follow_with_n_0_shows_only_the_lines_to_come(tmp_path: Path) -> None:
    log = tmp_path / "updates.jsonl"
    log.write_text(record("old-server", "installing"), encoding="utf-8")
    tail = Streaming("tail", "-f", "-n", "0", "--interval", "0.05", str(log))
    try:
        # Nothing is printed to wait on: wait until tail has read to the end of the file.
        size = log.stat().st_size
        deadline = time.monotonic() + 10
        while not _has_read(tail.proc.pid, log, size) and time.monotonic() < deadline:
            time.sleep(0.01)
        with log.open("a", encoding="utf-8") as fh:
            fh.write(record("new-server", "ready"))
        tail.wait_for("new-server +ready")
    finally:
        code = tail.stop(signal.SIGINT)  # Ctrl-C: the normal way to stop -f, exit 0
    assert code == 0
    assert tail.stderr_text == ""
    assert "old-server" not in tail.stdout_text
    assert run_cli("tail", "-n", "0", str(log)).stdout == ""
    proc = run_cli("tail", "-n", "-1", str(log))
    assert proc.returncode == 2
    assert "expected a whole number >= 0, got '-1'" in proc.stderr


def _has_read(pid: int, path: Path, size: int) -> bool:
    """Whether process *pid* has read *path* up to *size* (Linux /proc; elsewhere after 1 s)."""
    fds = Path(f"/proc/{pid}/fd")
    if not fds.is_dir():
        time.sleep(1)
        return True
    try:
        for fd in fds.iterdir():
            if os.path.realpath(fd) == str(path.resolve()):
                info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
                return f"pos:\t{size}\n" in info
    except OSError:
        pass
    return False


# -- receiver -----------------------------------------------------------------


def test_receiver_serves_until_sigterm(tmp_path: Path) -> None:
    from lightd_sync import HttpTransport, RemoteConfig, Update

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    token_file.chmod(0o600)
    db = tmp_path / "fleet.sqlite3"
    audit = tmp_path / "audit.jsonl"
    receiver = Streaming(
        "receiver",
        "--port",
        "0",
        "--db",
        str(db),
        "--token-file",
        str(token_file),
        "--audit",
        str(audit),
    )
    try:
        line = receiver.wait_for("listening on")
        url = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert url is not None, line
        assert "lightd_…c8d5" in line
        config = RemoteConfig(enabled=True, url=url.group(), token=TOKEN, timeout=5)
        with HttpTransport(config) as transport:
            transport.check_health()
            transport.send(Update("my-server-001", "installing"))
    finally:
        code = receiver.stop(signal.SIGTERM)
    assert code == 0, receiver.stderr_text
    assert "stopped by SIGTERM (1 update stored)" in receiver.stdout_text
    assert receiver.stderr_text == ""
    assert db.exists()
    outcomes = [json.loads(line)["outcome"] for line in audit.read_text().splitlines()]
    assert outcomes == ["ok", "stored"]
    assert_no_secret(_Output(receiver))
    assert TOKEN not in audit.read_text()


class _Output:
    def __init__(self, streaming: Streaming) -> None:
        self.stdout = streaming.stdout_text
        self.stderr = streaming.stderr_text


def test_receiver_without_a_token_exits_2() -> None:
    proc = run_cli("receiver", "--port", "0", "--token-env", "MY_REMOTE_TOKEN")
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        "lightd-sync: error: no token: $MY_REMOTE_TOKEN is empty or unset"
    )
    assert proc.stdout == ""


@pytest.mark.parametrize("argv", [["--token", TOKEN], [f"--token={TOKEN}"]])
def test_receiver_refuses_a_token_on_the_command_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["receiver", *argv]) == 2
    captured = capsys.readouterr()
    assert "every user of the machine can read" in captured.err
    assert TOKEN not in captured.out + captured.err


def test_receiver_that_cannot_listen_exits_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = run_cli("receiver", "--port", str(port), env=cli_env(LIGHTD_REMOTE_TOKEN=TOKEN))
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"lightd-sync: error: cannot listen on 127.0.0.1:{port}: ")
    assert_no_secret(proc)


# -- agent ----------------------------------------------------------------------


def run_agent(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lightd_sync", "agent", *args],
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=cli_env(LIGHTD_API_TOKEN=TOKEN),
        timeout=RUN_TIMEOUT,
        check=False,
    )


def test_agent_exits_0_at_the_end_of_its_input(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text('{"remote": {"enabled": false}}', encoding="utf-8")
    proc = run_agent("--config", str(config), "--listen", "127.0.0.1:0")
    assert proc.returncode == 0, proc.stderr


def test_agent_that_cannot_listen_exits_1(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text('{"remote": {"enabled": false}}', encoding="utf-8")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = run_agent("--config", str(config), "--listen", f"127.0.0.1:{port}")
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"lightd-sync: error: cannot listen on 127.0.0.1:{port}: ")


def test_agent_with_a_bad_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text('{"remote": {"enabled": true, "timeout": "ten"}}', encoding="utf-8")
    proc = run_agent("--config", str(config), "--listen", "127.0.0.1:0")
    assert proc.returncode == 2
    assert proc.stderr.startswith("lightd-sync: error: remote.timeout")
    assert "Traceback" not in proc.stderr


# -- every documented exit code is tested -------------------------------------------

#: (command, exit code) in docs/cli.md's table -> the tests here that make it happen.
EXIT_CODE_TESTS = {
    ("demo", 0): ["test_demo_plays_the_three_flows_against_the_receiver_within_5_s"],
    ("demo", 2): ["test_demo_file_transport_needs_a_path"],
    ("check", 0): ["test_cli_check.py::test_a_healthy_remote_passes_every_step"],
    ("check", 1): ["test_cli_check.py::test_a_wrong_token_says_the_tokens_do_not_match"],
    ("check", 2): ["test_cli_check.py::test_a_bad_or_disabled_config_is_a_failed_step"],
    ("check", 130): [
        "test_cli_check.py::test_each_step_is_printed_as_it_is_done_and_ctrl_c_keeps_them"
    ],
    ("send", 0): ["test_send_a_status_update"],
    ("send", 1): ["test_send_refused_by_the_remote_exits_1",
                  "test_send_to_an_unreachable_remote_exits_1"],
    ("send", 2): ["test_send_bad_arguments_exit_2", "test_send_with_a_bad_config_exits_2"],
    ("tail", 0): ["test_tail_prints_one_line_per_update_and_skips_malformed_ones",
                  "test_tail_follow_sees_appended_lines_and_stops_on_sigterm"],
    ("tail", 1): ["test_tail_of_a_file_that_is_no_file_transport_log_says_so_in_one_line"],
    ("tail", 2): ["test_tail_of_a_missing_file_exits_2"],
    ("tail", 130): ["test_ctrl_c_exits_130_quietly"],
    ("receiver", 0): ["test_receiver_serves_until_sigterm"],
    ("receiver", 1): ["test_receiver_that_cannot_listen_exits_1"],
    ("receiver", 2): ["test_receiver_without_a_token_exits_2"],
    ("agent", 0): ["test_agent_exits_0_at_the_end_of_its_input"],
    ("agent", 1): ["test_agent_that_cannot_listen_exits_1"],
    ("agent", 2): ["test_agent_with_a_bad_config_exits_2"],
    ("any", 2): ["test_usage_errors_exit_2"],
    ("any", 130): ["test_ctrl_c_exits_130_quietly"],
}  # fmt: skip


def documented_exit_codes() -> set[tuple[str, int]]:
    """``(command, code)`` for every non-empty cell of docs/cli.md's table of exit codes."""
    text = (Path(__file__).parent.parent / "docs" / "cli.md").read_text(encoding="utf-8")
    table = text.split("<!-- exit codes -->", 2)[1]
    rows = [line for line in table.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    codes = [int(cell) for cell in header[1:]]
    found = set()
    for row in rows[2:]:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        command = cells[0].strip("`")
        found |= {(command, code) for code, cell in zip(codes, cells[1:]) if cell != "—"}
    return found


def test_every_documented_exit_code_has_a_test() -> None:
    import importlib

    assert documented_exit_codes() == set(EXIT_CODE_TESTS)
    for names in EXIT_CODE_TESTS.values():
        for name in names:
            module_name, _, test = name.rpartition("::")
            module = importlib.import_module(
                f"tests.{module_name[:-3]}" if module_name else __name__
            )
            assert callable(getattr(module, test, None)), name
