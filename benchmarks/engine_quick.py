"""
The engine's quick figures (#20): caller cost against ``Queue.put_nowait``; RSS with state_path.

1. ``update()`` per call, p50 and p99, beside ``queue.Queue.put_nowait`` of the
   same tuples in interleaved blocks (``measures.caller_cost``): the remote
   fast, silent and refusing, the queue full, and fast with ``state_path``
   (the ``+state_path`` conditions).
2. RSS growth of a process whose engine has ``state_path``, over N updates to
   10,000 servers, the remote silent (as the performance page's figure 3 measures it).

Run alone, in well under a minute::

    python benchmarks/engine_quick.py --calls 100000 --updates 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from measures import caller_cost
from measures import memory as measure_memory
from remotes import RefusedPort, SilentRemote, start_fast_remote


def caller(calls: int, blocks: int) -> dict[str, Any]:
    fast, _note = start_fast_remote(use_nginx=True)
    fast_url = fast.url
    silent = SilentRemote().start()
    refused = RefusedPort().start()
    try:
        urls = {"fast": fast_url, "silent": silent.url, "refused": refused.url}
        p = {"calls": calls, "blocks": blocks, "urls": urls, "close_timeout": 1.0}
        results = caller_cost(p)
    finally:
        fast.stop()
        silent.stop()
        refused.stop()
    table = {}
    for condition, r in results.items():
        table[condition] = {
            "engine_p50_ns": r["median_ns"],
            "engine_p99_ns": r["p99_ns"],
            "floor_p50_ns": r["floor"]["median_ns"],
            "floor_p99_ns": r["floor"]["p99_ns"],
            "p99_ratio": round(r["p99_ns"] / max(1, r["floor"]["p99_ns"]), 2),
        }
    return table


def memory(updates: int, servers: int = 10_000) -> dict[str, Any]:
    """``measures.memory`` (the performance page's figure 3) with and without state_path."""
    silent = SilentRemote().start()
    try:
        out = {}
        for state in (False, True):
            p = {
                "calls": updates,
                "servers": servers,
                "kind": "engine",
                "url": silent.url,
                "settle": 0.2,
                "state": state,
            }
            r = measure_memory(p)
            out["state_path" if state else "memory_only"] = {
                "rss_growth_kib": r["growth_kb"],
                "stats": r["stats"],
            }
        return out
    finally:
        silent.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--updates", type=int, default=1_000_000)
    parser.add_argument("--skip-caller", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    out: dict[str, Any] = {}
    if not args.skip_caller:
        out["caller_cost"] = caller(args.calls, args.blocks)
    if not args.skip_memory:
        out["memory"] = memory(args.updates)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
