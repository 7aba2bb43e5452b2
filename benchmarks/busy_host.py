"""
One sender beside a busy host thread, in this (fresh) process: ``python busy_host.py PARAMS_JSON``.

``starvation.py`` starts one such process per (round, rate, sender) and reads
the line ``RESULT <json>`` it prints. The process runs, in order:

1. the **host**: a daemon thread of pure-Python work, counted in work units,
   running from the start to the end;
2. the sender, started, warmed up (``warm`` updates delivered), idle;
3. **solo window 1** (``window`` s): the host alone;
4. **measured window** (``window`` s): a producer thread offers ``rate``
   updates/s to the sender (paced on the clock: when it wakes up late, it
   sends every update that is due at once, so the offer is exact);
5. **drain** (at most ``drain`` s): no new update, until all are delivered;
6. the sender closed; **solo window 2** (``window`` s): the host alone.
"""

from __future__ import annotations

import http.client
import json
import queue
import sys
import threading
import time
import uuid
from typing import Any, Callable
from urllib.parse import urlsplit

from common import STATUSES, base_headers, encode, engine_config, server_ids, summary_ns

__all__ = ["SENDERS", "main", "run"]

#: Distinct servers offered in turn: no update supersedes another within a window.
_SERVERS = server_ids(10_000, "busy")


class Host:
    """The embedding daemon's busy thread: pure-Python dict and integer work, counted in units."""

    def __init__(self) -> None:
        self.units = 0  # written by the host thread only
        self._stop = False
        self.thread = threading.Thread(target=self._run, name="bench-host", daemon=True)

    def _run(self) -> None:
        table: dict[int, int] = {}
        while not self._stop:
            for i in range(32):  # one work unit: 32 small dict and integer operations
                table[i & 15] = (table.get(i & 7, 0) + i * 7) % 1009
            self.units += 1

    def stop(self) -> None:
        self._stop = True
        self.thread.join(5)


# -- the senders: start(), submit(server, status) -> bool, delivered(), close(t) -----


class FloorSender:
    """No network: ``queue.Queue(1000).put_nowait``, a consumer thread that only counts."""

    def __init__(self, url: str) -> None:
        self.q: queue.Queue[Any] = queue.Queue(1000)
        self.count = 0
        self.thread = threading.Thread(target=self._run, name="bench-floor", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        get = self.q.get
        while get() is not None:
            self.count += 1

    def submit(self, server: str, status: str) -> bool:
        try:
            self.q.put_nowait((server, status))
        except queue.Full:
            return False
        return True

    def delivered(self) -> int:
        return self.count

    def close(self, timeout: float) -> None:
        self.q.put(None, timeout=timeout)
        self.thread.join(timeout)


class EngineSender:
    """lightd_sync's ``SyncEngine`` with the default config (4 workers, queue 1000), http."""

    def __init__(self, url: str) -> None:
        from lightd_sync import SyncEngine

        self.engine = SyncEngine(engine_config(url))
        self.submit = self.engine.update  # type: ignore[assignment]

    def start(self) -> None:
        pass

    def submit(self, server: str, status: str) -> bool:  # replaced per instance
        raise NotImplementedError

    def delivered(self) -> int:
        return int(self.engine.stats().delivered)

    def close(self, timeout: float) -> None:
        self.engine.close(timeout=timeout)


class _Posting:
    """What the hand-written senders share: one ``POST /update`` on an ``HTTPConnection``."""

    def __init__(self, url: str, connections: int) -> None:
        parts = urlsplit(url)
        self.path = parts.path + "/update"
        self.base = base_headers()
        self.conns = [
            http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
            for _ in range(connections)
        ]
        self.counts = [0] * connections  # each slot written by one thread only
        self.errors = [0] * connections

    def post(self, k: int, server: str, status: str) -> None:
        headers = dict(self.base)
        headers["X-Lightd-Event-Id"] = str(uuid.uuid4())
        conn = self.conns[k]
        try:
            conn.request("POST", self.path, encode(server, status), headers)
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            self.errors[k] += 1
            return
        if response.status == 200:
            self.counts[k] += 1
        else:
            self.errors[k] += 1

    def delivered(self) -> int:
        return sum(self.counts)

    def close_connections(self) -> None:
        for conn in self.conns:
            conn.close()


class HttpClientSender(_Posting):
    """The floor: one thread, one kept-alive ``http.client`` connection, a ``SimpleQueue``."""

    def __init__(self, url: str) -> None:
        super().__init__(url, 1)
        self.q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="bench-http-client", daemon=True)
        self.submit = self._put  # type: ignore[assignment]

    def _put(self, server: str, status: str) -> bool:
        self.q.put((server, status))
        return True

    def submit(self, server: str, status: str) -> bool:  # replaced per instance
        raise NotImplementedError

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        get, post = self.q.get, self.post
        while True:
            item = get()
            if item is None:
                return
            post(0, *item)

    def close(self, timeout: float) -> None:
        self.q.put(None)
        self.thread.join(timeout)
        self.close_connections()


class SentrySender(_Posting):
    """sentry-sdk's ``BackgroundWorker`` x 4 (default queue size each), a POST per job."""

    WORKERS = 4

    def __init__(self, url: str) -> None:
        from sentry_sdk.worker import BackgroundWorker

        super().__init__(url, self.WORKERS)
        self.workers = [BackgroundWorker() for _ in range(self.WORKERS)]

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def submit(self, server: str, status: str) -> bool:
        k = hash(server) % self.WORKERS  # per-server order, as the engine's lanes keep it
        post = self.post
        return bool(self.workers[k].submit(lambda: post(k, server, status)))

    def close(self, timeout: float) -> None:
        for worker in self.workers:
            worker.flush(timeout / self.WORKERS)
            worker.kill()
        self.close_connections()


