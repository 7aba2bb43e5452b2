"""
The state file's figures: the cost of ``accepted()``, the file and RSS after
1,000,000 updates over 10,000 servers, batch write timings, and the kill -9 loop.

    python benchmarks/state.py            # all, 100 kill runs
    python benchmarks/state.py --kills 20 # fewer kill runs

Prints one JSON document; docs/state.md quotes a run of it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import rss_kb  # noqa: E402

from lightd_sync._engine.state import StateStore  # noqa: E402

STATUSES = ("installing", "ready", "failed")


def caller_cost(folder: str, n: int = 1_000_000, servers: int = 10_000) -> dict[str, Any]:
    """ns per call: accepted() vs a bare dict store, both in a tight loop (best of 5)."""
    ids = [f"server-{i:05d}" for i in range(servers)]
    items = [(ids[i % servers], STATUSES[i % 2], f"ev-{i}") for i in range(n // 10)]
    store = StateStore(os.path.join(folder, "cost.db"), max_servers=servers)
    store.open()
    accepted = store.accepted
    plain: dict[str, Any] = {}
    clock = time.perf_counter_ns

    def loop_store() -> float:
        t0 = clock()
        for server, status, event_id in items:
            accepted(server, status, None, event_id)
        return (clock() - t0) / len(items)

    def loop_dict() -> float:
        t0 = clock()
        for server, status, event_id in items:
            plain[server] = (status, None, event_id, 0)
        return (clock() - t0) / len(items)

    best_store = min(loop_store() for _ in range(5))
    best_dict = min(loop_dict() for _ in range(5))
    store.close(5.0)
    return {
        "accepted_ns": round(best_store, 1),
        "dict_store_ns": round(best_dict, 1),
        "ratio": round(best_store / best_dict, 2),
    }


def million(
    folder: str, n: int = 1_000_000, servers: int = 10_000, rate: int = 200_000
) -> dict[str, Any]:
    """1,000,000 updates over 10,000 servers, paced at *rate*/s, a quarter acknowledged."""
    path = os.path.join(folder, "million.db")
    ids = [f"server-{i:05d}" for i in range(servers)]
    gc.collect()
    rss_before = rss_kb()
    store = StateStore(path, max_servers=servers)
    store.open()
    started = time.monotonic()
    chunk = rate // 100
    peak_wal = 0
    for base in range(0, n, chunk):
        for i in range(base, min(base + chunk, n)):
            server = ids[(i * 7919) % servers]  # every server, in a scrambled order
            event_id = f"{i:012d}-0000-7000-8000-000000000000"
            if i % 3 == 2:
                store.accepted(server, "failed", "Docker container creation failed", event_id)
            else:
                store.accepted(server, STATUSES[i % 2], None, event_id)
            if i % 4 == 0:
                store.acknowledged(server, event_id)
        ahead = started + (base + chunk) / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        if os.path.exists(path + "-wal"):
            peak_wal = max(peak_wal, os.path.getsize(path + "-wal"))
    assert store.wait_flushed(10.0)
    wall = time.monotonic() - started
    rss_open = rss_kb()
    size_open = os.path.getsize(path)
    wal_open = os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0
    writes, total, slowest = store.write_timings()
    flushes = store.flush_count
    store.close(5.0)
    t0 = time.monotonic()
    reopened = StateStore(path, max_servers=servers)
    unacked = len(reopened.open())
    open_s = time.monotonic() - t0
    reopened.close(5.0)
    return {
        "updates": n,
        "servers": servers,
        "seconds": round(wall, 2),
        "file_bytes_while_open": size_open,
        "wal_bytes_while_open": wal_open,
        "wal_bytes_peak": peak_wal,
        "file_bytes_after_close": os.path.getsize(path),
        "rss_growth_kib": rss_open - rss_before,
        "batches": flushes,
        "writes_with_rows": writes,
        "write_ms_mean": round(1000 * total / max(writes, 1), 2),
        "write_ms_max": round(1000 * slowest, 2),
        "updates_per_write": round(n / max(writes, 1)),
        "reopen_ms": round(1000 * open_s, 1),
        "unacked_after_reopen": unacked,
    }


def kills(folder: str, runs: int) -> dict[str, Any]:
    from tests.state_crash import kill_run

    path = os.path.join(folder, "killed.db")
    rng = random.Random(2024)
    results = [kill_run(path, rng) for _ in range(runs)]  # each asserts what it found
    return {
        "runs": runs,
        "all_checks_passed": True,
        "open_ms_max": round(1000 * max(r["open_seconds"] for r in results), 1),
        "updates_durable_per_run_min": min(r["durable"] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        out = {
            "python": sys.version.split()[0],
            "caller_cost": caller_cost(folder),
            "million": million(folder),
            "kill_loop": kills(folder, args.kills),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
