"""The protocol's values, the wire rules, the exceptions, and the file and null transports."""

from __future__ import annotations

import datetime
import email.utils
import json
import pathlib
import pickle
import re
import threading
from typing import Any, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightd_sync import (
    AuthRejectedError,
    ConfigError,
    DeliveryError,
    FileTransport,
    HealthState,
    Lifecycle,
    LightdSyncError,
    NullTransport,
    RemoteConfig,
    RemoteRejectedError,
    RemoteTimeoutError,
    RemoteUnreachableError,
    Status,
    SyncStats,
    Update,
    available_transports,
)
from lightd_sync._model import MAX_SERVER_ID_LENGTH, check_server_id, parse_status
from lightd_sync._transports.file import format_record
from lightd_sync._transports.protocol import (
    encode_body,
    health_verdict,
    parse_retry_after,
    request_headers,
    scrubbed,
    update_verdict,
)
from lightd_sync._transports.registry import make_transport
from lightd_sync._version import version

TOKEN = "lightd_ad2f7fc49ed640429c450e14ed07c8d5"
SERVER = "my-server-001"
RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")

fast = settings(max_examples=200, deadline=None)


# --- statuses and lifecycle events ------------------------------------------------------


def test_status_values() -> None:
    assert [s.value for s in Status] == ["installing", "ready", "failed"]
    assert Status.READY == "ready"
    assert str(Status.INSTALLING) == "installing"


@pytest.mark.parametrize(
    ("event", "status"),
    [
        ("Started", Status.INSTALLING),
        ("CreatingContainer", Status.INSTALLING),
        ("Ready", Status.READY),
        ("Error", Status.FAILED),
        ("ReinstallStarted", Status.INSTALLING),
    ],
)
def test_lifecycle_maps_to_status_per_spec_table(event: str, status: Status) -> None:
    assert Lifecycle(event).status is status
    assert str(Lifecycle(event)) == event


def test_lifecycle_has_exactly_the_spec_events() -> None:
    assert [e.value for e in Lifecycle] == [
        "Started",
        "CreatingContainer",
        "Ready",
        "Error",
        "ReinstallStarted",
    ]
    assert Lifecycle.ERROR is Lifecycle("Error")


def test_parse_status() -> None:
    assert parse_status("ready") is Status.READY
    assert parse_status(Status.FAILED) is Status.FAILED
    with pytest.raises(ValueError, match="unknown status 'done'; expected one of"):
        parse_status("done")
    with pytest.raises(ValueError, match="unknown status"):
        parse_status("READY")
    with pytest.raises(TypeError, match="status must be a Status or str, not int"):
        parse_status(1)  # type: ignore[arg-type]


# --- updates ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["installing", "ready", "failed"])
def test_status_body(status: str) -> None:
    update = Update(SERVER, status)
    assert update.status is Status(status)
    assert not update.is_error
    assert update.body() == {"event": "update", "server": SERVER, "status": status}
    assert list(update.body()) == ["event", "server", "status"]


def test_error_body() -> None:
    message = "Docker container creation failed: image not found"
    update = Update(SERVER, Status.FAILED, message)
    assert update.is_error
    assert update.body() == {
        "event": "update",
        "server": SERVER,
        "error": "failed",
        "data": message,
    }
    assert list(update.body()) == ["event", "server", "error", "data"]


def test_exact_bytes_on_the_wire() -> None:
    assert encode_body(Update(SERVER, "installing")) == (
        b'{"event":"update","server":"my-server-001","status":"installing"}'
    )
    assert encode_body(Update(SERVER, "failed", "d\u00e9j\u00e0 vu")) == (
        b'{"event":"update","server":"my-server-001","error":"failed","data":"d\\u00e9j\\u00e0 vu"}'
    )


