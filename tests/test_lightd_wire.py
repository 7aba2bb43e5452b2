"""
Exactly what Lightd's own client sends, byte for byte, against the reference receiver,
``LightdRemote`` and the local API.

Lightd's client (``src/remote/client.rs``) is reqwest over hyper: header names
in lower case, ``authorization`` and ``content-type: application/json`` set by
the client, reqwest's default ``accept: */*``, then hyper's ``host`` and
``content-length``. Bodies are serde_json's: compact, fields in the struct's
order, ``data`` left out when it is ``None`` (``skip_serializing_if``), floats
as ryu writes them (``2.0``, never ``2``). The requests below are written out by
hand as those bytes, not built with lightd_sync's own encoder, so that a change
on our side cannot make them agree with it.

Lightd judges any 2xx as delivered, and a health answer as healthy when it is
200 with ``status == 200`` and ``endpoint == "active"``, whatever else it holds.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
from collections.abc import Iterator
from typing import Any, Optional

import attrs
import pytest

from lightd_sync import SyncEngine, receiver
from lightd_sync._server.http import serve
from lightd_sync.api import create_app
from lightd_sync.testing import LightdRemote

from .conftest import TOKEN

API_TOKEN = "lightd_api_5f0c2b7d9e4a41c3a8b6d0e2f4a6c8e0"

#: Lightd's lifecycle events and the bodies its client sends for them (serde's bytes).
LIFECYCLE = [
    ("Started", b'{"event":"update","server":"srv-001","status":"installing"}'),
    ("CreatingContainer", b'{"event":"update","server":"srv-001","status":"installing"}'),
    ("Ready", b'{"event":"update","server":"srv-001","status":"ready"}'),
    ("ReinstallStarted", b'{"event":"update","server":"srv-001","status":"installing"}'),
    (
        "Error",
        b'{"event":"update","server":"srv-001","error":"failed",'
        b'"data":"Docker container creation failed: image not found"}',
    ),
]
#: The error forms Lightd documents: "failed", "timeout", a custom message; data optional.
ERRORS = [
    b'{"event":"update","server":"srv-002","error":"timeout"}',
    b'{"event":"update","server":"srv-003","error":"failed"}',
    b'{"event":"update","server":"srv-004","error":"disk quota exceeded","data":"/var: 100%"}',
]
#: A billing event (Lightd v2): every field, in the struct's order.
BILLING = (
    b'{"event":"billing","server":"srv-001","memory_gb":0.5,"cpu_vcpus":0.25,'
    b'"storage_gb":2.0,"egress_gb":0.01,"duration_hours":1.0,"estimated_cost":0.0123,'
    b'"timestamp":1767225600}'
)


def lightd_post(host: str, port: int, path: str, body: bytes, token: str = TOKEN) -> bytes:
    """The bytes of reqwest's ``client.post(url).header("Authorization", ...).json(&body)``."""
    return (
        f"POST {path} HTTP/1.1\r\n"
        f"authorization: Bearer {token}\r\n"
        "content-type: application/json\r\n"
        "accept: */*\r\n"
        f"host: {host}:{port}\r\n"
        f"content-length: {len(body)}\r\n"
        "\r\n"
    ).encode("ascii") + body


def lightd_get(host: str, port: int, path: str, token: str = TOKEN, accept: str = "*/*") -> bytes:
    """The bytes of reqwest's ``client.get(url).header("Authorization", ...)``."""
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"authorization: Bearer {token}\r\n"
        f"accept: {accept}\r\n"
        f"host: {host}:{port}\r\n"
        "\r\n"
    ).encode("ascii")


@attrs.frozen
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def exchange(url: str, raw: bytes, method: str) -> Answer:
    """Send *raw* on a fresh connection to *url*; read the answer with http.client's parser."""
    host, port = url.rsplit("//", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        body = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, body)


def post(url: str, path: str, body: bytes) -> Answer:
    host, port = url.rsplit("//", 1)[1].split(":")
    return exchange(url, lightd_post(host, int(port), path, body), "POST")


def get(url: str, path: str, token: str = TOKEN, accept: str = "*/*") -> Answer:
    host, port = url.rsplit("//", 1)[1].split(":")
    return exchange(url, lightd_get(host, int(port), path, token, accept), "GET")


def lightd_judges_healthy(answer: Answer) -> bool:
    """Lightd's health check: 200, and a JSON body with status 200 and endpoint active."""
    if answer.status != 200:
        return False
    try:
        doc = answer.json()
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("status") == 200 and doc.get("endpoint") == "active"


def test_the_hand_written_bytes_are_what_lightd_sync_s_models_also_produce() -> None:
    """A check of the fixtures: the model's bodies, in serde's order and form, are these bytes."""
    from lightd_sync import BillingEvent, Lifecycle, Status, Update
    from lightd_sync._transports.protocol import encode_body

    for name, body in LIFECYCLE:
        event = Lifecycle(name)
        data = "Docker container creation failed: image not found" if name == "Error" else None
        assert body == encode_body(Update("srv-001", event.status, data))
    assert ERRORS[0] == encode_body(Update("srv-002", Status.FAILED, error="timeout"))
    doc = json.loads(BILLING)
    del doc["event"]
    assert BILLING == encode_body(BillingEvent(**doc))


# -- the reference receiver -------------------------------------------------------


@pytest.fixture
def reference() -> Iterator[tuple[receiver.ReceiverApp, str]]:
    with receiver.create_app(TOKEN, rate=math.inf) as app, serve(app) as server:
        yield app, server.url


