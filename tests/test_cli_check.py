"""``lightd-sync check``: the troubleshooting walk against healthy and broken remotes."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lightd_sync.__main__ import main

from .conftest import TOKEN
from .servers import Reply, ScriptedRemote, SilentServer, refused_url
from .test_cli import (
    WRONG_TOKEN,
    assert_no_secret,
    run_cli,
    running_receiver,
    write_config,
)


@pytest.fixture
def receiver() -> Iterator[Any]:
    with running_receiver() as app:
        yield app


ALL_STEPS = ["config", "enabled", "url", "dns", "tcp", "health", "token", "latency"]


def marks(stdout: str) -> dict[str, str]:
    """``{step name: mark}`` from check's text output."""
    found = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("✓", "✗", "!") and parts[1] in [*ALL_STEPS, "tls"]:
            found[parts[1]] = parts[0]
    return found


def test_a_healthy_remote_passes_every_step(receiver: Any, tmp_path: Path) -> None:
    proc = run_cli("check", "--config", write_config(tmp_path / "config.json", receiver.url))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert marks(proc.stdout) == dict.fromkeys(ALL_STEPS, "✓")
    assert "✓ all 8 checks passed" in proc.stdout
    assert "ms round trip" in proc.stdout
    assert_no_secret(proc)


def test_json_output_of_a_healthy_remote(receiver: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.json", receiver.url)
    proc = run_cli("check", "--config", config, "--json")
    assert proc.returncode == 0
    document = json.loads(proc.stdout)
    assert document["ok"] is True
    assert [step["name"] for step in document["steps"]] == ALL_STEPS
    for step in document["steps"]:
        assert set(step) >= {"name", "ok", "detail", "fix"}
        assert step["ok"] is True
    assert_no_secret(proc)


def test_a_wrong_token_says_the_tokens_do_not_match(receiver: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.json", receiver.url, token=WRONG_TOKEN)
    proc = run_cli("check", "--config", config, "--json")
    assert proc.returncode == 1
    document = json.loads(proc.stdout)
    assert document["ok"] is False
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
    assert marks(proc.stdout) == {
        "config": "✓", "enabled": "✓", "url": "✓", "dns": "✓", "tcp": "✗"
    }  # fmt: skip
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
    assert marks(proc.stdout) == {"config": "✓", "enabled": "✓", "url": "!", "dns": "✗"}
    assert "cannot resolve nothing.invalid" in proc.stdout
    assert "hint: use https:// in production" in proc.stdout  # a warning, not a failure
    assert_no_secret(proc)


@pytest.mark.parametrize(
    ("document", "step", "message"),
    [
        ('{"remote": {"enabled": true, "url": }}', "config", "invalid JSON at line 1"),
        ('{"remote": {"enabled": true, "timeout": "ten"}}', "config", "remote.timeout"),
        ('{"remote": {"enabled": false}}', "enabled", "remote.enabled is false or missing"),
    ],
    ids=["bad-json", "bad-value", "disabled"],
)
def test_a_bad_or_disabled_config_is_a_failed_step(
    document: str, step: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.json"
    config.write_text(document, encoding="utf-8")
    assert main(["check", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert marks(out)[step] == "✗"
    assert message in out
    assert "fix:" in out


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


def test_tls_is_verified_against_the_trusted_cas(
    tls_remote: tuple[ScriptedRemote, Path], tmp_path: Path
) -> None:
    remote, ca_file = tls_remote
    config = write_config(tmp_path / "config.json", remote.url)
    untrusted = run_cli("check", "--config", config, "--timeout", "3")
    assert untrusted.returncode == 1
    assert marks(untrusted.stdout)["tls"] == "✗"
    assert "certificate" in untrusted.stdout
    assert "remote.ca_bundle" in untrusted.stdout  # the fix names how to trust a private CA

    config = write_config(tmp_path / "trusting.json", remote.url, ca_bundle=str(ca_file))
    trusted = run_cli("check", "--config", config)
    assert trusted.returncode == 0, trusted.stdout
    assert marks(trusted.stdout)["tls"] == "✓"
    assert "certificate verified for 127.0.0.1" in trusted.stdout
    assert_no_secret(untrusted)
    assert_no_secret(trusted)