def test_data_only_with_failed() -> None:
    with pytest.raises(ValueError, match="only sent with an error update"):
        Update(SERVER, Status.READY, "oops")
    with pytest.raises(TypeError, match="data must be a str, not int"):
        Update(SERVER, Status.FAILED, 5)  # type: ignore[arg-type]


def test_update_with_unknown_status() -> None:
    with pytest.raises(ValueError, match="unknown status"):
        Update(SERVER, "done")
    with pytest.raises(TypeError):
        Update(SERVER, None)  # type: ignore[arg-type]


def test_update_is_frozen() -> None:
    update = Update(SERVER, "ready")
    with pytest.raises(AttributeError):
        update.server = "other"  # type: ignore[misc]


# --- server ids -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "server", [SERVER, "x", "a" * MAX_SERVER_ID_LENGTH, "serveur-é-東京", "with space"]
)
def test_valid_server_ids(server: str) -> None:
    assert check_server_id(server) is server
    assert Update(server, "ready").body()["server"] == server


@pytest.mark.parametrize(
    ("server", "match"),
    [
        ("", "must not be empty"),
        ("a" * 256, "256 characters long; at most 255"),
        ("my\nserver", "control or non-printable"),
        ("my\x00server", "control or non-printable"),
        ("tab\there", "control or non-printable"),
        ("del\x7f", "control or non-printable"),
        ("zero\u200bwidth", "control or non-printable"),
        ("line\u2028sep", "control or non-printable"),
        ("lone\udc80", "control or non-printable"),
    ],
)
def test_invalid_server_ids_are_value_errors(server: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_server_id(server)
    with pytest.raises(ValueError, match=match):
        Update(server, "ready")


class StrSubclass(str):
    pass


@pytest.mark.parametrize("server", [None, 1, b"my-server", ["s"], StrSubclass("s")])
def test_non_str_server_ids_are_type_errors(server: Any) -> None:
    with pytest.raises(TypeError, match="server id must be a str"):
        check_server_id(server)
    with pytest.raises(TypeError):
        Update(server, "ready")


def _valid(server: object) -> bool:
    return (
        type(server) is str and 0 < len(server) <= MAX_SERVER_ID_LENGTH and server.isprintable()  # type: ignore[union-attr]
    )


@fast
@given(
    server=st.text(max_size=300)
    | st.text(min_size=250, max_size=260)
    | st.integers()
    | st.none()
    | st.binary(max_size=8)
)
def test_server_ids_round_trip_or_raise(server: Any) -> None:
    if not _valid(server):
        expected = ValueError if type(server) is str else TypeError
        with pytest.raises(expected):  # and never any other exception
            check_server_id(server)
        with pytest.raises(expected):
            Update(server, "installing")
        return
    checked = check_server_id(server)
    assert checked is server
    update = Update(server, "installing")
    assert update.body()["server"] == server
    assert json.loads(encode_body(update))["server"] == server
    line = json.loads(format_record(update))
    assert line["body"] == update.body()


# --- the HTTP wire rules ----------------------------------------------------------------


def test_request_headers() -> None:
    common = {
        "Authorization": f"Bearer {TOKEN}",
        "Accept": "application/json",
        "User-Agent": f"lightd-sync/{version()}",
    }
    assert request_headers(TOKEN, post=False) == common
    assert request_headers(TOKEN, post=True) == {**common, "Content-Type": "application/json"}


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        (email.utils.formatdate(NOW + 30, usegmt=True), 30.0),
        (email.utils.formatdate(NOW - 30, usegmt=True), 0.0),  # a date in the past: now
        ("-5", 0.0),  # negative: now
        (None, None),
        ("", None),
        ("soon", None),
        ("1.5", None),
        ("\u00b2", None),  # isdigit() but not a number float() reads
        ("12abc", None),
        ("Wed, 99 Foo 2015 07:28:00 GMT", None),
    ],
)
def test_parse_retry_after(value: Optional[str], seconds: Optional[float]) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


