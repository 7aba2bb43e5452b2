"""
Kill -9 a process that writes a state file, then check what the next start finds.

Run as a script, this is the producer: it feeds a :class:`StateStore` as fast
as it can (update *i* goes to server ``s{i % servers}``, every fourth one is
acknowledged at once) and prints ``durable <i>`` each time a write that
covers update *i* has committed. :func:`kill_run` starts it, SIGKILLs it at a
random moment, reads every line it printed before dying and checks the file.
Shared by tests/test_state.py (20 runs) and benchmarks/state_kill_loop.py (100).
"""

from __future__ import annotations

import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve()
#: Seconds the producer may take to commit its first write (a busy CI machine).
FIRST_WRITE_TIMEOUT = 30.0
STATUSES = ("installing", "ready", "failed")


def update_of(i: int, servers: int) -> tuple[str, str, Optional[str], str]:
    """Update number *i* of the producer: (server, status, data, event_id)."""
    status = STATUSES[i % 3]
    data = f"error {i}" if status == "failed" else None
    return f"s{i % servers}", status, data, f"ev-{i:012d}"


def acked(i: int) -> bool:
    return i % 4 == 0


def produce(path: str, servers: int, flush_interval: float, start: int) -> None:
    from lightd_sync._engine.state import StateStore

    store = StateStore(path, max_servers=servers, flush_interval=flush_interval)
    store.open()
    done = start - 1

    def report() -> None:
        last = start - 1
        while True:
            upto = done  # read before the mark: update `upto` returned before it
            if store.wait_flushed(5.0) and upto != last:
                sys.stdout.write(f"durable {upto}\n")
                sys.stdout.flush()
                last = upto

    threading.Thread(target=report, name="lightd-sync-test-reporter", daemon=True).start()
    i = start
    while True:
        server, status, data, event_id = update_of(i, servers)
        store.accepted(server, status, data, event_id)
        if acked(i):
            store.acknowledged(server, event_id)
        done = i
        i += 1
        if i % 256 == 0:
            time.sleep(0.0002)  # let the reporter and the writer run (sleep(0) may not, on 3.9)


def kill_run(
    path: str, rng: random.Random, servers: int = 50, flush_interval: float = 0.02
) -> dict[str, Any]:
    """
    Start the producer, SIGKILL it after a random delay, check the file; return figures.

    Several runs may share *path*, like the restarts of one daemon: each run
    numbers its updates after the highest one already in the file.
    """
    start = _highest(path) + 1
    proc = subprocess.Popen(
        [sys.executable, str(HERE), path, str(servers), str(flush_interval), str(start)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], FIRST_WRITE_TIMEOUT)
        if not ready:  # never hang the suite: say what the producer was doing
            proc.kill()
            raise AssertionError(
                f"no committed write within {FIRST_WRITE_TIMEOUT:g} s: "
                f"{proc.stderr.read() if proc.stderr else ''}"
            )
        first = proc.stdout.readline()  # the first committed write
        assert first.startswith("durable "), (first, proc.stderr.read() if proc.stderr else "")
        time.sleep(rng.uniform(0.0, 0.15))  # the random moment of the kill: 7 writes' worth
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read()  # what it printed before it died is still in the pipe
    finally:
        proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    marks = [int(line.split()[1]) for line in [first, *rest.splitlines()] if line.strip()]
    durable = marks[-1]  # each line is one write() below PIPE_BUF: whole or absent
    return {"durable": durable - start + 1, **check(path, servers, start, durable)}


def _highest(path: str) -> int:
    if not os.path.exists(path):
        return -1
    conn = sqlite3.connect(path)
    try:
        ids = [r[0] for r in conn.execute("SELECT event_id FROM lightd_sync_state")]
    finally:
        conn.close()
    return max((int(e.split("-")[1]) for e in ids), default=-1)


def check(path: str, servers: int, start: int, durable: int) -> dict[str, Any]:
    """Reopen the file like a restarted daemon; assert nothing up to *durable* is missing."""
    from lightd_sync._engine.state import StateStore

    started = time.monotonic()
    store = StateStore(path, max_servers=servers)
    unacked = store.open()
    opened = time.monotonic() - started
    assert store.active, "the restarted store must be able to use the file"
    store.close(5.0)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        table = {
            server: (status, data, event_id, bool(ack))
            for server, status, data, event_id, ack in conn.execute(
                "SELECT server, status, data, event_id, acked FROM lightd_sync_state"
            )
        }
    finally:
        conn.close()
    newer = 0
    for k in range(servers):
        latest = durable - ((durable - k) % servers)  # the last update of s{k} up to durable
        if latest < start:
            continue  # not updated by this run before the mark
        server = f"s{k}"
        assert server in table, f"{server}: its update {latest} was durable but is missing"
        status, data, event_id, ack = table[server]
        found = int(event_id.split("-")[1])
        assert found >= latest, f"{server}: has update {found}, but {latest} was durable"
        assert found % servers == k
        _, want_status, want_data, _ = update_of(found, servers)
        assert (status, data) == (want_status, want_data)
        if found == latest:
            assert ack == acked(found), f"{server}: update {found} acked={ack}"
        else:
            newer += 1
            assert not ack or acked(found), f"{server}: {found} marked acked but never was"
    want_unacked = {s for s, row in table.items() if not row[3]}
    assert {u.server for u in unacked} == want_unacked
    for u in unacked:
        assert u.event_id == table[u.server][2]
    return {"open_seconds": opened, "rows": len(table), "newer_than_durable": newer}


if __name__ == "__main__":
    produce(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
