"""
The signal storm of issue #26, as a function the suite runs briefly and a script loops.

One round: a ``SIGALRM`` timer fires every *interval* seconds while the main
thread calls the engine in a loop and a CPU hog thread competes for the GIL.
The handler calls the engine that the main loop is (often) inside: three
updates, ``stats()``, and, at the 50th signal, ``close()``. The round must end
(bounded: *limit* seconds) with every call counted in ``stats()``.

Run it as a script to loop it (the issue asks for 200 rounds or more)::

    python -m tests.storm --rounds 200 --interval 0.0002
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import threading
import time
from typing import Any

from lightd_sync import RemoteConfig, SyncEngine
from lightd_sync.testing import RecordingTransport

from .servers import lightd_threads, wait_until

#: Signals per round; the handler closes the engine at the 50th.
FIRES = 60


def hog(stop: threading.Event) -> None:
    """Keep one core busy in Python (it competes for the GIL, as a busy daemon does)."""
    n = 0
    while not stop.is_set():
        n += 1


def storm_round(interval: float, *, limit: float = 20.0) -> dict[str, Any]:
    """
    One storm; returns what it measured. Raises AssertionError if it did not end or lost a call.
    """
    engine = SyncEngine(RemoteConfig(queue_size=100_000), transport=RecordingTransport())
    fired: list[int] = []
    handled: list[int] = []  # list.append is atomic even against a nested handler
    took: list[float] = []
    refused: list[str] = []

    def handler(signum: int, frame: object) -> None:
        started = time.perf_counter()
        fired.append(signum)
        engine.update("from-handler", "ready")
        engine.error("from-handler", "x")
        engine.lifecycle("from-handler", "Started")
        handled.append(3)
        stats = engine.stats()
        if not stats.balanced:
            refused.append(f"unbalanced {stats}")
        if len(fired) == 50:
            engine.close(0.5)
        took.append(time.perf_counter() - started)

    stop = threading.Event()
    hogger = threading.Thread(target=hog, args=(stop,), name="test-cpu-hog", daemon=True)
    hogger.start()
    old = signal.signal(signal.SIGALRM, handler)
    made = 0  # only this loop writes it: a handler never touches it
    started = time.monotonic()
    try:
        signal.setitimer(signal.ITIMER_REAL, interval, interval)
        deadline = started + limit
        while len(fired) < FIRES and time.monotonic() < deadline:
            engine.update("main", "installing")
            made += 1
            engine.flush(0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)
        stop.set()
        hogger.join(5)
    seconds = time.monotonic() - started
    assert len(fired) >= FIRES, f"the storm did not end: {len(fired)} signals in {seconds:.1f} s"
    engine.close(2)
    assert wait_until(lambda: not lightd_threads(), timeout=5), lightd_threads()
    stats = engine.stats()
    assert stats.balanced, stats
    assert not refused, refused[:3]
    # A signal may fire after the handler's last engine call and before its append (+3).
    expected = made + sum(handled)
    assert expected <= stats.submitted <= expected + 3, (expected, stats)
    return {
        "seconds": seconds,
        "signals": len(fired),
        "calls": stats.submitted,
        "handler_median": statistics.median(took) if took else 0.0,
        "handler_max": max(took) if took else 0.0,
        "handlers": len(took),
        "handlers_over_interval": len([t for t in took if t > interval]),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.0002)
    args = parser.parse_args(argv)
    slowest = longest = 0.0
    medians = []
    handlers = over = 0
    for n in range(args.rounds):
        result = storm_round(args.interval)
        slowest = max(slowest, result["seconds"])
        longest = max(longest, result["handler_max"])
        medians.append(result["handler_median"])
        handlers += result["handlers"]
        over += result["handlers_over_interval"]
        if (n + 1) % 25 == 0:
            print(f"{n + 1} rounds ended; slowest {slowest:.2f} s", flush=True)
    print(
        f"{args.rounds} rounds, every one ended with every call counted; interval "
        f"{args.interval * 1e6:.0f} us, the handler's median work "
        f"{statistics.median(medians) * 1e6:.0f} us (the longest {longest * 1e3:.1f} ms; "
        f"{over} of {handlers} handlers took longer than the interval), "
        f"the slowest round {slowest:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