@fast
@given(st.text(max_size=40))
def test_parse_retry_after_never_raises(value: str) -> None:
    result = parse_retry_after(value, now=NOW)
    assert result is None or result >= 0


def _verdict_error(judge: Any, status: int, body: bytes, headers: Any = None) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        judge(status, body, headers or {})
    assert TOKEN not in str(info.value)
    return info.value


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b'{"success": true}'),
        (201, b'{"success": true, "id": 7}'),
        (204, b""),
        (200, b""),
        (200, b" \r\n"),
    ],
)
def test_update_delivered(status: int, body: bytes) -> None:
    assert update_verdict(status, body, {}) is None


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b'{"success": false}', '"success": false'),
        (b'{"success": false, "error": "unknown server"}', '"success": false: unknown server'),
        (b'{"success": "true"}', '"success": "true"'),
        (b'{"success": null}', '"success": null'),
        (b"not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
        (b"[true]", "JSON that is not an object"),
        (b'"success"', "JSON that is not an object"),
    ],
)
def test_update_rejected_on_200(body: bytes, match: str) -> None:
    error = _verdict_error(update_verdict, 200, body)
    assert type(error) is RemoteRejectedError
    assert match in str(error)
    assert error.status == 200
    assert error.retryable is False


@pytest.mark.parametrize("judge", [update_verdict, health_verdict])
@pytest.mark.parametrize("status", [401, 403])
def test_auth_rejected(judge: Any, status: int) -> None:
    error = _verdict_error(judge, status, b'{"error": "bad token"}')
    assert type(error) is AuthRejectedError
    assert error.status == status
    assert error.retryable is False
    assert f"HTTP {status}" in str(error)
    assert "verify that the tokens match on both sides" in str(error)


@pytest.mark.parametrize("judge", [update_verdict, health_verdict])
@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_rejected_never_followed(judge: Any, status: int) -> None:
    error = _verdict_error(judge, status, b"", {"Location": "https://elsewhere.example/"})
    assert type(error) is RemoteRejectedError
    assert error.status == status
    assert "redirect" in str(error)
    assert error.retryable is False


@pytest.mark.parametrize("judge", [update_verdict, health_verdict])
@pytest.mark.parametrize(
    ("status", "retryable"), [(400, False), (404, False), (500, False), (502, True), (503, True),
                              (504, True)],
)  # fmt: skip
def test_server_errors(judge: Any, status: int, retryable: bool) -> None:
    error = _verdict_error(judge, status, b'{"error": "db\\ndown"}')
    assert type(error) is RemoteRejectedError
    assert error.status == status
    assert error.retryable is retryable
    assert error.retry_after is None
    assert str(error).endswith(f"HTTP {status}: db?down")


@pytest.mark.parametrize("judge", [update_verdict, health_verdict])
def test_429_with_retry_after(judge: Any) -> None:
    error = _verdict_error(judge, 429, b"", {"Retry-After": "7"})
    assert type(error) is RemoteRejectedError
    assert (error.status, error.retryable, error.retry_after) == (429, True, 7.0)


def test_500_with_unreadable_retry_after() -> None:
    error = _verdict_error(update_verdict, 503, b"", {"Retry-After": "later"})
    assert (error.retryable, error.retry_after) == (True, None)


def test_healthy() -> None:
    assert health_verdict(200, b'{"status": 200, "endpoint": "active"}', {}) is None
    assert health_verdict(200, b'{"endpoint": "active"}', {}) is None


@pytest.mark.parametrize(
    ("status", "body", "match"),
    [
        (200, b'{"status": 200, "endpoint": "inactive"}', 'without "endpoint": "active"'),
        (200, b'{"status": 200}', 'without "endpoint": "active"'),
        (200, b"", "not valid JSON"),
        (200, b"<html>", "not valid JSON"),
        (200, b'["active"]', "not an object"),
        (204, b"", "HTTP 204"),
        (201, b'{"endpoint": "active"}', "HTTP 201"),
    ],
)
def test_unhealthy(status: int, body: bytes, match: str) -> None:
    error = _verdict_error(health_verdict, status, body)
    assert type(error) is RemoteRejectedError
    assert match in str(error)
    assert error.status == status


