"""
The outbox and the delivery policy alone: no sockets, no threads but the test's own.

The outbox is the one owner of every per-server fact (issue #20); these tests
drive it the way the engine's workers do: admit, take, settle, retry, resync.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from lightd_sync import RemoteUnreachableError, Status
from lightd_sync._engine.item import Item
from lightd_sync._engine.outbox import (
    BILLING_FULL,
    DELIVERED,
    FAILED,
    SUPERSEDED,
    Outbox,
)
from lightd_sync._engine.policy import DeliveryPolicy
from lightd_sync._engine.settings import budget
from lightd_sync._model import BillingEvent
from lightd_sync.testing import set_testing


def item(server: str, status: Status = Status.READY) -> Item:
    return Item(server, status)


def billing(server: str) -> Item:
    event = BillingEvent(
        server,
        memory_gb=1,
        cpu_vcpus=1,
        storage_gb=1,
        egress_gb=0,
        duration_hours=1,
        estimated_cost=0.1,
        timestamp=1,
    )
    return Item(server, Status.READY, billing=event)


@pytest.fixture
def outbox() -> Iterator[Outbox]:
    box = Outbox(queue_size=100, max_servers=1000, billing_size=100)
    yield box
    box.finish()


def take(outbox: Outbox, limit: int = 500) -> list[Item]:
    work = outbox.take(limit)
    assert work is not None
    return work[0]


def test_one_server_has_one_update_in_flight_and_they_go_in_order(outbox: Outbox) -> None:
    a, b, c = item("s", Status.INSTALLING), item("s"), item("s", Status.FAILED)
    for it in (a, b, c):
        assert outbox.admit(it) is None
    assert [a] == take(outbox)  # b and c wait behind a, though the limit allows more
    outbox.settle(a, DELIVERED, None, 0.01, False)
    assert [b] == take(outbox)
    outbox.settle(b, DELIVERED, None, 0.01, False)
    assert [c] == take(outbox)
    outbox.settle(c, DELIVERED, None, 0.01, False)
    outbox.close()
    assert outbox.take(500) is None  # closed and nothing left: the worker ends
    stats = outbox.stats()
    assert (3, 3, 0) == (stats.submitted, stats.delivered, stats.pending)


def test_a_batch_holds_different_servers_up_to_the_limit(outbox: Outbox) -> None:
    items = [item(f"s{i % 5}") for i in range(10)]
    for it in items:
        outbox.admit(it)
    batch = take(outbox, limit=3)
    assert 3 == len(batch) == len({it.server for it in batch})
    batch += take(outbox, limit=500)
    assert 5 == len(batch) == len({it.server for it in batch})  # the other 5 wait behind
    assert all(it.event_id for it in batch)  # ids are given when taken, off the caller's path


def test_the_queue_bound_drops_and_resync_re_sends_the_latest_with_its_event_id() -> None:
    outbox = Outbox(queue_size=1, max_servers=10, billing_size=1)
    first, dropped = item("a"), item("b")
    assert outbox.admit(first) is None
    reason, due = outbox.admit(dropped) or ("", 0)
    assert ("queue_full", 1) == (reason, due)
    assert outbox.resync_due(0.0) == (0, 1)  # no room: nothing queued, nothing dropped
    [taken] = take(outbox)
    outbox.settle(taken, DELIVERED, None, 0.0, False)
    assert outbox.resync_due(0.0) == (1, 0)
    [again] = take(outbox)
    assert again is dropped  # the same update, so the same event id
    outbox.settle(again, DELIVERED, None, 0.0, False)
    stats = outbox.stats()
    assert (3, 2, 1, 1, 0) == (
        stats.submitted,
        stats.delivered,
        stats.dropped,
        stats.resynced,
        stats.pending,
    )
    assert {("dropped", "queue_full"): 1} == outbox.reasons()
    outbox.finish()


def test_a_failed_latest_is_missed_once_and_re_sent_at_most_once_per_interval(
    outbox: Outbox,
) -> None:
    it = item("s")
    outbox.admit(it)
    [taken] = take(outbox)
    settled = outbox.settle(taken, FAILED, "unreachable", 0.0, True)
    assert settled is not None
    assert settled.missed  # the engine then checks health soon
    assert (1, 0) == outbox.resync_due(3600.0)
    [again] = take(outbox)
    outbox.settle(again, FAILED, "unreachable", 0.0, True)
    assert (0, 1) == outbox.resync_due(3600.0)  # re-sent a moment ago: not yet


def test_a_newer_update_supersedes_one_waiting_for_its_retry(outbox: Outbox) -> None:
    old, new = item("s", Status.INSTALLING), item("s")
    outbox.admit(old)
    [taken] = take(outbox)
    with set_testing(True):  # the retry's wait is 0 s
        outbox.retry_later(taken, 60.0)
        outbox.admit(new)
        batch, superseded = outbox.take(500) or ([], [])
    assert [old] == superseded
    assert [new] == batch
    outbox.settle(new, DELIVERED, None, 0.0, False)
    stats = outbox.stats()
    assert (2, 1, 1, 0) == (stats.submitted, stats.delivered, stats.superseded, stats.pending)
    assert {("superseded", SUPERSEDED): 1} == outbox.reasons()


@pytest.mark.real_waits
def test_a_retry_waits_without_holding_other_servers(outbox: Outbox) -> None:
    slow = item("slow")
    outbox.admit(slow)
    [taken] = take(outbox)
    outbox.retry_later(taken, 3600.0)  # a long backoff
    quick = item("quick")
    outbox.admit(quick)
    assert [quick] == take(outbox)  # at once: the backoff is a timer, not a worker


def test_billing_has_its_own_bound_and_never_holds_status_updates() -> None:
    outbox = Outbox(queue_size=10, max_servers=10, billing_size=2)
    for _ in range(2):
        assert outbox.admit_billing(billing("s")) is None
    dropped = outbox.admit_billing(billing("s"))
    assert dropped is not None
    assert BILLING_FULL == dropped[0]
    status = item("s")
    assert outbox.admit(status) is None  # the status queue is untouched
    assert [status] == take(outbox)  # first, though queued last: billing never delays it
    outbox.settle(status, DELIVERED, None, 0.0, False)
    for _ in range(2):
        [event] = take(outbox)  # never two of one server in a batch
        assert event.billing is not None
        outbox.settle(event, FAILED, "unreachable", 0.0, True)
    assert (0, 0) == outbox.resync_due(0.0)  # a failed billing event is never missed
    stats = outbox.stats()
    assert stats.balanced
    assert 1 == stats.dropped
    assert ("dropped", BILLING_FULL) in outbox.reasons()
    outbox.finish()


def test_every_billing_event_of_a_server_is_taken(outbox: Outbox) -> None:
    events = [billing("s") for _ in range(5)]
    for ev in events:
        outbox.admit_billing(ev)
    seen: list[Item] = []
    while len(seen) < 5:
        batch = take(outbox)
        assert 1 == len(batch)  # one of a server per batch
        seen += batch
        outbox.settle(batch[0], DELIVERED, None, 0.0, False)
    assert events == seen  # all of them, in order: measurements, not states


def test_resize_bounds_what_is_queued_from_then_on(outbox: Outbox) -> None:
    outbox.resize(queue_size=7, max_servers=1000, resync=True)
    results = [outbox.admit(item(f"s{i}")) for i in range(10)]
    assert 7 == results.count(None)
    assert 7 == outbox.stats().pending


def test_memory_is_bounded_by_max_servers_once_a_burst_settles() -> None:
    outbox = Outbox(queue_size=10_000, max_servers=10, billing_size=1)
    for i in range(100):
        outbox.admit(item(f"s{i}"))
    while outbox.stats().pending:
        for it in take(outbox):
            outbox.settle(it, FAILED, "unreachable", 0.0, True)
    assert outbox.servers == 10  # the oldest are forgotten as they settle
    sent, missed = outbox.resync_due(0.0)
    assert sent + missed <= outbox.servers
    outbox.finish()


def test_a_snapshot_without_the_lock_always_balances(outbox: Outbox) -> None:
    """What a signal handler reads (stats() without the lock) balances while threads count."""
    stop = threading.Event()

    def churn(n: int) -> None:
        i = 0
        while not stop.is_set():
            outbox.admit(item(f"t{n}-{i % 3}"))
            work = outbox.take(8) if outbox.stats().pending else None
            for it in work[0] if work else []:
                outbox.settle(it, DELIVERED, None, 0.0, False)
            i += 1

    threads = [threading.Thread(target=churn, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(20_000):
            snap = outbox.stats_unlocked()
            assert snap.balanced
            assert snap.pending >= 0
    finally:
        stop.set()
        outbox.close()
        for t in threads:
            t.join(10)


def test_the_pool_shrinks_by_retiring_and_grows_by_cancelling(outbox: Outbox) -> None:
    assert 0 == outbox.retire(2)
    assert 1 == outbox.retire(-3)  # two cancelled, one to start
    assert 0 == outbox.retire(1)
    assert outbox.take(1) is None  # a worker asked to end ends


def test_finish_counts_what_is_left_failed_closed_and_later_outcomes_are_ignored(
    outbox: Outbox,
) -> None:
    it = item("s")
    outbox.admit(it)
    [taken] = take(outbox)
    assert (1, 0, 0) == outbox.finish()
    assert outbox.settle(taken, DELIVERED, None, 0.0, False) is None
    stats = outbox.stats()
    assert (1, 0, 1, 0) == (stats.submitted, stats.delivered, stats.failed, stats.pending)
    assert {("failed", "closed"): 1} == outbox.reasons()


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [
        (None, 5.0),
        (-1, 0.0),
        (float("nan"), 0.0),
        (0, 0.0),
        (2.5, 2.5),
        (10**400, threading.TIMEOUT_MAX),
        (float("inf"), threading.TIMEOUT_MAX),
    ],
)
def test_any_number_is_a_wait_budget_without_overflow(timeout: float, expected: float) -> None:
    assert expected == budget(timeout, 5.0)


# -- the delivery policy (a frozen value, no sockets) -------------------------------


def test_the_policy_retries_what_may_succeed_and_caps_retry_after() -> None:
    policy = DeliveryPolicy(retries=2, max_retry_after=300.0)
    down = RemoteUnreachableError("down", retryable=True)
    first = policy.after_failure(down, 0)
    assert first.retry
    assert 0.0 <= first.delay <= 0.5
    assert first.resync
    assert not policy.after_failure(down, 2).retry  # retries used up
    asked = RemoteUnreachableError("busy", status=503, retryable=True, retry_after=99999999999.0)
    decision = policy.after_failure(asked, 0)
    assert (300.0, 99999999999.0) == (decision.pause, decision.asked)
    assert decision.delay >= 300.0


def test_the_policy_never_resyncs_what_the_remote_judged_wrong() -> None:
    from lightd_sync import RemoteRejectedError

    policy = DeliveryPolicy()
    wrong = RemoteRejectedError("bad", status=422)
    assert not policy.after_failure(wrong, 0).retry
    assert not policy.after_failure(wrong, 0).resync
    auth = RemoteRejectedError("auth", status=401)
    assert policy.after_failure(auth, 0).resync  # 401 says nothing about the update itself
