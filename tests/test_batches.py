"""The batch extension, client half: the offer, POST /updates, the answer table, the fallback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Callable

import attrs
import pytest

from lightd_sync import (
    AuthRejectedError,
    BillingEvent,
    DeliveryError,
    FileTransport,
    HttpTransport,
    NullTransport,
    RemoteConfig,
    RemoteRejectedError,
    RequestsTransport,
    Transport,
    Update,
)
from lightd_sync._transports.protocol import parse_offer

from .conftest import http_config
from .servers import Reply, Request, ScriptedRemote, serving

Make = Callable[[RemoteConfig], Transport]


@pytest.fixture(params=[HttpTransport, RequestsTransport], ids=["http", "requests"])
def make(request: pytest.FixtureRequest) -> Make:
    return request.param  # type: ignore[no-any-return]


def health(batch: object = None) -> Reply:
    doc: dict[str, object] = {"status": 200, "endpoint": "active"}
    if batch is not None:
        doc["batch"] = batch
    return Reply(body=json.dumps(doc).encode())


class Remote:
    """A scripted remote whose health offer and /updates answer the test changes."""

    def __init__(self) -> None:
        self.offer: object = {"max": 100}
        self.updates: Reply = Reply()

    def script(self, request: Request) -> Reply:
        if request.path.endswith("/health"):
            return health(self.offer)
        if request.path.endswith("/updates"):
            return self.updates
        return Reply()


@pytest.fixture
def remote() -> Iterator[tuple[Remote, ScriptedRemote]]:
    r = Remote()
    for server in serving(ScriptedRemote(r.script)):
        yield r, server


def events(n: int) -> list[Update]:
    return [Update(f"s-{i}", "ready") for i in range(n)]


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        ({"max": 50}, 50),
        ({"max": 1}, 1),
        ({"max": 10000}, 10000),
        ({"max": 10001}, 0),
        ({"max": 0}, 0),
        ({"max": True}, 0),
        ({"max": 5.0}, 0),
        ({"max": "5"}, 0),
        ([5], 0),
        (None, 0),
        ({}, 0),
    ],
)
def test_the_offer_is_an_integer_from_1_to_10000(batch: object, expected: int) -> None:
    assert expected == parse_offer(200, health(batch).body)
    assert 0 == parse_offer(503, health(batch).body)
    assert 0 == parse_offer(200, b'{"batch": {"max": 5')


def test_no_offer_one_post_per_update(make: Make, remote: tuple[Remote, ScriptedRemote]) -> None:
    r, server = remote
    r.offer = None
    with make(http_config(server.url)) as t:
        t.check_health()
        assert 1 == t.max_batch()
        assert [None] * 3 == t.send_many(events(3))
    assert ["/update"] * 3 == [p.path for p in server.posts()]


def test_an_offer_sends_one_post_updates(make: Make, remote: tuple[Remote, ScriptedRemote]) -> None:
    _, server = remote
    with make(http_config(server.url + "/api")) as t:
        assert 1 == t.max_batch(), "no offer before a health answer"
        t.check_health()
        assert 100 == t.max_batch()
        given = [*events(2), attrs.evolve(Update("s-x", "ready"), event_id="e-1")]
        given.append(BILLING)
        assert [None] * 4 == t.send_many(given)
    [post] = server.posts()
    assert "/api/updates" == post.path
    items = post.json()["updates"]
    assert [i["server"] for i in items] == [e.server for e in given]
    assert "e-1" == items[2]["event_id"]
    assert all(isinstance(i["event_id"], str) and i["event_id"] for i in items)
    assert {k: v for k, v in items[0].items() if k != "event_id"} == given[0].body()
    assert "billing" == items[3]["event"]


BILLING = BillingEvent(
    "s-b",
    memory_gb=0.5,
    cpu_vcpus=0.25,
    storage_gb=2,
    egress_gb=0.01,
    duration_hours=1,
    estimated_cost=0.0123,
    timestamp=1767225600,
)


def test_the_offer_is_capped_at_500(make: Make, remote: tuple[Remote, ScriptedRemote]) -> None:
    r, server = remote
    r.offer = {"max": 10000}
    with make(http_config(server.url)) as t:
        t.check_health()
        assert 500 == t.max_batch()


def test_per_item_results(make: Make, remote: tuple[Remote, ScriptedRemote]) -> None:
    r, server = remote
    results = [{"success": True}, {"success": False, "error": "unknown server"}, {"success": True}]
    r.updates = Reply(body=json.dumps({"success": True, "results": results}).encode())
    with make(http_config(server.url)) as t:
        t.check_health()
        out = t.send_many(events(3))
    assert out[0] is None and out[2] is None
    refused = out[1]
    assert isinstance(refused, RemoteRejectedError)
    assert "unknown server" in refused.message
    assert 400 <= (refused.status or 0) < 500 and not refused.retryable


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"success": false}',
        b'{"results": [{"success": true}]}',
        b'{"success": true, "results": [{"success": true}]}',
    ],
)
def test_a_broken_batch_answer_fails_every_item(
    make: Make, remote: tuple[Remote, ScriptedRemote], body: bytes
) -> None:
    r, server = remote
    r.updates = Reply(body=body)
    with make(http_config(server.url)) as t:
        t.check_health()
        out = t.send_many(events(3))
    assert all(isinstance(e, DeliveryError) for e in out)
    assert 1 == len(server.posts()), "no re-send: the engine decides"


@pytest.mark.parametrize("status", [404, 405, 415, 501])
def test_a_remote_that_takes_no_batches_after_all_gets_single_posts(
    make: Make, remote: tuple[Remote, ScriptedRemote], status: int
) -> None:
    r, server = remote
    r.updates = Reply(status=status, body=b'{"error": "no"}')
    with make(http_config(server.url)) as t:
        t.check_health()
        given = events(3)
        assert [None] * 3 == t.send_many(given)
        assert 1 == t.max_batch(), "the offer is withdrawn"
        batch, *singles = server.posts()
        ids = [i["event_id"] for i in batch.json()["updates"]]
        assert ["/update"] * 3 == [p.path for p in singles]
        assert ids == [p.headers["X-Lightd-Event-Id"] for p in singles], "the same event ids"
        assert [e.server for e in given] == [p.json()["server"] for p in singles]
        t.send_many(events(2))
        assert ["/update"] * 2 == [p.path for p in server.posts()[4:]]
        t.check_health()  # offers again
        assert 100 == t.max_batch()
        r.updates = Reply()
        t.send_many(events(2))
        assert "/updates" == server.posts()[-1].path


def test_a_later_health_answer_withdraws_the_offer(
    make: Make, remote: tuple[Remote, ScriptedRemote]
) -> None:
    r, server = remote
    with make(http_config(server.url)) as t:
        t.check_health()
        assert 100 == t.max_batch()
        r.offer = {"max": "lots"}
        t.check_health()
        assert 1 == t.max_batch()


@pytest.mark.parametrize(
    ("reply", "kind", "retryable"),
    [
        (Reply(status=429, headers=(("Retry-After", "7"),)), RemoteRejectedError, True),
        (Reply(status=503), RemoteRejectedError, True),
        (Reply(status=401), AuthRejectedError, False),
        (Reply(status=400), RemoteRejectedError, False),
    ],
)
def test_any_other_status_applies_to_every_item(
    make: Make,
    remote: tuple[Remote, ScriptedRemote],
    reply: Reply,
    kind: type[DeliveryError],
    retryable: bool,
) -> None:
    r, server = remote
    r.updates = reply
    with make(http_config(server.url)) as t:
        t.check_health()
        out = t.send_many(events(3))
    assert all(isinstance(e, kind) and e.status == reply.status for e in out)
    assert all(e is not None and e.retryable == retryable for e in out)
    if reply.status == 429:
        assert all(e is not None and e.retry_after == 7 for e in out)


def test_file_and_null_take_many_at_once(tmp_path: object) -> None:
    import pathlib

    path = pathlib.Path(str(tmp_path), "out.jsonl")
    with FileTransport(path) as f:
        assert f.max_batch() >= 100
        assert [None] * 3 == f.send_many(events(3))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert ["s-0", "s-1", "s-2"] == [line["body"]["server"] for line in lines]
    with NullTransport() as n:
        assert n.max_batch() >= 100
        assert [None] * 3 == n.send_many(events(3))


def test_a_batch_to_a_remote_that_stops_answering_takes_one_timeout(make: Make) -> None:
    """One request, one deadline: never N x timeout, never a second copy of an update."""
    import threading
    import time

    from lightd_sync import RemoteTimeoutError

    from .servers import RawRemote

    seen: list[bytes] = []
    lock = threading.Lock()

    def script(conn: object, request: bytes) -> None:
        with lock:
            seen.append(request)
        if request.startswith(b"GET"):
            body = json.dumps({"status": 200, "endpoint": "active", "batch": {"max": 50}})
            conn.sendall(  # type: ignore[attr-defined]
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body.encode())
            )
            return
        server.stopped.wait(10)  # never answers

    server = RawRemote(script)
    for _ in serving(server):
        with make(http_config(server.url, timeout=0.5)) as t:
            t.check_health()
            started = time.monotonic()
            out = t.send_many(events(20))
            elapsed = time.monotonic() - started
    assert all(isinstance(e, RemoteTimeoutError) for e in out)
    assert elapsed < 1.0  # one timeout: 20 of them would be 10 s
    with lock:
        posts = [r for r in seen if r.startswith(b"POST")]
    assert 1 == len(posts), "one request for the whole batch"
