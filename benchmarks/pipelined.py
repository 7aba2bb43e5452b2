"""
Prototypes of the two delivery designs of issue 15, as standalone senders (no lightd_sync code).

- :class:`DrainSender`: one lane thread; each wake-up drains up to ``depth``
  queued updates, then sends them one at a time on one kept-alive
  ``http.client.HTTPConnection`` (fewer queue wake-ups, the same socket calls).
- :class:`PipelinedSender`: ``lanes`` lane threads (updates routed by server,
  so per-server order holds); each wake-up drains up to ``depth`` queued
  updates, writes their requests with **one** ``sendall`` on a raw kept-alive
  socket (HTTP/1.1 pipelining) and reads the answers with large ``recv`` calls
  and a minimal parser (status line, ``Content-Length``).

They exist to measure how many GIL round trips per update each design needs
beside a busy host thread; they handle no error beyond counting it (a real
engine must re-send what a broken connection did not answer, and fall back to
one request at a time for a remote that does not pipeline).
"""

from __future__ import annotations

import http.client
import queue
import re
import socket
import threading
import uuid
from typing import Any, Optional
from urllib.parse import urlsplit

from common import base_headers, encode

__all__ = ["DrainSender", "PipelinedSender", "parse_answers"]

_STOP: Any = object()
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


class _Lanes:
    """``lanes`` daemon threads, each fed by its own ``queue.SimpleQueue`` (unbounded)."""

    def __init__(self, url: str, lanes: int, depth: int, name: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = parts.path + "/update"
        self.depth = depth
        self.queues: list[queue.SimpleQueue[Any]] = [queue.SimpleQueue() for _ in range(lanes)]
        self.counts = [0] * lanes  # delivered per lane; each slot written by its lane only
        self.errors = [0] * lanes
        self.wakeups = [0] * lanes  # batches taken from the queue
        self.threads = [
            threading.Thread(target=self._run, args=(k,), name=f"{name}-{k}", daemon=True)
            for k in range(lanes)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def submit(self, server: str, status: str) -> bool:
        self.queues[hash(server) % len(self.queues)].put((server, status))
        return True

    def delivered(self) -> int:
        return sum(self.counts)

    def stats(self) -> dict[str, Any]:
        batches = sum(self.wakeups)
        return {
            "errors": sum(self.errors),
            "wakeups": batches,
            "mean_batch": round(self.delivered() / batches, 2) if batches else 0,
        }

    def close(self, timeout: float) -> None:
        for q in self.queues:
            q.put(_STOP)
        for thread in self.threads:
            thread.join(timeout / len(self.threads))

    def _take(self, q: queue.SimpleQueue[Any]) -> Optional[list[tuple[str, str]]]:
        """Block for one item, then drain up to ``depth`` in all; None when told to stop."""
        first = q.get()
        if first is _STOP:
            return None
        batch = [first]
        get = q.get_nowait
        while len(batch) < self.depth:
            try:
                item = get()
            except queue.Empty:
                break
            if item is _STOP:
                q.put(_STOP)  # seen again after this batch
                break
            batch.append(item)
        return batch

    def _run(self, k: int) -> None:
        raise NotImplementedError


class DrainSender(_Lanes):
    """Design (1): drain several updates per wake-up, one request at a time (http.client)."""

    def __init__(self, url: str, lanes: int = 1, depth: int = 64) -> None:
        super().__init__(url, lanes, depth, "bench-drain")

    def _run(self, k: int) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        base = base_headers()
        q = self.queues[k]
        try:
            while True:
                batch = self._take(q)
                if batch is None:
                    return
                self.wakeups[k] += 1
                for server, status in batch:
                    headers = dict(base)
                    headers["X-Lightd-Event-Id"] = str(uuid.uuid4())
                    try:
                        conn.request("POST", self.path, encode(server, status), headers)
                        response = conn.getresponse()
                        response.read()
                    except (OSError, http.client.HTTPException):
                        conn.close()
                        self.errors[k] += 1
                        continue
                    if response.status == 200:
                        self.counts[k] += 1
                    else:
                        self.errors[k] += 1
        finally:
            conn.close()


class PipelinedSender(_Lanes):
    """Design (2): drain up to ``depth`` updates, one ``sendall`` of their requests, large reads."""

    def __init__(self, url: str, lanes: int = 1, depth: int = 64) -> None:
        super().__init__(url, lanes, depth, "bench-pipelined")
        head = [f"POST {self.path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        head += [f"{name}: {value}" for name, value in base_headers().items()]
        # The request up to the event id; the id and Content-Length are per request.
        self.prefix = ("\r\n".join(head) + "\r\nX-Lightd-Event-Id: ").encode("latin-1")

    def _request(self, server: str, status: str) -> bytes:
        body = encode(server, status)
        return b"%s%s\r\nContent-Length: %d\r\n\r\n%s" % (
            self.prefix,
            str(uuid.uuid4()).encode("ascii"),
            len(body),
            body,
        )

    def _run(self, k: int) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        q = self.queues[k]
        buf = b""
        try:
            while True:
                batch = self._take(q)
                if batch is None:
                    return
                self.wakeups[k] += 1
                sock.sendall(b"".join([self._request(s, st) for s, st in batch]))
                wanted, ok, buf = len(batch), 0, b""
                while wanted:
                    data = sock.recv(262144)
                    if not data:
                        raise ConnectionError("the remote closed a pipelined connection")
                    buf += data
                    answered, good, buf = parse_answers(buf, wanted)
                    wanted -= answered
                    ok += good
                self.counts[k] += ok
                self.errors[k] += len(batch) - ok
        except OSError:
            self.errors[k] += 1
        finally:
            sock.close()


def parse_answers(buf: bytes, wanted: int) -> tuple[int, int, bytes]:
    """(complete answers, of which 200, the rest of *buf*): at most *wanted* answers."""
    answered = good = pos = 0
    while answered < wanted:
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        match = _CONTENT_LENGTH.search(buf, pos, end + 2)
        stop = end + 4 + (int(match.group(1)) if match else 0)
        if stop > len(buf):
            break
        answered += 1
        good += buf[pos + 9 : pos + 12] == b"200"
        pos = stop
    return answered, good, buf[pos:]
