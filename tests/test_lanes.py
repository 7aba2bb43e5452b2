"""
The lanes: who takes the next batch, per-server order, and the end.

These talk to :class:`~lightd_sync._lanes.Lanes` directly with a scripted
``deliver``: what the engine's tests cannot see (which thread took what, and
when a second thread joins) is asserted here.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from typing import Callable, Optional

import pytest

from lightd_sync._lanes import HAND_OFF, MAX_BATCH, Lanes
from lightd_sync._model import Status
from lightd_sync._pending import Pending

from .servers import wait_until


class Recorder:
    """A ``deliver`` that records batches, threads and overlaps, then runs *behaviour*."""

    def __init__(
        self, behaviour: Optional[Callable[[list[Pending], Callable[[], None]], None]] = None
    ) -> None:
        self.behaviour = behaviour
        # Guards every attribute below (any lane thread delivers).
        self.lock = threading.Lock()
        self.batches: list[list[Pending]] = []
        self.threads: set[str] = set()
        self.order: dict[str, list[int]] = defaultdict(list)
        self.active: set[str] = set()
        self.overlaps: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.ended = 0

    def __call__(self, batch: list[Pending], hand_off: Callable[[], None]) -> None:
        with self.lock:
            self.batches.append(batch)
            self.threads.add(threading.current_thread().name)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            for item in batch:
                if item.server in self.active:
                    self.overlaps.append(item.server)
                self.active.add(item.server)
                assert item.data is not None
                self.order[item.server].append(int(item.data))
        try:
            if self.behaviour is not None:
                self.behaviour(batch, hand_off)
        finally:
            with self.lock:
                self.in_flight -= 1
                self.ended += 1
                for item in batch:
                    self.active.discard(item.server)

    @property
    def delivered(self) -> int:
        with self.lock:
            return sum(len(b) for b in self.batches)


def pending(server: str, n: int) -> Pending:
    return Pending(server, Status.READY, str(n))


def run(lanes: Lanes, timeout: float = 10.0) -> None:
    lanes.stop()
    assert lanes.join(time.monotonic() + timeout), "a lane thread did not end"


def test_quick_deliveries_wake_one_thread_only() -> None:
    """While each batch is quick, the other threads are never woken: one took everything."""
    recorder = Recorder()
    lanes = Lanes(4, recorder, slow_after=5.0)  # no stall of a loaded machine counts as slow
    lanes.start()
    for i in range(300):
        lanes.put(pending(f"s{i % 50}", i))
        if i % 10 == 0:
            assert wait_until(lambda n=i + 1: recorder.delivered == n, 5)
    run(lanes)
    assert recorder.delivered == 300
    assert len(recorder.threads) == 1, recorder.threads


def test_slow_deliveries_go_out_in_parallel() -> None:
    """Batches slower than HAND_OFF pass the baton on: up to ``count`` are in flight at once."""
    release = threading.Event()

    def slow(batch: list[Pending], hand_off: Callable[[], None]) -> None:
        release.wait(0.1 if batch[0].server == "first" else 10)

    recorder = Recorder(slow)
    lanes = Lanes(4, recorder, slow_after=0.05)
    lanes.start()
    try:
        lanes.put(pending("first", 0))  # slow: marks the lanes slow once it ends
        assert wait_until(lambda: recorder.ended == 1, 5)
        for i in range(1, 5):  # each batch now hands the baton on before it is delivered
            lanes.put(pending(f"s{i}", i))
            assert wait_until(lambda n=i + 1: recorder.delivered == n, 5)
        assert recorder.most_in_flight == 4
    finally:
        release.set()
        run(lanes)
    assert recorder.delivered == 5


def test_a_backlog_larger_than_a_batch_is_shared() -> None:
    """More queued than one batch holds: the next thread takes the rest meanwhile."""
    hold = threading.Event()

    def held(batch: list[Pending], hand_off: Callable[[], None]) -> None:
        hold.wait(5)

    recorder = Recorder(held)
    lanes = Lanes(2, recorder)
    for i in range(MAX_BATCH * 3):
        lanes.put(pending(f"s{i}", i))
    lanes.start()
    try:
        assert wait_until(lambda: recorder.most_in_flight == 2, 5)
    finally:
        hold.set()
        run(lanes)
    assert recorder.delivered == MAX_BATCH * 3
    assert all(len(b) <= MAX_BATCH for b in recorder.batches)


def test_a_waiting_delivery_hands_off() -> None:
    """A batch that waits (a back-off) calls hand_off: others go on meanwhile."""
    stuck = threading.Event()

    def wait_for_stuck(batch: list[Pending], hand_off: Callable[[], None]) -> None:
        if batch[0].server == "stuck":
            hand_off()
            hand_off()  # idempotent
            stuck.wait(10)

    recorder = Recorder(wait_for_stuck)
    lanes = Lanes(2, recorder)
    lanes.start()
    lanes.put(pending("stuck", 0))
    assert wait_until(lambda: recorder.delivered == 1, 5)
    for i in range(1, 20):
        lanes.put(pending(f"s{i}", i))
    assert wait_until(lambda: recorder.delivered == 20, 5)
    stuck.set()
    run(lanes)


@pytest.mark.parametrize("count", [1, 2, 4, 8])
def test_every_update_once_in_order_never_two_of_a_server_at_once(count: int) -> None:
    """Random delays and hand-offs: each server's updates once each, in order, one at a time."""
    rng = random.Random(count)

    def jitter(batch: list[Pending], hand_off: Callable[[], None]) -> None:
        roll = rng.random()
        if roll < 0.2:
            hand_off()
        if roll < 0.4:
            time.sleep(rng.random() * 0.002)
        elif roll < 0.45:
            time.sleep(HAND_OFF * 1.2)  # a slow one: switches to parallel for a while

    recorder = Recorder(jitter)
    lanes = Lanes(count, recorder)
    lanes.start()
    sent: dict[str, list[int]] = defaultdict(list)
    for i in range(3000):
        server = f"s{rng.randrange(12)}"
        sent[server].append(i)
        lanes.put(pending(server, i))
        if i % 300 == 0:
            time.sleep(0.001)
    run(lanes, 30)
    assert recorder.overlaps == []
    assert dict(recorder.order) == dict(sent)
    assert all(len({i.server for i in b}) == len(b) for b in recorder.batches)


