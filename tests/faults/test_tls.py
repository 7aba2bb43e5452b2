"""TLS with a test CA (trustme): verification, private CAs, wrong hosts, mutual TLS, verify off."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from lightd_sync import (
    ConfigError,
    HttpTransport,
    RemoteConfig,
    RemoteUnreachableError,
    SyncEngine,
    Update,
)

from ..conftest import LogCapture
from ..servers import serving
from .conftest import Fault, server_tls
from .harness import fault_config
from .servers import FaultServer

pytestmark = pytest.mark.timeout(20)


def tls_config(url: str, **kw: Any) -> RemoteConfig:
    """Failures here are TLS failures, at once: a generous timeout keeps a busy machine happy."""
    return fault_config(url, **{"timeout": 5, **kw})


def test_a_private_ca_in_ca_bundle_is_trusted(tls_remote: FaultServer, ca_bundle: str) -> None:
    with HttpTransport(tls_config(tls_remote.url, ca_bundle=ca_bundle)) as transport:
        for _ in range(3):
            transport.send(Update("s-1", "ready"))
        transport.check_health()
        assert 1 == len(transport._guard.connections()), "TLS connections are kept alive"
    assert 3 == len(tls_remote.posts())


def test_without_ca_bundle_the_private_ca_is_not_trusted(tls_remote: FaultServer) -> None:
    with HttpTransport(tls_config(tls_remote.url)) as transport:
        with pytest.raises(RemoteUnreachableError, match="TLS failed") as info:
            transport.send(Update("s-1", "ready"))
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    assert "remote.ca_bundle" in str(info.value)
    assert info.value.retryable
    assert not tls_remote.posts(), "nothing was sent over the unverified connection"


def test_a_certificate_for_another_host_is_refused(wrong_host_tls: Fault, ca_bundle: str) -> None:
    with HttpTransport(tls_config(wrong_host_tls.server.url, ca_bundle=ca_bundle)) as t:
        with pytest.raises(RemoteUnreachableError, match="TLS failed") as info:
            t.check_health()
    assert "127.0.0.1" in str(info.value)  # the name that did not match
    assert not wrong_host_tls.server.requests


def test_verify_false_warns_once_and_never_raises_python_warnings(
    wrong_host_tls: Fault, logs: LogCapture
) -> None:
    """Runs with -W error: an InsecureRequestWarning from urllib3 would fail every delivery."""
    config = tls_config(wrong_host_tls.server.url, verify=False)
    with SyncEngine(config) as engine:
        for i in range(20):
            engine.update(f"s-{i}", "ready")
        assert engine.flush(5)
        assert 20 == engine.stats().delivered
        assert engine.check_health().healthy
    [warning] = [m for m in logs.messages(logging.WARNING) if "VERIFICATION IS OFF" in m]
    assert "lightd_sync.transport" in warning
    assert wrong_host_tls.server.url in warning


def test_verify_false_on_a_plain_http_url_says_nothing_about_tls(
    healthy_remote: FaultServer, logs: LogCapture
) -> None:
    with HttpTransport(tls_config(healthy_remote.url, verify=False)) as transport:
        transport.send(Update("s-1", "ready"))
    assert not logs.messages(logging.WARNING)


@pytest.fixture
def mtls_remote(ca: trustme.CA) -> Iterator[FaultServer]:
    """An HTTPS remote that requires a client certificate signed by the test CA."""
    ctx = server_tls(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(ctx)
    yield from serving(FaultServer(tls=ctx))


def test_mutual_tls_with_a_client_certificate(
    mtls_remote: FaultServer, ca_bundle: str, client_pem: Path
) -> None:
    config = tls_config(mtls_remote.url, ca_bundle=ca_bundle, client_cert=str(client_pem))
    with HttpTransport(config) as transport:
        transport.send(Update("s-1", "ready"))
    assert 1 == len(mtls_remote.posts())


def test_mutual_tls_without_a_client_certificate_fails(
    mtls_remote: FaultServer, ca_bundle: str
) -> None:
    with HttpTransport(tls_config(mtls_remote.url, ca_bundle=ca_bundle)) as transport:
        with pytest.raises(RemoteUnreachableError, match=r"TLS failed|connection failed"):
            transport.send(Update("s-1", "ready"))
    assert not mtls_remote.posts()


def test_client_key_in_its_own_file(
    mtls_remote: FaultServer, ca: trustme.CA, ca_bundle: str, tmp_path: Path
) -> None:
    cert = ca.issue_cert("client.example")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    config = tls_config(
        mtls_remote.url,
        ca_bundle=ca_bundle,
        client_cert=str(tmp_path / "cert.pem"),
        client_key=str(tmp_path / "key.pem"),
    )
    with HttpTransport(config) as transport:
        transport.send(Update("s-1", "ready"))


@pytest.mark.parametrize(
    ("key", "content", "match"),
    [
        ("ca_bundle", None, r"remote\.ca_bundle: .* does not exist"),
        ("ca_bundle", b"not a certificate\n", r"remote\.ca_bundle: no PEM certificates"),
        ("client_cert", None, r"remote\.client_cert: .* does not exist"),
        ("client_cert", b"junk\n", r"remote\.client_cert: cannot load"),
    ],
)
def test_unusable_tls_files_are_config_errors_at_creation(
    key: str, content: Optional[bytes], match: str, tmp_path: Path
) -> None:
    path = tmp_path / "file.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=match):
        HttpTransport(tls_config("https://127.0.0.1:1", **{key: str(path)}))


def test_an_encrypted_client_key_is_refused_not_prompted_for(
    ca: trustme.CA, tmp_path: Path
) -> None:
    """OpenSSL would ask for the passphrase on the terminal: a daemon would hang."""
    cert = ca.issue_cert("client.example")
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    (tmp_path / "key.pem").write_bytes(encrypted)
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    config = tls_config(
        "https://127.0.0.1:1",
        client_cert=str(tmp_path / "cert.pem"),
        client_key=str(tmp_path / "key.pem"),
    )
    with pytest.raises(ConfigError, match="encrypted"):
        HttpTransport(config)
