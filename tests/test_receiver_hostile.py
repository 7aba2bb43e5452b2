"""
Hostile clients against the receiver as users run it (``lightd-sync receiver``, a subprocess).

500 connections held open, idle or trickling a header byte at a time, must not
slow a well-behaved client past 1 s an answer, grow the server's memory
without bound, or make it spin; running out of file descriptors must be
survived. CPU and memory are read from /proc (Linux only).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator

import pytest

from .conftest import TOKEN
from .receivers import Process, receiver

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

HOSTILE = 500
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def cpu_share(pid: int, seconds: float) -> float:
    """The share of one core the process used over the next *seconds*."""
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    threading.Event().wait(seconds)  # a measuring window, not a wait for a condition
    return (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)


def address(proc: Process) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(proc.url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def timed_request(addr: tuple[str, int], method: str, path: str) -> tuple[int, float]:
    body = None
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if method == "POST":
        body = json.dumps({"event": "update", "server": "good-node", "status": "ready"})
        headers["Content-Type"] = "application/json"
    started = time.monotonic()
    conn = http.client.HTTPConnection(*addr, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    finally:
        conn.close()


class Tricklers:
    """Connections that send a request line, then one header byte per round, never finishing."""

    def __init__(self, addr: tuple[str, int], count: int, interval: float) -> None:
        self.socks = [socket.create_connection(addr, timeout=5) for _ in range(count)]
        for sock in self.socks:
            sock.sendall(b"POST /update HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            sock.setblocking(False)
        self.cut: set[int] = set()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-tricklers", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            for i, sock in enumerate(self.socks):
                if i in self.cut:
                    continue
                try:
                    if sock.recv(1) == b"":
                        self.cut.add(i)
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    self.cut.add(i)
                    continue
                with contextlib.suppress(BlockingIOError):
                    try:
                        sock.send(b"x")
                    except OSError:
                        self.cut.add(i)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock in self.socks:
            sock.close()


@pytest.fixture
def served() -> Iterator[Process]:
    with receiver(
        "--no-audit", "--rate", "100000", "--burst", "100000", "--request-timeout", "1"
    ) as proc:
        yield proc


def test_500_slow_clients_neither_block_nor_spin_nor_grow_the_receiver(served: Process) -> None:
    pid, addr = served.proc.pid, address(served)
    assert timed_request(addr, "GET", "/health")[0] == 200
    baseline = rss_bytes(pid)
    idle = [socket.create_connection(addr, timeout=5) for _ in range(HOSTILE // 2)]
    tricklers = Tricklers(addr, HOSTILE - len(idle), interval=0.25)
    try:
        slowest = 0.0
        for i in range(40):
            status, took = timed_request(
                addr, "POST" if i % 2 else "GET", "/update" if i % 2 else "/health"
            )
            assert status == 200
            slowest = max(slowest, took)
        assert slowest < 1.0, f"a well-behaved request took {slowest:.3f} s"
        share = cpu_share(pid, 1.0)
        print(f"MEASURED slow-clients cpu={share:.3f} slowest={slowest:.3f}")
        assert share < 0.5, f"the receiver used {share:.0%} of a core with only slow clients"
        grown = rss_bytes(pid) - baseline
        print(f"MEASURED slow-clients rss-growth={grown / 2**20:.1f} MiB")
        assert grown < 64 * 2**20, f"memory grew by {grown / 2**20:.1f} MiB"
        # Every trickler is cut once its request has taken --request-timeout (1 s).
        deadline = time.monotonic() + 10
        while len(tricklers.cut) < len(tricklers.socks) and time.monotonic() < deadline:
            threading.Event().wait(0.1)
        assert len(tricklers.cut) == len(tricklers.socks)
        assert timed_request(addr, "GET", "/health")[0] == 200
    finally:
        tricklers.close()
        for sock in idle:
            sock.close()
    assert TOKEN not in served.text()


def low_fd_limit() -> None:  # runs in the child between fork and exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (96, 96))


def test_running_out_of_descriptors_is_logged_backed_off_and_survived() -> None:
    with receiver(
        "--no-audit", "--rate", "100000", "--burst", "100000", preexec_fn=low_fd_limit
    ) as proc:
        pid, addr = proc.proc.pid, address(proc)
        assert timed_request(addr, "GET", "/health")[0] == 200
        hogs = [socket.create_connection(addr, timeout=5) for _ in range(150)]  # > 96
        try:
            proc.wait_for("cannot accept connections", timeout=10)
            share = cpu_share(pid, 1.0)
            print(f"MEASURED emfile cpu={share:.3f}")
            assert share < 0.15, f"the receiver used {share:.0%} of a core while out of descriptors"
        finally:
            for sock in hogs:
                sock.close()
        started = time.monotonic()
        status, _took = timed_request(addr, "GET", "/health")  # served again
        assert status == 200
        assert time.monotonic() - started < 5
        proc.wait_for("accepting connections on port .* again", timeout=10)
    assert proc.proc.returncode == 0, proc.text()
