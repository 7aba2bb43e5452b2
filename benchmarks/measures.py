"""
The measures that run inside a subprocess of their own (see ``worker.py``).

Each function takes the parameters ``run.py`` chose and returns a JSON-ready
dict of raw figures; ``run.py`` turns them into ratios and verdicts.
"""

from __future__ import annotations

import contextlib
import gc
import os
import queue
import resource
import shutil
import sys
import tempfile
import threading
import time
from functools import partial
from typing import Any, Callable

from common import (
    STATUSES,
    engine_config,
    lightd_threads,
    rss_kb,
    server_ids,
    summary_ns,
)

__all__ = ["caller_cost", "close_time", "exit_child", "memory", "soak"]


# -- 1. caller cost ------------------------------------------------------------


def _time_engine(update: Callable[[str, str], bool], items: list[tuple[str, str]]) -> list[int]:
    clock = time.perf_counter_ns
    out = [0] * len(items)
    for i in range(len(items)):
        server, status = items[i]
        t0 = clock()
        update(server, status)
        out[i] = clock() - t0
    return out


def _time_put(put: Callable[[Any], None], items: list[tuple[str, str]]) -> list[int]:
    clock = time.perf_counter_ns
    out = [0] * len(items)
    for i in range(len(items)):
        item = items[i]
        t0 = clock()
        put(item)
        out[i] = clock() - t0
    return out


def _time_put_full(put: Callable[[Any], None], items: list[tuple[str, str]]) -> list[int]:
    clock = time.perf_counter_ns
    full = queue.Full
    out = [0] * len(items)
    for i in range(len(items)):
        item = items[i]
        t0 = clock()
        try:  # noqa: SIM105 (contextlib.suppress would add a call to what is timed)
            put(item)
        except full:
            pass
        out[i] = clock() - t0
    return out


# This thread's own counters where the platform has them (Linux), else the process's.
_WHO = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)


def _rusage() -> tuple[int, int, int]:
    r = resource.getrusage(_WHO)
    return r.ru_minflt, r.ru_nvcsw, r.ru_nivcsw


def _interleaved(
    blocks: int, engine_block: Callable[[], list[int]], floor_block: Callable[[], list[int]]
) -> dict[str, Any]:
    """
    Alternate floor and engine blocks, so that the noise of a shared machine hits both alike.

    Also counts, per side, the page faults and context switches (voluntary:
    the thread waited for a lock or the GIL; involuntary: the kernel preempted
    it) that happened in its blocks: they are what the slow calls are made of.
    """
    sides: dict[str, Any] = {}
    for name in ("floor", "engine"):
        sides[name] = {"samples": [], "faults": 0, "voluntary_cs": 0, "involuntary_cs": 0}
    floor_block()  # one untimed block each: code paths and caches warm
    engine_block()
    for _ in range(blocks):
        for name, block in (("floor", floor_block), ("engine", engine_block)):
            before = _rusage()
            samples = block()
            after = _rusage()
            side = sides[name]
            side["samples"] += samples
            for key, a, b in zip(("faults", "voluntary_cs", "involuntary_cs"), before, after):
                side[key] += b - a
    for side in sides.values():
        side.update(summary_ns(side.pop("samples")))
    return sides


