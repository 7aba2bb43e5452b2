"""Several receiver processes on one PostgreSQL database behave as one receiver."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from . import pg
from .conftest import TOKEN
from .receivers import Process, call, receiver
from .test_receiver_store import v7

ROUNDS = 200


@pytest.fixture
def url() -> Iterator[str]:
    yield from pg.fresh_schema()


@pytest.fixture
def pair(url: str) -> Iterator[tuple[Process, Process]]:
    # Started together: both create the schema at once (an advisory lock orders them).
    with ThreadPoolExecutor(2, thread_name_prefix="test-start") as pool:
        started = [pool.submit(receiver, "--db", url, "--no-audit", "--rate", "100000",
                               "--burst", "100000") for _ in range(2)]  # fmt: skip
        procs = [f.result(timeout=60) for f in started]
    try:
        yield procs[0], procs[1]
    finally:
        for proc in procs:
            assert proc.stop() == 0, proc.text()
            assert TOKEN not in proc.text()


class Conn:
    """A kept-alive connection to one receiver."""

    def __init__(self, base: str) -> None:
        parts = urllib.parse.urlsplit(base)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)

    def post(self, server: str, status: str, eid: str) -> int:
        body = json.dumps({"event": "update", "server": server, "status": status})
        self.conn.request(
            "POST",
            "/update",
            body=body,
            headers={
                "Authorization": f"Bearer {TOKEN}",
                "Content-Type": "application/json",
                "X-Lightd-Event-Id": eid,
            },
        )
        response = self.conn.getresponse()
        response.read()
        return response.status

    def close(self) -> None:
        self.conn.close()


def race(a: Conn, b: Conn, first: tuple[Any, ...], second: tuple[Any, ...]) -> list[int]:
    """Send *first* to *a* and *second* to *b* at the same moment."""
    barrier = threading.Barrier(2)
    results: list[int] = [0, 0]

    def send(i: int, conn: Conn, args: tuple[Any, ...]) -> None:
        barrier.wait(5)
        results[i] = conn.post(*args)

    threads = [
        threading.Thread(target=send, args=(0, a, first), name="test-race-a"),
        threading.Thread(target=send, args=(1, b, second), name="test-race-b"),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    return results


def test_one_event_sent_to_two_receivers_at_once_is_stored_once(
    pair: tuple[Process, Process],
) -> None:
    a, b = Conn(pair[0].url), Conn(pair[1].url)
    now = time.time()
    try:
        for i in range(ROUNDS):
            eid = v7(now, i)
            assert race(a, b, ("dup-node", "ready", eid), ("dup-node", "ready", eid)) == [200, 200]
    finally:
        a.close()
        b.close()
    for proc in pair:
        status, doc = call(f"{proc.url}/servers/dup-node?limit=10000")
        assert status == 200
        events = [h["event_id"] for h in doc["history"]]
        assert len(events) == ROUNDS
        assert len(set(events)) == ROUNDS


def test_newer_wins_whichever_receiver_finishes_last(pair: tuple[Process, Process]) -> None:
    a, b = Conn(pair[0].url), Conn(pair[1].url)
    now = time.time()
    try:
        for i in range(ROUNDS):
            server = f"node-{i:03d}"
            newer, older = v7(now, 2, i), v7(now, 1, i)
            first, second = (server, "ready", newer), (server, "installing", older)
            if i % 2:  # either receiver gets the newer one
                first, second = second, first
            assert race(a, b, first, second) == [200, 200]
    finally:
        a.close()
        b.close()
    views = [call(f"{proc.url}/servers")[1]["servers"] for proc in pair]
    assert views[0] == views[1]  # one database, one view
    assert len(views[0]) == ROUNDS
    wrong = {s: v["status"] for s, v in views[0].items() if v["status"] != "ready"}
    assert wrong == {}


def test_pages_are_the_same_from_either_receiver(pair: tuple[Process, Process]) -> None:
    body = {"event": "update", "server": "", "status": "ready"}
    for i in range(30):
        body["server"] = f"s{i:02d}"
        assert call(f"{pair[i % 2].url}/update", "POST", body)[0] == 200
    pages = []
    for proc in pair:
        status, doc = call(f"{proc.url}/servers?limit=7&after=s10")
        assert status == 200
        pages.append(doc)
    assert pages[0] == pages[1]
    assert list(pages[0]["servers"]) == [f"s{i}" for i in range(11, 18)]
    assert pages[0]["next"] == "s17"