def test_scrubbed_removes_the_token() -> None:
    exc = RemoteRejectedError(
        f"POST /update: the remote answered HTTP 500: bad token {TOKEN}!",
        status=500,
        retryable=True,
        retry_after=3.0,
    )
    clean = scrubbed(exc, TOKEN)
    assert type(clean) is RemoteRejectedError
    assert TOKEN not in str(clean)
    assert TOKEN not in clean.message
    assert str(clean) == "POST /update: the remote answered HTTP 500: bad token <token>!"
    assert (clean.status, clean.retryable, clean.retry_after) == (500, True, 3.0)


def test_scrubbed_keeps_a_clean_error() -> None:
    exc = AuthRejectedError("GET /health: HTTP 401", status=401)
    assert scrubbed(exc, TOKEN) is exc


# --- exceptions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls", [DeliveryError, RemoteUnreachableError, RemoteTimeoutError, AuthRejectedError,
            RemoteRejectedError],
)  # fmt: skip
def test_delivery_errors_pickle(cls: type[DeliveryError]) -> None:
    exc = cls("POST /update: HTTP 429", status=429, retryable=True, retry_after=2.5)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls
    assert str(back) == str(exc) == back.message
    assert (back.status, back.retryable, back.retry_after) == (429, True, 2.5)
    default = pickle.loads(pickle.dumps(cls("boom")))
    assert (default.status, default.retryable, default.retry_after) == (None, False, None)


def test_config_error_pickles() -> None:
    back = pickle.loads(pickle.dumps(ConfigError("remote.timeout: expected a number > 0")))
    assert type(back) is ConfigError
    assert str(back) == "remote.timeout: expected a number > 0"


def test_exception_tree() -> None:
    for cls in (RemoteUnreachableError, RemoteTimeoutError, AuthRejectedError, RemoteRejectedError):
        assert issubclass(cls, DeliveryError)
    assert issubclass(DeliveryError, LightdSyncError)
    assert issubclass(ConfigError, LightdSyncError)
    assert issubclass(ConfigError, ValueError)
    assert not issubclass(DeliveryError, ValueError)


# --- health and stats records -----------------------------------------------------------


def test_health_state_and_stats_defaults() -> None:
    assert HealthState().to_dict() == {
        "healthy": None,
        "checked_at": None,
        "latency": None,
        "consecutive_failures": 0,
        "error": None,
    }
    stats = SyncStats().to_dict()  # later issues may add counters
    assert {"submitted", "delivered", "failed", "dropped", "pending"} <= set(stats)
    assert set(stats.values()) == {0}


# --- the file transport -----------------------------------------------------------------


def _lines(path: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_format_record() -> None:
    moment = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone.utc)
    line = format_record(Update(SERVER, "ready"), moment)
    assert line == (
        '{"ts": "2024-05-06T07:08:09.123Z", '
        '"body": {"event": "update", "server": "my-server-001", "status": "ready"}}\n'
    )


def test_file_transport_writes_one_json_line_per_update(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "sync.jsonl"
    updates = [
        Update(SERVER, "installing"),
        Update(SERVER, "ready"),
        Update("other", "failed", "image not found\nsecond line"),
        Update("été", "failed", "lone surrogate \udc80 from a bad file name"),
    ]
    before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)
    with FileTransport(path) as transport:
        transport.check_health()  # the file does not exist yet: its folder is writable
        for update in updates:
            transport.send(update)
        transport.check_health()
    after = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1)
    records = _lines(path)
    assert [r["body"] for r in records] == [u.body() for u in updates]
    for record in records:
        assert set(record) == {"ts", "body"}
        assert RFC3339_UTC.fullmatch(record["ts"]), record["ts"]
        ts = datetime.datetime.fromisoformat(record["ts"].replace("Z", "+00:00"))
        assert before <= ts <= after
    assert len(path.read_bytes().splitlines()) == len(updates)