def test_every_lifecycle_event_as_lightd_sends_it_is_stored_by_the_receiver(
    reference: tuple[receiver.ReceiverApp, str],
) -> None:
    app, url = reference
    expected = []
    for _, body in LIFECYCLE:
        answer = post(url, "/update", body)
        assert 200 <= answer.status < 300, (body, answer)
        assert True is answer.json()["success"]
        doc = json.loads(body)
        expected.append((doc.get("status", "failed"), doc.get("error"), doc.get("data")))
    history = app.store.history("srv-001")
    assert expected == [(h["status"], h["error"], h["data"]) for h in history]


def test_every_error_form_lightd_documents_is_stored_by_the_receiver(
    reference: tuple[receiver.ReceiverApp, str],
) -> None:
    app, url = reference
    for body in ERRORS:
        answer = post(url, "/update", body)
        assert 200 <= answer.status < 300, (body, answer)
        doc = json.loads(body)
        (stored,) = app.store.history(doc["server"])
        assert ("failed", doc["error"], doc.get("data")) == (
            stored["status"],
            stored["error"],
            stored["data"],
        )


def test_a_billing_event_as_lightd_sends_it_is_accepted_and_readable(
    reference: tuple[receiver.ReceiverApp, str],
) -> None:
    app, url = reference
    assert 2 == post(url, "/update", LIFECYCLE[2][1]).status // 100  # ready
    answer = post(url, "/update", BILLING)
    assert 2 == answer.status // 100, answer
    server = get(url, "/servers/srv-001")
    assert 200 == server.status
    doc = server.json()
    usage = doc["usage"]
    for key in ("memory_gb", "cpu_vcpus", "storage_gb", "egress_gb", "duration_hours"):
        assert json.loads(BILLING)[key] == usage[key], key
    assert 0.0123 == usage["estimated_cost"]
    # A billing event never changes the install status.
    assert "ready" == app.store.latest()["srv-001"]["status"]
    page = get(url, "/servers/srv-001/usage")
    assert 200 == page.status
    assert 1 == len(page.json()["usage"])


@pytest.mark.parametrize("batches", [False, True])
def test_the_receiver_s_health_answer_passes_lightd_s_check(
    batches: bool, reference: tuple[receiver.ReceiverApp, str]
) -> None:
    _, url = reference
    answer = get(url, "/health")
    assert lightd_judges_healthy(answer), answer
    if batches:
        assert "batch" in answer.json()  # the reference receiver offers them


# -- LightdRemote ---------------------------------------------------------------------


@pytest.mark.parametrize("batch_max", [None, 1, 500])
def test_lightd_remote_records_exactly_what_lightd_sends(batch_max: Optional[int]) -> None:
    with LightdRemote(token=TOKEN, batch_max=batch_max) as remote:
        health = get(remote.url, "/health")
        assert lightd_judges_healthy(health), health
        assert ({"max": batch_max} if batch_max else None) == health.json().get("batch")
        bodies = [body for _, body in LIFECYCLE] + ERRORS + [BILLING]
        for body in bodies:
            answer = post(remote.url, "/update", body)
            assert 2 == answer.status // 100, (body, answer)
        assert [json.loads(b) for b in bodies[:-1]] == remote.updates
        assert [json.loads(BILLING)] == remote.billing
        assert json.loads(ERRORS[0]) == remote.wait_for("srv-002", "failed", timeout=1)
        assert json.loads(BILLING) == remote.wait_for_billing("srv-001", timeout=1)


def test_lightd_remote_s_health_passes_lightd_s_check_whatever_the_offer() -> None:
    with LightdRemote(token=TOKEN) as remote:
        for switch in (
            lambda: remote.offer_batches(10_000),
            lambda: remote.offer_batches(1),
            remote.withdraw_batches,
            lambda: remote.refuse_batches(404),
            lambda: remote.offer_batches(7),
        ):
            switch()
            answer = get(remote.url, "/health")
            assert lightd_judges_healthy(answer), answer
            assert str(len(answer.body)) == answer.headers["content-length"]


# -- the local API --------------------------------------------------------------------


@pytest.fixture
def local_api(tmp_path: Any, reference: tuple[receiver.ReceiverApp, str]) -> Iterator[str]:
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "authorization": {"token": API_TOKEN},
                "remote": {"enabled": True, "url": reference[1], "token": TOKEN},
            }
        )
    )
    with SyncEngine.from_file(path) as engine, serve(create_app(engine, token=API_TOKEN)) as srv:
        yield srv.url


def test_lightd_s_local_routes_answer_lightd_s_requests(local_api: str) -> None:
    """The routes as Lightd's tools call them: its API's own Accept, then reqwest's."""
    for accept in ("Application/vnd.pkglatv1+json", "*/*"):
        config = get(local_api, "/remote/config", API_TOKEN, accept)
        assert 200 == config.status
        assert "application/json" == config.headers["content-type"]
        assert {"enabled", "url", "token"} <= set(config.json())
        assert TOKEN not in config.body.decode()
        host, port = local_api.rsplit("//", 1)[1].split(":")
        raw = lightd_post(host, int(port), "/remote/config/reload", b"", API_TOKEN)
        reload = exchange(local_api, raw.replace(b"accept: */*", f"accept: {accept}".encode()),
                          "POST")  # fmt: skip
        assert (200, {"message": "Configuration reloaded successfully"}) == (
            reload.status,
            reload.json(),
        )
