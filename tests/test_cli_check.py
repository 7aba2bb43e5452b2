"""``lightd-sync check``: the troubleshooting walk against healthy and broken remotes."""

from __future__ import annotations

import json
import signal
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lightd_sync.__main__ import main
from lightd_sync._cli.check import STEPS

from .conftest import TOKEN
from .servers import Reply, ScriptedRemote, SilentServer, refused_url
from .test_cli import (
    WRONG_TOKEN,
    Streaming,
    assert_no_secret,
    cli_env,
    run_cli,
    running_receiver,
    write_config,
)


@pytest.fixture
def receiver() -> Iterator[Any]:
    with running_receiver() as app:
        yield app


#: The steps of a healthy http:// remote (tls is for https:// only, state with state_path).
ALL_STEPS = [step for step in STEPS if step not in ("tls", "state")]


def marks(stdout: str) -> dict[str, str]:
    """``{step name: mark}`` from check's text output."""
    found = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("✓", "✗", "!") and parts[1] in STEPS:
            found[parts[1]] = parts[0]
    return found


def step_line(stdout: str, name: str) -> str:
    """The line of step *name* in check's text output."""
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] == name:
            return line
    raise AssertionError(f"no {name} step in {stdout!r}")


@pytest.mark.parametrize("transport", ["http", "requests"])
def test_a_healthy_remote_passes_every_step(transport: str, receiver: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.json", receiver.url, transport=transport)
    proc = run_cli("check", "--config", config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert marks(proc.stdout) == dict.fromkeys(ALL_STEPS, "✓")
    assert f"{transport}: sends over HTTP to remote.url" in proc.stdout
    assert "none: connecting directly" in step_line(proc.stdout, "proxy")
    assert f"✓ all {len(ALL_STEPS)} checks passed" in proc.stdout
    assert "ms round trip" in proc.stdout
    assert_no_secret(proc)


def test_json_output_of_a_healthy_remote(receiver: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.json", receiver.url)
    proc = run_cli("check", "--config", config, "--json")
    assert proc.returncode == 0
    document = json.loads(proc.stdout)  # the whole of stdout is one document
    assert document["ok"] is True
    assert document["exit"] == 0
    assert document["interrupted"] is False
    assert [step["name"] for step in document["steps"]] == ALL_STEPS
    for step in document["steps"]:
        assert set(step) == {"name", "ok", "level", "detail", "fix"}
        assert step["ok"] is True
    assert_no_secret(proc)


def test_a_wrong_token_says_the_tokens_do_not_match(receiver: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.json", receiver.url, token=WRONG_TOKEN)
    proc = run_cli("check", "--config", config, "--json")
    assert proc.returncode == 1
    document = json.loads(proc.stdout)
    assert document["ok"] is False
    assert document["exit"] == 1
    token_step = document["steps"][-1]
    assert token_step["name"] == "token"
    assert token_step["ok"] is False
    assert "HTTP 401" in token_step["detail"]
    assert "the tokens do not match on both sides" in token_step["fix"]
    assert "lightd_…0bad" in token_step["detail"]  # redacted, to compare with the remote's
    assert_no_secret(proc, TOKEN, WRONG_TOKEN)


def test_a_refused_port_fails_at_tcp(tmp_path: Path) -> None:
    proc = run_cli("check", "--config", write_config(tmp_path / "config.json", refused_url()))
    assert proc.returncode == 1
    assert marks(proc.stdout) == dict.fromkeys(ALL_STEPS[: ALL_STEPS.index("tcp")], "✓") | {
        "tcp": "✗"
    }
    assert "nothing listens there" in proc.stdout
    assert "fix: start the remote server" in proc.stdout
    assert_no_secret(proc)


def test_a_server_that_never_answers_fails_at_health_within_the_timeout(tmp_path: Path) -> None:
    server = SilentServer().start()
    try:
        config = write_config(tmp_path / "config.json", server.url)
        started = time.monotonic()
        proc = run_cli("check", "--config", config, "--timeout", "0.5")
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    assert proc.returncode == 1
    assert marks(proc.stdout)["tcp"] == "✓"
    assert marks(proc.stdout)["health"] == "✗"
    assert "no answer within 0.5 s" in proc.stdout
    assert elapsed < 5
    assert_no_secret(proc)


def test_each_step_is_printed_as_it_is_done_and_ctrl_c_keeps_them(tmp_path: Path) -> None:
    """Against a silent remote, the steps before /health show while check still waits."""
    server = SilentServer().start()
    check = Streaming("check", "--config", write_config(tmp_path / "c.json", server.url),
                      "--timeout", "30")  # fmt: skip
    try:
        check.wait_for(r"^✓ tcp ", timeout=10)
        assert server.accepted.acquire(timeout=10)  # the tcp step's connection
        assert server.accepted.acquire(timeout=10)  # the health request's
        assert check.proc.poll() is None  # still waiting for /health: nothing was held back
        assert check.stop(signal.SIGINT) == 130
    finally:
        check.close()
        server.stop()
    out = check.stdout_text
    assert marks(out) == dict.fromkeys(ALL_STEPS[: ALL_STEPS.index("tcp") + 1], "✓")
    assert out.rstrip().endswith(f"! interrupted during health: {len(marks(out))} checks done")
    assert "Traceback" not in check.stderr_text
    assert TOKEN not in out + check.stderr_text


def test_ctrl_c_with_json_prints_the_steps_done(tmp_path: Path) -> None:
    server = SilentServer().start()
    config = write_config(tmp_path / "c.json", server.url)
    check = Streaming("check", "--config", config, "--timeout", "30", "--json")
    try:
        for _ in ("tcp", "health"):  # a connection each: check is at /health now
            assert server.accepted.acquire(timeout=10)
        assert check.stop(signal.SIGINT) == 130
    finally:
        check.close()
        server.stop()
    document = json.loads(check.stdout_text)
    assert document["interrupted"] is True
    assert document["ok"] is False
    assert document["exit"] == 130
    assert [s["name"] for s in document["steps"]] == ALL_STEPS[: ALL_STEPS.index("tcp") + 1]


def test_a_wrong_health_body_fails_at_health(remote: ScriptedRemote, tmp_path: Path) -> None:
    remote.script = lambda request: Reply(body=b"{}")
    proc = run_cli("check", "--config", write_config(tmp_path / "config.json", remote.url))
    assert proc.returncode == 1
    assert marks(proc.stdout)["health"] == "✗"
    assert "token" not in marks(proc.stdout)  # meaningless after that: not run
    assert 'without "endpoint": "active"' in proc.stdout
    assert 'fix: the remote must answer 200 {"status": 200, "endpoint": "active"}' in proc.stdout
    assert_no_secret(proc)


def test_an_unresolvable_host_fails_at_dns(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.json", "http://nothing.invalid")
    proc = run_cli("check", "--config", config, "--timeout", "3")
    assert proc.returncode == 1
    assert marks(proc.stdout) == {
        "config": "✓", "enabled": "✓", "transport": "✓", "url": "!", "proxy": "✓", "dns": "✗"
    }  # fmt: skip
    assert "cannot resolve nothing.invalid" in proc.stdout
    assert "hint: use https:// in production" in proc.stdout  # a warning, not a failure
    assert_no_secret(proc)


@pytest.mark.parametrize(
    ("document", "step", "message", "code"),
    [
        ('{"remote": {"enabled": true, "url": }}', "config", "invalid JSON at line 1", 2),
        ('{"remote": {"enabled": true, "timeout": "ten"}}', "config", "remote.timeout", 2),
        (
            '{"remote": {"enabled": true, "transport": "pigeon", "url": "http://127.0.0.1:9"}}',
            "transport",
            "unknown transport 'pigeon'",
            2,
        ),
        ('{"remote": {"enabled": false}}', "enabled", "remote.enabled is false or missing", 1),
    ],
    ids=["bad-json", "bad-value", "unknown-transport", "disabled"],
)
def test_a_bad_or_disabled_config_is_a_failed_step(
    document: str,
    step: str,
    message: str,
    code: int,
    *,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A config that cannot be used exits 2, as everywhere; a disabled one is a failed check."""
    config = tmp_path / "config.json"
    config.write_text(document, encoding="utf-8")
    assert main(["check", "--config", str(config)]) == code
    out = capsys.readouterr().out
    assert marks(out)[step] == "✗"
    assert message in out
    assert "fix:" in out
    assert main(["check", "--config", str(config), "--json"]) == code
    assert json.loads(capsys.readouterr().out)["exit"] == code


def test_a_transport_that_does_not_talk_http_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.json"
    remote = {"enabled": True, "transport": "file", "path": str(tmp_path / "updates.jsonl")}
    config.write_text(json.dumps({"remote": remote}), encoding="utf-8")
    assert main(["check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert marks(out) == {"config": "✓", "enabled": "✓", "transport": "!"}
    assert "it does not talk HTTP: no remote server to check" in out


PLUGIN = '''
from lightd_sync import HttpTransport, Transport


class Pigeon(Transport):
    """A plugin transport that talks HTTP (through the http transport)."""

    name = "pigeon"
    talks_http = True

    def __init__(self, config):
        self.inner = HttpTransport(config)

    def send(self, update):
        self.inner.send(update)

    def check_health(self):
        self.inner.check_health()

    def close(self):
        self.inner.close()
'''


def test_a_plugin_that_says_it_talks_http_is_checked_like_http(
    remote: ScriptedRemote, tmp_path: Path
) -> None:
    """A real entry point (a dist-info on PYTHONPATH) registers the plugin."""
    site = tmp_path / "site"
    info = site / "pigeon_transport-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "pigeon_transport.py").write_text(PLUGIN, encoding="utf-8")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pigeon-transport\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[lightd_sync.transports]\npigeon = pigeon_transport:Pigeon\n", encoding="utf-8"
    )
    config = write_config(tmp_path / "c.json", remote.url, transport="pigeon")
    proc = run_cli("check", "--config", config, env=cli_env(PYTHONPATH=str(site)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert marks(proc.stdout) == dict.fromkeys(ALL_STEPS, "✓")
    assert "pigeon: sends over HTTP to remote.url" in proc.stdout
    assert [r.path for r in remote.requests] == ["/health"] * 4  # health, then 3 for latency
    assert_no_secret(proc)


@pytest.mark.parametrize("suffix", ["/update", "/health", "/update/", "/api"])
def test_a_404_names_the_full_url_and_the_base_url_that_answers(
    suffix: str, receiver: Any, tmp_path: Path
) -> None:
    url = receiver.url + suffix
    proc = run_cli("check", "--config", write_config(tmp_path / "c.json", url))
    assert proc.returncode == 1
    line = step_line(proc.stdout, "health")
    assert f"GET {url.rstrip('/')}/health answered HTTP 404" in line
    assert (
        f"fix: set remote.url to {receiver.url}: GET {receiver.url}/health answers as a "
        "Lightd remote"
    ) in proc.stdout
    assert_no_secret(proc)


def test_a_404_without_a_base_url_that_answers_says_what_is_appended(
    remote: ScriptedRemote, tmp_path: Path
) -> None:
    remote.script = lambda request: Reply(status=404, body=b"not here")
    for url, fix in [
        (
            remote.url + "/v1/update",
            f"remote.url is the base URL, without /update or /health: try {remote.url}/v1",
        ),
        (remote.url, f"{remote.url}/health must be the remote's health endpoint"),
    ]:
        proc = run_cli("check", "--config", write_config(tmp_path / "c.json", url))
        assert proc.returncode == 1
        assert f"GET {url}/health answered HTTP 404" in step_line(proc.stdout, "health")
        assert fix in proc.stdout


def test_plain_http_to_another_host_is_warned_about_once(
    remote: ScriptedRemote, tmp_path: Path
) -> None:
    """Through a proxy on 127.0.0.1 (the proxy resolves the name): no traffic leaves the host."""
    config = write_config(tmp_path / "c.json", "http://remote.invalid/api", proxy=remote.url)
    proc = run_cli("check", "--config", config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert marks(proc.stdout)["url"] == "!"
    assert (proc.stdout + proc.stderr).count("plain HTTP to another machine") == 1
    assert "plain http://" not in proc.stderr
    sent = run_cli("send", "--config", config, "s1", "ready")
    assert sent.returncode == 0, sent.stderr
    assert sent.stderr.count("plain http:// to another machine") == 1


# -- proxies ----------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["http", "requests"])
@pytest.mark.parametrize("where", ["remote.proxy", "HTTP_PROXY"])
def test_the_proxy_is_used_as_delivery_uses_it(
    transport: str, where: str, remote: ScriptedRemote, tmp_path: Path
) -> None:
    """The scripted remote plays the proxy: it sees absolute-form targets."""
    url = "http://remote.invalid/api"  # only the proxy would resolve it
    extra = {"proxy": remote.url} if where == "remote.proxy" else {}
    env = cli_env(HTTP_PROXY=remote.url) if where == "HTTP_PROXY" else cli_env()
    config = write_config(tmp_path / "c.json", url, transport=transport, **extra)
    proc = run_cli("check", "--config", config, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{remote.url} (from {where})" in step_line(proc.stdout, "proxy")
    assert f"connected to the proxy at 127.0.0.1:{remote.port}" in step_line(proc.stdout, "tcp")
    # The absolute form, with or without the default port (urllib3 names it).
    assert remote.requests[0].path in (
        "http://remote.invalid/api/health",
        "http://remote.invalid:80/api/health",
    )
    assert_no_secret(proc)


def test_no_proxy_makes_check_connect_directly(receiver: Any, tmp_path: Path) -> None:
    env = cli_env(HTTP_PROXY=refused_url(), NO_PROXY="127.0.0.1")
    proc = run_cli("check", "--config", write_config(tmp_path / "c.json", receiver.url), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "none: connecting directly" in step_line(proc.stdout, "proxy")


def test_a_proxy_that_refuses_fails_at_tcp_naming_the_proxy(receiver: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.json", receiver.url, proxy=refused_url())
    proc = run_cli("check", "--config", config)
    assert proc.returncode == 1
    assert marks(proc.stdout)["tcp"] == "✗"
    assert "fix: start the proxy, or correct the port in the proxy's URL" in proc.stdout


# -- TLS --------------------------------------------------------------------------


@pytest.fixture
def tls_remote(tmp_path: Path) -> Iterator[tuple[ScriptedRemote, Path]]:
    """A healthy remote over HTTPS, with a certificate from a CA of its own (and its CA file)."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    remote = ScriptedRemote()
    remote.server.socket = context.wrap_socket(remote.server.socket, server_side=True)
    remote.url = remote.url.replace("http://", "https://")
    remote.start()
    try:
        yield remote, ca_file
    finally:
        remote.stop()


@pytest.mark.parametrize("transport", ["http", "requests"])
def test_tls_is_verified_against_the_trusted_cas(
    transport: str, tls_remote: tuple[ScriptedRemote, Path], tmp_path: Path
) -> None:
    remote, ca_file = tls_remote
    config = write_config(tmp_path / "config.json", remote.url, transport=transport)
    untrusted = run_cli("check", "--config", config, "--timeout", "3")
    assert untrusted.returncode == 1
    assert marks(untrusted.stdout)["tls"] == "✗"
    assert "certificate of 127.0.0.1 was rejected" in untrusted.stdout
    assert "remote.ca_bundle" in untrusted.stdout  # the fix names how to trust a private CA
    assert "health" not in marks(untrusted.stdout)

    trusting = write_config(
        tmp_path / "trusting.json", remote.url, transport=transport, ca_bundle=str(ca_file)
    )
    trusted = run_cli("check", "--config", trusting)
    assert trusted.returncode == 0, trusted.stdout
    assert marks(trusted.stdout) == dict.fromkeys([s for s in STEPS if s != "state"], "✓")
    assert "certificate of 127.0.0.1 verified: valid, and from a CA in remote.ca_bundle" in (
        step_line(trusted.stdout, "tls")
    )
    assert_no_secret(untrusted)
    assert_no_secret(trusted)


@pytest.mark.parametrize("transport", ["http", "requests"])
def test_verify_false_never_claims_a_verified_certificate(
    transport: str, tls_remote: tuple[ScriptedRemote, Path], tmp_path: Path
) -> None:
    remote, _ = tls_remote
    config = write_config(tmp_path / "c.json", remote.url, transport=transport, verify=False)
    proc = run_cli("check", "--config", config)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # a warning, not a failure
    assert marks(proc.stdout)["tls"] == "!"
    assert "certificate was NOT verified (remote.verify is false)" in proc.stdout
    assert "verified:" not in proc.stdout
    assert "hint: set remote.verify to true" in proc.stdout
    assert "VERIFICATION IS OFF" not in proc.stderr  # said once, by the tls step
    assert_no_secret(proc)


def test_a_plain_http_port_behind_https_fails_at_tls(tmp_path: Path) -> None:
    """A plain HTTP server (as nginx does) answers a TLS hello with a 400 in plain text."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.1)  # to see the stop soon: closing does not wake accept()
    stop = threading.Event()

    def answer_in_plain_http() -> None:
        while not stop.is_set():  # the tcp step's connection, then the TLS ones
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(5)
            with conn:
                if conn.recv(4096):
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=answer_in_plain_http, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{listener.getsockname()[1]}"
    try:
        proc = run_cli(
            "check", "--config", write_config(tmp_path / "c.json", url), "--timeout", "3"
        )
    finally:
        stop.set()
        thread.join(5)
        listener.close()
    assert proc.returncode == 1
    assert marks(proc.stdout)["tls"] == "✗"
    assert "TLS handshake with 127.0.0.1" in proc.stdout
    assert "the remote may speak plain HTTP on this port" in proc.stdout
    assert "use http:// in remote.url if it is meant to" in proc.stdout
    assert "overloaded" not in proc.stdout


def test_https_to_a_plain_http_remote_that_waits_says_so_in_the_tls_step_fast(
    receiver: Any, tmp_path: Path
) -> None:
    """waitress waits for a request line that a TLS hello never ends: no answer at all."""
    url = receiver.url.replace("http://", "https://")
    started = time.monotonic()
    proc = run_cli("check", "--config", write_config(tmp_path / "c.json", url))  # timeout 10 s
    elapsed = time.monotonic() - started
    assert proc.returncode == 1
    assert marks(proc.stdout)["tls"] == "✗"
    assert "health" not in marks(proc.stdout)
    line = step_line(proc.stdout, "tls")
    assert "no TLS answer to the TLS hello" in line
    assert "answered HTTP 401: the remote speaks plain HTTP on this port" in line
    assert "overloaded" not in proc.stdout
    assert elapsed < 8, elapsed  # the probe waits 2 s, not remote.timeout's 10 s
    assert_no_secret(proc)


def test_plain_http_to_a_tls_port_says_the_port_speaks_tls(
    tls_remote: tuple[ScriptedRemote, Path], tmp_path: Path
) -> None:
    remote, _ = tls_remote
    url = remote.url.replace("https://", "http://")
    started = time.monotonic()
    proc = run_cli("check", "--config", write_config(tmp_path / "c.json", url))
    elapsed = time.monotonic() - started
    assert proc.returncode == 1
    assert marks(proc.stdout)["health"] == "✗"
    assert "the port completes a TLS handshake" in step_line(proc.stdout, "health")
    assert "fix: the port speaks TLS: use https:// in remote.url" in proc.stdout
    assert elapsed < 8, elapsed
    assert_no_secret(proc)


def test_the_token_never_appears_even_when_the_remote_echoes_it(
    remote: ScriptedRemote, tmp_path: Path
) -> None:
    remote.script = lambda request: Reply(status=500, body=f"bad token {TOKEN}".encode())
    for fmt in ((), ("--json",)):
        proc = run_cli("check", "--config", write_config(tmp_path / "c.json", remote.url), *fmt)
        assert proc.returncode == 1
        assert_no_secret(proc)


def test_proxy_credentials_are_sent_to_the_proxy_and_never_shown(
    remote: ScriptedRemote, tmp_path: Path
) -> None:
    """``remote.proxy`` may carry ``user:password@`` (the config accepts it from 0.2.0)."""
    password = "s3cret-proxy-pass"
    proxy = remote.url.replace("http://", f"http://lightd:{password}@")
    config = write_config(tmp_path / "c.json", "http://remote.invalid/api", proxy=proxy)
    proc = run_cli("check", "--config", config)
    if "remote.proxy" in step_line(proc.stdout, "config") and proc.returncode == 2:
        pytest.skip("this remote.proxy refuses user:password@ (the config change is elsewhere)")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{remote.url} (from remote.proxy)" in step_line(proc.stdout, "proxy")
    assert remote.requests[0].headers["Proxy-Authorization"].startswith("Basic ")
    assert_no_secret(proc, TOKEN, password)


def test_the_state_file_is_reported(receiver: Any, tmp_path: Path) -> None:
    from lightd_sync import RemoteConfig, SyncEngine
    from lightd_sync.testing import RecordingTransport

    state = tmp_path / "state.db"
    config = write_config(tmp_path / "config.json", receiver.url, state_path=str(state))
    proc = run_cli("check", "--config", config)
    assert "no file yet" in step_line(proc.stdout, "state")
    engine_config = RemoteConfig(
        enabled=True, url=receiver.url, token=TOKEN, state_path=str(state), health_interval=60
    )

    def refuse(update: object) -> None:
        from lightd_sync import RemoteUnreachableError

        raise RemoteUnreachableError("down")

    with SyncEngine(engine_config, transport=RecordingTransport(refuse)) as engine:
        engine.update("s1", "ready")
        engine.update("s2", "ready")
        assert engine.flush(5)
    proc = run_cli("check", "--config", config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 servers, 2 not acknowledged by the remote yet" in step_line(proc.stdout, "state")
    state.write_bytes(b"not a database at all" * 100)
    proc = run_cli("check", "--config", config)
    assert "!" == marks(proc.stdout)["state"]
    assert_no_secret(proc)