class RequestsSender:
    """``ThreadPoolExecutor(4)`` + ``requests.Session.post`` (an unbounded queue)."""

    def __init__(self, url: str) -> None:
        from concurrent.futures import ThreadPoolExecutor

        import requests

        self.session = requests.Session()
        self.executor = ThreadPoolExecutor(4, thread_name_prefix="bench-requests")
        self.target, self.base = url + "/update", base_headers()
        self.counts: list[int] = []  # list.append is atomic

    def start(self) -> None:
        pass

    def _post(self, server: str, status: str) -> None:
        headers = dict(self.base)
        headers["X-Lightd-Event-Id"] = str(uuid.uuid4())
        answer = self.session.post(
            self.target, data=encode(server, status), headers=headers, timeout=10
        )
        if answer.status_code == 200:
            self.counts.append(1)

    def submit(self, server: str, status: str) -> bool:
        self.executor.submit(self._post, server, status)
        return True

    def delivered(self) -> int:
        return len(self.counts)

    def close(self, timeout: float) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.session.close()


def _prototype(kind: str, lanes: int) -> Callable[[str], Any]:
    def make(url: str) -> Any:
        import pipelined

        cls = pipelined.PipelinedSender if kind == "pipelined" else pipelined.DrainSender
        return cls(url, lanes=lanes)

    return make


SENDERS: dict[str, Callable[[str], Any]] = {
    "floor_queue": FloorSender,
    "lightd_sync": EngineSender,
    "http_client": HttpClientSender,
    "sentry_sdk": SentrySender,
    "requests": RequestsSender,
    "proto_drain": _prototype("drain", 1),
    "proto_pipelined_1": _prototype("pipelined", 1),
    "proto_pipelined_4": _prototype("pipelined", 4),
}


# -- the run -----------------------------------------------------------------------


class Producer:
    """Offers ``rate`` updates/s to *submit*, each call timed; stops at ``total`` offered."""

    def __init__(self, submit: Callable[[str, str], bool], rate: float, total: int) -> None:
        self.submit, self.rate, self.total = submit, rate, total
        self.offered = self.refused = 0
        self.samples: list[int] = []
        self.thread = threading.Thread(target=self._run, name="bench-producer", daemon=True)

    def _run(self) -> None:
        submit, samples, clock, now = (
            self.submit,
            self.samples,
            time.perf_counter_ns,
            time.monotonic,
        )
        t0, i = now(), 0
        while i < self.total:
            due = min(self.total, int((now() - t0) * self.rate) + 1)
            while i < due:
                server, status = _SERVERS[i % 10_000], STATUSES[(i // 10_000) & 1]
                start = clock()
                ok = submit(server, status)
                samples.append(clock() - start)
                self.refused += not ok
                i += 1
            self.offered = i
            time.sleep(max(0.0, t0 + due / self.rate - now()))


def _sample(host: Host) -> tuple[float, int, float]:
    return time.monotonic(), host.units, time.process_time()


def _span(a: tuple[float, int, float], b: tuple[float, int, float]) -> dict[str, float]:
    return {"seconds": b[0] - a[0], "units": b[1] - a[1], "cpu": b[2] - a[2]}


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def run(p: dict[str, Any]) -> dict[str, Any]:
    """One sender, one rate: the four spans' figures (see the module's docstring)."""
    window, rate, drain = float(p["window"]), float(p["rate"]), float(p["drain"])
    host = Host()
    host.thread.start()
    sender = SENDERS[p["sender"]](p["url"])
    sender.start()
    try:
        for i in range(int(p["warm"])):
            sender.submit(f"warm-{i}", "ready")
        if not _wait(lambda: sender.delivered() >= int(p["warm"]), 10):
            raise RuntimeError(f"warm-up not delivered: {sender.delivered()} of {p['warm']}")
        warm = sender.delivered()
        s0 = _sample(host)
        time.sleep(window)
        s1 = _sample(host)
        total = int(rate * window)
        producer = Producer(sender.submit, rate, total)
        producer.thread.start()
        time.sleep(window)
        s2 = _sample(host)
        in_window = sender.delivered() - warm
        offered_in_window = producer.offered
        producer.thread.join(drain)
        _wait(lambda: sender.delivered() - warm >= total - producer.refused, drain)
        s3 = _sample(host)
        after_drain = sender.delivered() - warm
        extra = sender.stats() if hasattr(sender, "stats") else {}
    finally:
        sender.close(2.0)
    at_close = sender.delivered() - warm  # what gil_profile.py divides its counts by
    s4 = _sample(host)
    time.sleep(window)
    s5 = _sample(host)
    host.stop()
    return {
        "sender": p["sender"],
        "rate": rate,
        "offered": total,
        "offered_in_window": offered_in_window,
        "producer_done": not producer.thread.is_alive(),
        "refused": producer.refused,
        "delivered_in_window": in_window,
        "delivered_after_drain": after_drain,
        "delivered_at_close": at_close,
        "solo_1": _span(s0, s1),
        "measured": _span(s1, s2),
        "drain": _span(s2, s3),
        "solo_2": _span(s4, s5),
        "submit": summary_ns(producer.samples),
        "switch_interval": sys.getswitchinterval(),
        "extra": extra,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: busy_host.py PARAMS_JSON", file=sys.stderr)
        return 2
    result = run(json.loads(argv[1]))
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