def caller_cost(p: dict[str, Any]) -> dict[str, Any]:
    """
    Time each ``engine.update()`` call in the producer thread, per remote condition.

    ``fast``, ``silent`` and ``refused`` have a queue large enough that every
    call queues; ``full`` has the default queue (1000), filled first, so that
    every timed call is a drop. The floor, ``queue.Queue(maxsize).put_nowait``
    of the same (server, status) tuples, runs in blocks interleaved with the
    engine's: ``blocks`` blocks of ``calls / blocks`` calls each.

    With ``pretouch``, the heap is grown and freed before each condition, so
    that the queued records land on pages already touched: run under glibc
    malloc told to keep freed memory (see ``run.PRETOUCH_ENV``), this removes
    first-touch page faults from both sides and shows the CPU cost alone.
    """
    from lightd_sync import SyncEngine

    calls, blocks = int(p["calls"]), int(p["blocks"])
    per_block = max(1, calls // blocks)
    servers = server_ids(100, "caller")
    items = [(servers[i % 100], STATUSES[(i // 100) & 1]) for i in range(per_block)]
    results: dict[str, Any] = {}
    state_dir = tempfile.mkdtemp(prefix="lightd-bench-state-")
    for condition in (
        "fast",
        "silent",
        "refused",
        "full",
        "fast+state_path",
        "silent+state_path",
        "refused+state_path",
    ):
        full = condition == "full"
        with_state = condition.endswith("+state_path")
        url = p["urls"]["silent" if full else condition.split("+")[0]]
        queue_size = 1000 if full else per_block * (blocks + 1) + 1000
        if p.get("pretouch"):
            junk = [[server, status, None, None, False] for server, status in items * blocks * 3]
            del junk
        floor_queue: queue.Queue[Any] = queue.Queue(queue_size)
        extra = {"state_path": os.path.join(state_dir, "caller.db")} if with_state else {}
        engine = SyncEngine(engine_config(url, queue_size=queue_size, workers=4, **extra))
        try:
            engine.start()
            if full:
                for i in range(queue_size):
                    floor_queue.put_nowait(items[i % per_block])
                    engine.update(*items[i % per_block])
                floor_block = partial(_time_put_full, floor_queue.put_nowait, items)
            else:
                floor_block = partial(_time_put, floor_queue.put_nowait, items)
            time.sleep(0.1)  # the health check and the first requests are out
            gc.collect()
            sides = _interleaved(blocks, partial(_time_engine, engine.update, items), floor_block)
            stats = engine.stats()
        finally:
            engine.close(timeout=float(p["close_timeout"]))
        results[condition] = {
            **sides["engine"],
            "floor": sides["floor"],
            "calls": per_block * blocks,
            "queue_size": queue_size,
            "queued": stats.submitted - stats.dropped - (queue_size if full else 0),
            "dropped": stats.dropped,
            "delivered_meanwhile": stats.delivered,
        }
        del floor_queue, sides
        gc.collect()
    shutil.rmtree(state_dir, ignore_errors=True)
    return results


# -- 3. memory under outage --------------------------------------------------


def memory(p: dict[str, Any]) -> dict[str, Any]:
    """RSS growth over ``calls`` update() calls (or a floor's equivalent loop)."""
    calls, count, kind = int(p["calls"]), int(p["servers"]), p["kind"]
    servers = server_ids(count, "mem")
    statuses = STATUSES
    engine: Any = None
    state_path = None
    if kind == "engine":
        from lightd_sync import SyncEngine

        extra = {}
        if p.get("state"):
            state_path = os.path.join(tempfile.mkdtemp(prefix="lightd-bench-mem-"), "state.db")
            extra = {"state_path": state_path, "max_servers": count}
        engine = SyncEngine(engine_config(p["url"], **extra))
        engine.start()
        time.sleep(float(p["settle"]))  # the first health check and requests go out
        submit: Callable[[str, str], Any] = engine.update
    elif kind == "floor_queue":  # a full queue.Queue(1000): what a bounded queue costs
        q: queue.Queue[Any] = queue.Queue(1000)

        def submit(server: str, status: str) -> None:
            with contextlib.suppress(queue.Full):
                q.put_nowait((server, status))

    else:  # floor_dict: the least any resync needs, the latest status of each server
        latest: dict[str, tuple[str, str]] = {}

        def submit(server: str, status: str) -> None:
            latest[server] = (server, status)

    gc.collect()
    base = rss_kb()
    samples = []
    step = max(1, calls // 20)
    for i in range(calls):
        submit(servers[i % count], statuses[(i // count) & 1])
        if i % step == 0:
            samples.append(rss_kb() - base)
    gc.collect()
    growth = rss_kb() - base
    out: dict[str, Any] = {"growth_kb": growth, "samples_kb": samples, "calls": calls}
    if engine is not None:
        out["stats"] = engine.stats().to_dict()
        engine.close(timeout=0.5)
    if state_path is not None:
        out["file_kb"] = sum(
            os.path.getsize(state_path + suffix) // 1024
            for suffix in ("", "-wal")
            if os.path.exists(state_path + suffix)
        )
        shutil.rmtree(os.path.dirname(state_path), ignore_errors=True)
    return out


# -- 4. shutdown -------------------------------------------------------------------


def _fill(engine: Any, count: int) -> None:
    for i in range(count):
        engine.update(f"close-{i % 100:03d}", STATUSES[i & 1])


def close_time(p: dict[str, Any]) -> dict[str, Any]:
    """How long ``close(timeout)`` takes against a silent remote with a full queue."""
    from lightd_sync import SyncEngine

    engine = SyncEngine(engine_config(p["url"], workers=4))
    engine.start()
    _fill(engine, engine.config.queue_size + 100)
    time.sleep(0.2)  # every lane is now blocked reading from the silent remote
    before = engine.stats()
    t0 = time.perf_counter()
    engine.close(timeout=float(p["timeout"]))
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "timeout": float(p["timeout"]),
        "threads_left": lightd_threads(),
        "pending_before": before.pending,
        "stats": engine.stats().to_dict(),
    }


def exit_child(p: dict[str, Any]) -> dict[str, Any]:
    """
    Leave an engine open and let the interpreter exit (the parent times the exit).

    Modes: ``none`` (imports only: the floor), ``fast`` (everything delivered,
    engine idle), ``silent`` (full queue, every lane blocked on a silent remote).
    """
    import lightd_sync

    lightd_sync.HttpTransport  # noqa: B018 (import what the engine sends with)
    mode = p["mode"]
    if mode != "none":
        engine = lightd_sync.SyncEngine(
            engine_config(p["url"], shutdown_timeout=float(p["shutdown_timeout"]))
        )
        _fill(engine, engine.config.queue_size + 100 if mode == "silent" else 200)
        if mode == "fast":
            engine.flush(10)
        else:
            time.sleep(0.2)
        globals()["_kept_open"] = engine  # never closed: the exit hook must do it
    return {"mode": mode, "t_end": time.time()}


# -- 6. soak -----------------------------------------------------------------------


def soak(p: dict[str, Any]) -> dict[str, Any]:
    """
    Deliver ``updates`` updates while the health timer runs ``health_cycles`` checks.

    The producer submits as fast as the queue takes updates (a full queue makes
    it pause 1 ms); a sampler thread records the thread count and RSS.
    """
    import lightd_sync

    updates, cycles = int(p["updates"]), int(p["health_cycles"])
    config = engine_config(p["url"], health_interval=float(p["health_interval"]))
    checks = [0]

    class CountingTransport(lightd_sync.HttpTransport):  # type: ignore[misc,name-defined]
        def check_health(self) -> None:
            checks[0] += 1
            super().check_health()

    engine = lightd_sync.SyncEngine(config, transport=CountingTransport(config))
    samples: list[dict[str, Any]] = []
    done = threading.Event()
    t0 = time.monotonic()

    def sample() -> None:
        while True:
            stats = engine.stats()
            samples.append(
                {
                    "t": round(time.monotonic() - t0, 3),
                    "threads": threading.active_count(),
                    "lightd_threads": len(lightd_threads()),
                    "rss_kb": rss_kb(),
                    "submitted": stats.submitted,
                    "health_checks": checks[0],
                }
            )
            if done.wait(float(p["sample_every"])):
                return

    engine.start()
    sampler = threading.Thread(target=sample, name="bench-sampler", daemon=True)
    sampler.start()
    servers = server_ids(1000, "soak")
    update, pause = engine.update, time.sleep
    retries = 0
    for i in range(updates):
        server, status = servers[i % 1000], STATUSES[(i // 1000) & 1]
        while not update(server, status):
            retries += 1
            pause(0.001)
    deadline = time.monotonic() + float(p["max_wait"])
    while checks[0] < cycles and time.monotonic() < deadline:
        time.sleep(0.01)
    drained = engine.flush(max(0.1, deadline - time.monotonic()))
    done.set()
    sampler.join(5)
    stats = engine.stats()
    engine.close(timeout=2)
    return {
        "updates": updates,
        "health_checks": checks[0],
        "drained": drained,
        "full_queue_pauses": retries,
        "seconds": time.monotonic() - t0,
        "stats": stats.to_dict(),
        "samples": samples,
        "threads_left": lightd_threads(),
    }


if __name__ == "__main__":
    sys.exit("run benchmarks/run.py (this module is used by worker.py)")
