"""
Throughput end to end: the engine, and the loops it is measured against.

Every variant sends the same requests to the same fast remote: ``POST
{url}/update`` with the protocol's body for the same sequence of (server,
status) pairs, the engine's headers and a fresh ``X-Lightd-Event-Id`` per
request. Each variant first sends ``warm`` requests (connections opened),
then times ``updates`` requests until the last answer is read.

- ``engine``: ``SyncEngine`` with ``workers`` lanes; timed from the first
  ``update()`` to the end of ``flush()``.
- ``urllib3``: ``workers`` threads, each looping ``PoolManager.request("POST", ...)``
  on one shared ``PoolManager`` (the floor of the target).
- ``requests``: ``ThreadPoolExecutor(workers)`` + ``requests.Session.post``,
  what a user would write instead.
- ``http_client``: ``workers`` threads, each looping on its own
  ``http.client.HTTPConnection`` (keep-alive): the harder floor.

Run alone (``python benchmarks/throughput.py [updates]``), it starts nginx
twice, offering batches from a static health body and not, and prints the
engine's rate against the loops: the targets of issue 19 are >= 10x the bare
``http.client`` loop with batches, and >= 1.0x the urllib3 loop without.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from functools import partial
from typing import Any, Callable
from urllib.parse import urlsplit

from common import STATUSES, base_headers, engine_config, request_for, server_ids

__all__ = ["VARIANTS", "throughput"]

_SERVERS = server_ids(1000, "tput")


def _pair(i: int) -> tuple[str, str]:
    return _SERVERS[i % 1000], STATUSES[(i // 1000) & 1]


def _engine(
    url: str, workers: int, warm: int, updates: int, limit: float, *, state: bool = False
) -> dict[str, Any]:
    from lightd_sync import SyncEngine

    extra: dict[str, Any] = {}
    state_dir = None
    if state:  # the crash-safe state file, written by its own thread
        state_dir = tempfile.mkdtemp(prefix="lightd-bench-tput-")
        extra["state_path"] = os.path.join(state_dir, "state.db")
    engine = SyncEngine(
        engine_config(url, workers=workers, queue_size=warm + updates + 100, **extra)
    )
    try:
        engine.start()
        offered = time.monotonic() + 2  # a remote that offers batches: wait for its first health
        while engine.health.healthy is None and time.monotonic() < offered:
            time.sleep(0.01)
        update = engine.update
        for i in range(warm):
            update(*_pair(i))
        if not engine.flush(limit):
            raise RuntimeError(f"warm-up not delivered: {engine.stats()}")
        pairs = [_pair(i) for i in range(warm, warm + updates)]
        t0 = time.perf_counter()
        for server, status in pairs:
            update(server, status)
        drained = engine.flush(limit)
        seconds = time.perf_counter() - t0
        stats = engine.stats()
    finally:
        engine.close(timeout=2)
        if state_dir is not None:
            shutil.rmtree(state_dir, ignore_errors=True)
    # An update of a server that is queued again before it went out is superseded: the
    # remote only needs the latest; every update is accounted for either way.
    if not drained or stats.delivered + stats.superseded != warm + updates:
        raise RuntimeError(f"not everything was delivered: {stats}")
    return {"seconds": seconds, "stats": stats.to_dict()}


def _threads(workers: int, loop: Callable[[int, range], int], warm: int, updates: int) -> float:
    """
    Run ``loop(k, indices)`` in ``workers`` threads over ``warm``, then ``updates`` indices.

    Thread *k* gets every index ``i`` with ``i % workers == k``; only the
    second round is timed.
    """
    errors: list[BaseException] = []
    bad: list[int] = []  # list.append is atomic; += on a shared int is not

    def run(k: int, indices: range) -> None:
        try:
            bad.append(loop(k, indices))
        except BaseException as exc:
            errors.append(exc)

    def in_threads(start: int, count: int) -> float:
        threads = [
            threading.Thread(target=run, args=(k, range(start + k, start + count, workers)))
            for k in range(workers)
        ]
        t0 = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - t0

    in_threads(0, warm)
    seconds = in_threads(warm, updates)
    if errors:
        raise RuntimeError(f"{len(errors)} threads failed; first: {errors[0]!r}")
    if sum(bad):
        raise RuntimeError(f"{sum(bad)} requests were not answered 200")
    return seconds


def _urllib3(url: str, workers: int, warm: int, updates: int, limit: float) -> dict[str, Any]:
    import urllib3

    manager = urllib3.PoolManager(maxsize=workers, timeout=limit)
    target, base = url + "/update", base_headers()

    def loop(_k: int, indices: range) -> int:
        bad = 0
        request = manager.request
        for i in indices:
            body, headers = request_for(base, *_pair(i))
            if request("POST", target, body=body, headers=headers).status != 200:
                bad += 1
        return bad

    try:
        return {"seconds": _threads(workers, loop, warm, updates)}
    finally:
        manager.clear()


def _http_client(url: str, workers: int, warm: int, updates: int, limit: float) -> dict[str, Any]:
    import http.client

    parts = urlsplit(url)
    host, port, path, base = parts.hostname, parts.port, parts.path + "/update", base_headers()
    # One kept-alive connection per thread index, reused from the warm-up to the timed round.
    conns = [http.client.HTTPConnection(host or "", port, timeout=limit) for _ in range(workers)]

    def loop(k: int, indices: range) -> int:
        conn = conns[k]
        bad = 0
        for i in indices:
            body, headers = request_for(base, *_pair(i))
            conn.request("POST", path, body, headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                bad += 1
        return bad

    try:
        return {"seconds": _threads(workers, loop, warm, updates)}
    finally:
        for conn in conns:
            conn.close()


def _requests(url: str, workers: int, warm: int, updates: int, limit: float) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    import requests

    session = requests.Session()
    target, base = url + "/update", base_headers()

    def batch(executor: ThreadPoolExecutor, start: int, count: int) -> int:
        futures = []
        for i in range(start, start + count):
            body, headers = request_for(base, *_pair(i))
            futures.append(
                executor.submit(session.post, target, data=body, headers=headers, timeout=limit)
            )
        return sum(f.result().status_code != 200 for f in futures)

    try:
        with ThreadPoolExecutor(workers) as executor:
            bad = batch(executor, 0, warm)
            t0 = time.perf_counter()
            bad += batch(executor, warm, updates)
            seconds = time.perf_counter() - t0
    finally:
        session.close()
    if bad:
        raise RuntimeError(f"{bad} requests were not answered 200")
    return {"seconds": seconds}


VARIANTS: dict[str, Callable[[str, int, int, int, float], dict[str, Any]]] = {
    "engine": _engine,
    "engine_state": partial(_engine, state=True),
    "urllib3": _urllib3,
    "requests": _requests,
    "http_client": _http_client,
}


def throughput(p: dict[str, Any]) -> dict[str, Any]:
    """Run one variant once; return updates per second."""
    variant = p["variant"]
    if variant == "requests":
        try:
            import requests  # noqa: F401
        except ImportError:
            return {"skipped": "requests is not installed (pip install requests)"}
    updates, workers = int(p["updates"]), int(p["workers"])
    out = VARIANTS[variant](p["url"], workers, int(p["warm"]), updates, float(p["limit"]))
    out["per_second"] = updates / out["seconds"]
    return out


def _main() -> None:  # pragma: no cover (a manual run)
    import argparse

    from remotes import NginxRemote, find_nginx

    parser = argparse.ArgumentParser(
        description="The engine's throughput against the urllib3 and http.client loops, "
        "on nginx with batches offered and without (docs/performance.md)."
    )
    parser.add_argument(
        "updates", nargs="?", type=int, default=5000, help="updates per variant (default 5000)"
    )
    updates = parser.parse_args().updates
    if updates < 1:
        parser.error(f"updates must be at least 1, got {updates}")
    exe = find_nginx()
    if exe is None:
        raise SystemExit("nginx is needed: apt-get install -y nginx")
    for batches in (500, 0):
        remote = NginxRemote(exe, batches=batches).start()
        try:
            rates = {}
            for variant in ("engine", "urllib3", "http_client"):
                out = VARIANTS[variant](remote.url, 4, 200, updates, 60.0)
                rates[variant] = updates / out["seconds"]
        finally:
            remote.stop()
        offer = f"batches offered (max {batches})" if batches else "no batches"
        print(f"nginx, {offer}, {updates} updates, 4 workers:")
        for variant, rate in rates.items():
            print(
                f"  {variant:12} {rate:9.0f}/s  {rate / rates['http_client']:6.2f}x http.client"
                f"  {rate / rates['urllib3']:6.2f}x urllib3"
            )


if __name__ == "__main__":
    _main()
