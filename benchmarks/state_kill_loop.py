"""
Kill -9 during an outage, then restart with the remote up: does the remote converge?

``python benchmarks/state_kill_loop.py [--runs 100] [--servers 50]``

Each run starts a producer process whose ``SyncEngine`` has ``state_path``
set and a remote that refuses connections. The producer sets every server to
round ``r`` (an error update whose message is ``r``), round after round, and
prints when each round was accepted. At a random moment the run kills it
with ``SIGKILL``; then a second process starts an engine on the same file
with a live remote on 127.0.0.1 and waits until every server's latest status
arrived. A run passes when every server reached at least the last round that
was accepted more than ``WINDOW`` seconds before the kill: the documented
window (``flush_interval`` plus one write, see docs/state.md), with a write
allowed to take up to 0.4 s on a busy shared machine.

Exit status 0 when every run passed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "lightd_ad2f7fc49ed640429c450e14ed07c8d5"
WINDOW = 0.1 + 0.4

PRODUCER = """
import sys, time
from lightd_sync import RemoteConfig, SyncEngine
url, path, servers = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = RemoteConfig(enabled=True, url=url, token=TOKEN, state_path=path, retries=0,
                      health_interval=60, queue_size=100000)
engine = SyncEngine(config)
r = 0
while True:
    r += 1
    for i in range(servers):
        engine.error(f"s{i}", str(r))
    print(r, time.monotonic(), flush=True)
    time.sleep(0.01)
""".replace("TOKEN", repr(TOKEN))

RESTART = """
import sys, time
from lightd_sync import RemoteConfig, SyncEngine
from lightd_sync._engine.state_file import summary
url, path = sys.argv[1], sys.argv[2]
config = RemoteConfig(enabled=True, url=url, token=TOKEN, state_path=path, health_interval=0.2)
with SyncEngine(config) as engine:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if engine.health.healthy and engine.flush(0.5) and summary(path)[1] == 0:
            break
    print(engine.stats().resynced, flush=True)
""".replace("TOKEN", repr(TOKEN))


class Remote:
    """A live remote on 127.0.0.1 that keeps each server's latest error message."""

    def __init__(self) -> None:
        self.latest: dict[str, str] = {}
        self.lock = threading.Lock()  # guards latest
        remote = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._answer(b'{"status": 200, "endpoint": "active"}')

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with remote.lock:
                    remote.latest[body["server"]] = body.get("data", "")
                self._answer(b'{"success": true}')

            def _answer(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def one_run(servers: int, rng: random.Random) -> dict[str, Any]:
    folder = tempfile.mkdtemp(prefix="lightd-kill-")
    path = os.path.join(folder, "state.db")
    proc = subprocess.Popen(
        [sys.executable, "-c", PRODUCER, refused_url(), path, str(servers)],
        stdout=subprocess.PIPE,
        text=True,
    )
    rounds: list[tuple[int, float]] = []
    assert proc.stdout is not None
    kill_after = rng.uniform(0.3, 2.0)
    started = time.monotonic()

    def read_rounds() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            parts = line.split()
            if len(parts) == 2:  # the last line may be cut by the kill
                rounds.append((int(parts[0]), float(parts[1])))

    reader = threading.Thread(target=read_rounds, daemon=True)
    reader.start()
    while time.monotonic() - started < kill_after:
        time.sleep(0.01)
    killed_at = time.monotonic()
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    reader.join(5)
    safe = [r for r, t in rounds if t < killed_at - WINDOW]
    must = max(safe) if safe else 0
    remote = Remote()
    try:
        restart = subprocess.run(
            [sys.executable, "-c", RESTART, remote.url, path],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        with remote.lock:
            got = {s: int(v) for s, v in remote.latest.items()}
    finally:
        remote.stop()
    behind = [s for s in (f"s{i}" for i in range(servers)) if got.get(s, 0) < must]
    return {
        "killed_after_s": round(kill_after, 3),
        "rounds_accepted": len(rounds),
        "must_have_round": must,
        "servers_behind": len(behind),
        "restart_ok": restart.returncode == 0,
        "ok": not behind and restart.returncode == 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--servers", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    results = [one_run(args.servers, rng) for _ in range(args.runs)]
    failed = [r for r in results if not r["ok"]]
    print(
        json.dumps(
            {
                "runs": len(results),
                "passed": len(results) - len(failed),
                "failed": failed[:5],
                "window_s": WINDOW,
            },
            indent=2,
        )
    )
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