def test_stop_delivers_held_updates_first_and_every_thread_ends() -> None:
    """stop() while a server's newer updates wait behind its slow one: all are delivered."""
    first = threading.Event()

    def slow_first(batch: list[Pending], hand_off: Callable[[], None]) -> None:
        if any(item.data == "0" for item in batch):
            hand_off()
            first.wait(5)

    recorder = Recorder(slow_first)
    drained = threading.Event()
    lanes = Lanes(3, recorder)
    lanes.on_drained = drained.set
    lanes.start()
    lanes.put(pending("a", 0))
    assert wait_until(lambda: recorder.delivered == 1, 5)
    for i in range(1, 6):
        lanes.put(pending("a", i))  # held behind 0
    lanes.put(pending("b", 6))
    lanes.stop()
    assert wait_until(lambda: recorder.delivered == 2, 5)  # b went meanwhile
    first.set()
    assert lanes.join(time.monotonic() + 5)
    assert drained.is_set()
    assert recorder.order["a"] == [0, 1, 2, 3, 4, 5]


def test_a_deliver_that_raises_does_not_strand_the_others() -> None:
    """A bug in deliver ends its thread; the baton is let go and the others carry on."""

    def boom(batch: list[Pending], hand_off: Callable[[], None]) -> None:
        if batch[0].server == "boom":
            raise RuntimeError("boom")

    recorder = Recorder(boom)
    lanes = Lanes(2, recorder)
    errors: list[str] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: errors.append(str(args.exc_value))
    try:
        lanes.start()
        lanes.put(pending("boom", 0))
        assert wait_until(lambda: errors == ["boom"], 5)
        for i in range(1, 10):
            lanes.put(pending(f"s{i}", i))
        assert wait_until(lambda: recorder.delivered == 10, 5)
        run(lanes)
    finally:
        threading.excepthook = previous


def test_stop_racing_puts_and_slow_batches_200_rounds() -> None:
    """stop() at any moment of a delivery: every thread ends, nothing queued before it is lost."""
    for round_ in range(200):
        rng = random.Random(round_)

        def maybe_slow(
            batch: list[Pending], hand_off: Callable[[], None], rng: random.Random = rng
        ) -> None:
            if rng.random() < 0.3:
                hand_off()
            if rng.random() < 0.3:
                time.sleep(0.0005)

        recorder = Recorder(maybe_slow)
        lanes = Lanes(rng.choice([1, 2, 4]), recorder)
        lanes.start()
        n = rng.randrange(1, 60)
        for i in range(n):
            lanes.put(pending(f"s{rng.randrange(5)}", i))
        run(lanes)
        assert recorder.delivered == n, round_
        assert recorder.overlaps == []


def test_a_retry_passes_the_turn_on_before_each_backoff() -> None:
    """The deliverer calls hand_off before every wait, so the other lanes go on meanwhile."""
    from lightd_sync import RemoteConfig, RemoteRejectedError, SyncEngine
    from lightd_sync.testing import RecordingTransport

    def busy(update: object) -> None:
        raise RemoteRejectedError("busy", status=503, retryable=True)

    engine = SyncEngine(RemoteConfig(retries=2), transport=RecordingTransport(busy))
    try:
        item = Pending("x", Status.READY, None)
        handed: list[int] = []
        engine._deliverer.deliver_batch([item], lambda: handed.append(item.attempts))
        assert handed == [1, 2]  # after the first and the second attempt, before each wait
        assert item.attempts == 3
    finally:
        engine.close(1)