def test_file_transport_appends(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "sync.jsonl"
    path.write_text('{"ts": "old", "body": {}}\n', encoding="utf-8")
    with FileTransport(str(path)) as transport:
        transport.send(Update(SERVER, "ready"))
    old, new = _lines(path)
    assert old["ts"] == "old"
    assert new["body"] == Update(SERVER, "ready").body()


def test_file_transport_lines_never_interleave(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "sync.jsonl"
    threads_n, per_thread = 8, 200
    start = threading.Barrier(threads_n)
    errors: list[BaseException] = []
    transport = FileTransport(path)

    def produce(n: int) -> None:
        try:
            start.wait(timeout=10)
            for i in range(per_thread):
                transport.send(Update(f"server-{n}", "failed", f"{n}:{i} " + "x" * (i % 50)))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=produce, args=(n,)) for n in range(threads_n)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    transport.close()
    assert not errors
    records = _lines(path)
    assert len(records) == threads_n * per_thread
    for n in range(threads_n):
        mine = [r["body"]["data"] for r in records if r["body"]["server"] == f"server-{n}"]
        assert [d.split(" ")[0] for d in mine] == [f"{n}:{i}" for i in range(per_thread)]


def test_file_transport_unhealthy_for_an_unwritable_folder(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "no-such-folder" / "sync.jsonl"
    with FileTransport(path) as transport:
        with pytest.raises(DeliveryError, match="cannot write to"):
            transport.check_health()
        with pytest.raises(DeliveryError, match="cannot write to") as info:
            transport.send(Update(SERVER, "ready"))
        assert isinstance(info.value.__cause__, OSError)


def test_file_transport_send_after_close(tmp_path: pathlib.Path) -> None:
    transport = FileTransport(tmp_path / "sync.jsonl")
    transport.send(Update(SERVER, "installing"))
    transport.close()
    transport.close()  # idempotent
    with pytest.raises(DeliveryError, match="closed"):
        transport.send(Update(SERVER, "ready"))
    assert len(_lines(tmp_path / "sync.jsonl")) == 1


def test_file_transport_closed_before_any_send(tmp_path: pathlib.Path) -> None:
    transport = FileTransport(tmp_path / "sync.jsonl")
    transport.close()
    with pytest.raises(DeliveryError):
        transport.send(Update(SERVER, "ready"))
    assert not (tmp_path / "sync.jsonl").exists()


# --- transport selection ----------------------------------------------------------------


def test_unknown_transport_lists_the_available_ones() -> None:
    config = RemoteConfig(enabled=True, transport="carrier-pigeon")
    with pytest.raises(ConfigError) as info:
        make_transport(config)
    message = str(info.value)
    assert message.startswith("remote.transport: unknown transport 'carrier-pigeon'; available: ")
    available = available_transports()
    assert {"file", "http", "null"} <= set(available)
    assert available == sorted(available)
    assert message.endswith(", ".join(available))


@pytest.mark.parametrize("transport", ["http", "file", "null", "carrier-pigeon"])
def test_disabled_config_gives_the_null_transport(transport: str) -> None:
    chosen = make_transport(RemoteConfig(enabled=False, transport=transport))
    assert isinstance(chosen, NullTransport)
    chosen.send(Update(SERVER, "ready"))
    chosen.check_health()
    chosen.close()


def test_file_config_gives_the_file_transport(tmp_path: pathlib.Path) -> None:
    config = RemoteConfig(enabled=True, transport="file", path=str(tmp_path / "out.jsonl"))
    with make_transport(config) as chosen:
        assert isinstance(chosen, FileTransport)
        assert chosen.path == config.path
