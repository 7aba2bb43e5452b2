"""
The reference receiver under load: ``python benchmarks/receiver_load.py [--quick] [--json PATH]``.

Runs ``lightd-sync receiver`` as users do (a subprocess per receiver, audit
off, rate limit off) and a minimal Express.js remote written from the
protocol (``benchmarks/express``, in-memory, as Lightd's own docs sketch
one), and measures against each, from SyncEngines on loopback:

- ``updates/s``: updates delivered per second by SyncEngines (8 lanes each):
  one receiver on SQLite, one on PostgreSQL, two on one PostgreSQL (an
  engine per receiver), and the Express remote;
- ``p50/p99``: latency of ``POST /update`` on a kept-alive connection while
  500 slow clients hold connections (half idle, half trickling a header
  byte every half second);
- ``batch updates/s``: updates stored per second through ``POST /updates``
  (batches of 500, each with its event id, from 4 kept-alive connections),
  on SQLite and on PostgreSQL (the batch extension; Express has none).

The receivers the engines send to offer no batches (``--batch-max 0``), so
that the single-update rows measure single ``POST /update``s whatever the
engine would do with an offer; the batch figure comes from a receiver on the
same database that offers them.

Every update the receiver acknowledges is durably stored: SQLite commits
with ``synchronous=FULL`` (concurrent requests share one commit), PostgreSQL
with its default ``synchronous_commit``.

Figures are also given as ratios to the Express remote's. PostgreSQL comes
from ``LIGHTD_BENCH_POSTGRES_URL`` or ``LIGHTD_TEST_POSTGRES_URL``
(``eval "$(.ci/postgres start)"``); without one those rows are skipped.
Results: docs/performance.md, section "Receiver".
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

import remotes
from common import TOKEN, engine_config, server_ids

SLOW = 500
_SERVERS = server_ids(1000, "recv")


class Server:
    """A server subprocess that prints ``listening on URL``; stopped with SIGTERM."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Optional[Path] = None) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, name="bench-reader", daemon=True).start()
        deadline = time.monotonic() + 30
        while True:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise RuntimeError(f"{argv[:3]} did not start: {''.join(self.output)}") from None
            self.output.append(line)
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            if found:
                self.url = found.group(1)
                return

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def env_with_token(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTD_REMOTE_")}
    env.update(LIGHTD_REMOTE_TOKEN=TOKEN, LIGHTD_TOKEN=TOKEN, PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def receiver(db: str, *, batches: bool = False) -> Server:
    """A receiver process; without *batches* it offers none, so engines send single updates."""
    argv = [sys.executable, "-m", "lightd_sync", "receiver", "--port", "0", "--db", db,
            "--no-audit", "--rate", "1e9", "--burst", "1000000000"]  # fmt: skip
    if not batches:
        argv += ["--batch-max", "0"]
    return Server(argv, env_with_token())


def express() -> Server:
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        raise RuntimeError("node and npm are needed for the Express remote")
    return Server([node, "server.js", "0"], env_with_token(), cwd=remotes.install_express(npm))


def postgres_url() -> Optional[str]:
    return os.environ.get("LIGHTD_BENCH_POSTGRES_URL") or os.environ.get("LIGHTD_TEST_POSTGRES_URL")


@contextlib.contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _pair(i: int) -> tuple[str, str]:
    return _SERVERS[i % 1000], ("installing", "ready")[(i // 1000) & 1]


def drive(urls: list[str], updates: int, workers: int = 8) -> float:
    """Updates per second delivered by one SyncEngine per URL, *updates* in all."""
    from lightd_sync import SyncEngine

    share = updates // len(urls)
    engines = [
        SyncEngine(engine_config(url, workers=workers, queue_size=share + 1000, timeout=30))
        for url in urls
    ]
    try:
        for engine in engines:  # warm: connections open, tables created
            for i in range(50):
                engine.update(_SERVERS[i], "installing")
            engine.flush(60)
        plans = [[_pair(i) for i in range(n * share, (n + 1) * share)] for n in range(len(engines))]
        started = time.perf_counter()
        for engine, plan in zip(engines, plans):
            update = engine.update
            for server, status in plan:
                update(server, status)
        for engine in engines:
            if not engine.flush(300):
                raise RuntimeError(f"not delivered in time: {engine.stats()}")
        seconds = time.perf_counter() - started
        stats = [engine.stats() for engine in engines]
    finally:
        for engine in engines:
            engine.close(timeout=5)
    delivered = sum(s.delivered for s in stats) - 50 * len(engines)
    if delivered != share * len(engines):
        raise RuntimeError(f"delivered {delivered} of {share * len(engines)}: {stats}")
    return delivered / seconds


class SlowClients:
    """*count* connections held open: half idle, half trickling one header byte every 0.5 s."""

    def __init__(self, url: str, count: int) -> None:
        parts = urlsplit(url)
        addr = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.socks = [socket.create_connection(addr, timeout=5) for _ in range(count)]
        self.tricklers = self.socks[: count // 2]
        for sock in self.tricklers:
            sock.sendall(b"POST /update HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            sock.setblocking(False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, name="bench-slow", daemon=True)
        self._thread.start()

    def _trickle(self) -> None:
        while not self._stop.wait(0.5):
            for sock in self.tricklers:
                with contextlib.suppress(OSError):
                    sock.send(b"x")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.socks:
            sock.close()


def latency(url: str, samples: int) -> dict[str, float]:
    """p50/p99/max (ms) of POST /update on one kept-alive connection, 500 slow clients around."""
    parts = urlsplit(url)
    slow = SlowClients(url, SLOW)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    times: list[float] = []
    try:
        for i in range(samples + 20):
            body = json.dumps({"event": "update", "server": _SERVERS[i % 1000], "status": "ready"})
            headers["X-Lightd-Event-Id"] = str(uuid.uuid4())
            started = time.perf_counter()
            conn.request("POST", "/update", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            took = time.perf_counter() - started
            if response.status != 200:
                raise RuntimeError(f"POST /update answered {response.status}")
            if i >= 20:  # the first ones warm up
                times.append(took * 1000)
    finally:
        conn.close()
        slow.close()
    times.sort()
    return {
        "p50_ms": times[len(times) // 2],
        "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))],
        "max_ms": times[-1],
    }


def batches(url: str, updates: int, size: int = 500, connections: int = 4) -> float:
    """Updates per second stored through POST /updates, *size* a batch, over *connections*."""
    parts = urlsplit(url)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    bodies = []
    for start in range(0, updates, size):
        items = [
            {"event": "update", "server": _SERVERS[i % 1000] + f"-{i // 1000}",
             "status": ("installing", "ready")[i & 1], "event_id": str(uuid.uuid4())}
            for i in range(start, min(updates, start + size))
        ]  # fmt: skip
        bodies.append(json.dumps({"updates": items}).encode())
    work: queue.Queue[bytes] = queue.Queue()
    for body in bodies:
        work.put(body)
    failures: list[str] = []

    def sender() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        try:
            while True:
                try:
                    body = work.get_nowait()
                except queue.Empty:
                    return
                conn.request("POST", "/updates", body=body, headers=headers)
                response = conn.getresponse()
                answer = response.read()
                if response.status != 200 or json.loads(answer) != {"success": True}:
                    failures.append(f"{response.status} {answer[:200]!r}")
                    return
        finally:
            conn.close()

    threads = [
        threading.Thread(target=sender, name=f"bench-batch-{n}", daemon=True)
        for n in range(connections)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    seconds = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"POST /updates failed: {failures[0]}")
    return updates / seconds


def measure(
    name: str, urls: list[str], p: dict[str, Any], db: Optional[str] = None
) -> dict[str, Any]:
    """Single updates against *urls*; then, with *db*, batches against a receiver on it."""
    rates = [drive(urls, p["updates"]) for _ in range(p["repeats"])]
    row: dict[str, Any] = {"name": name, "updates_per_s": max(rates), "runs": rates}
    row.update(latency(urls[0], p["samples"]))
    if db is not None:  # the batch extension is the receiver's
        server = receiver(db, batches=True)
        try:
            runs = [batches(server.url, p["batch"]) for _ in range(p["repeats"])]
        finally:
            server.stop()
        row["batch_updates_per_s"] = max(runs)
    batch = row.get("batch_updates_per_s")
    print(
        f"  {name:<32} {row['updates_per_s']:>8,.0f}/s   p50 {row['p50_ms']:6.2f} ms"
        f"   p99 {row['p99_ms']:6.2f} ms"
        + ("" if batch is None else f"   batches {batch:>8,.0f}/s"),
        flush=True,
    )
    return row


def run(p: dict[str, Any]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="lightd-bench-") as tmp:
        node = express()
        try:
            rows.append(measure("Express.js, in memory", [node.url], p))
        finally:
            node.stop()
        path = str(Path(tmp) / "fleet.sqlite3")
        one = receiver(path)
        try:
            rows.append(measure("receiver, SQLite", [one.url], p, db=path))
        finally:
            one.stop()
        url = postgres_url()
        if url is None:
            skipped.append("PostgreSQL: set LIGHTD_BENCH_POSTGRES_URL (.ci/postgres start)")
        else:
            with fresh_schema(url) as db:
                one = receiver(db)
                try:
                    rows.append(measure("receiver, PostgreSQL", [one.url], p, db=db))
                finally:
                    one.stop()
            with fresh_schema(url) as db:
                pair = [receiver(db), receiver(db)]
                try:
                    rows.append(measure("2 receivers, one PostgreSQL", [s.url for s in pair], p))
                finally:
                    for server in pair:
                        server.stop()
    base = rows[0]
    for row in rows:
        row["throughput_ratio"] = row["updates_per_s"] / base["updates_per_s"]
        row["p99_ratio"] = row["p99_ms"] / base["p99_ms"]
    return {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "params": p,
        "rows": rows,
        "skipped": skipped,
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        "| remote | updates/s | vs Express | p50 | p99 | p99 vs Express | batches, updates/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        batch = row.get("batch_updates_per_s")
        lines.append(
            f"| {row['name']} | {row['updates_per_s']:,.0f} | {row['throughput_ratio']:.2f}x"
            f" | {row['p50_ms']:.2f} ms | {row['p99_ms']:.2f} ms | {row['p99_ratio']:.2f}x"
            f" | {'—' if batch is None else f'{batch:,.0f}'} |"
        )
    return "\n".join(lines)


FULL = {"updates": 20_000, "repeats": 3, "samples": 2000, "batch": 50_000}
QUICK = {"updates": 400, "repeats": 1, "samples": 50, "batch": 2000}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, to see it runs")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON to PATH")
    args = parser.parse_args(argv)
    print("receiver under load (SyncEngines on loopback; 500 slow clients for latency):")
    result = run(QUICK if args.quick else FULL)
    print()
    print(table(result))
    for note in result["skipped"]:
        print(f"skipped: {note}")
    if args.json:  # beside run.py's figures when tox passes both the same path
        path = Path(args.json)
        path = path.with_name(f"{path.stem}-receiver{path.suffix or '.json'}")
        path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"figures written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
