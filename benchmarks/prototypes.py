"""
Prototypes of the fixes proposed in docs/performance.md, and the A/B runs that measured them.

Not part of ``run.py``: these subclass the engine and use private names of
lightd_sync (``_model``, ``_transports.protocol``, engine fields), so they may
break when the engine changes; they exist so that the figures quoted in the
docs can be reproduced::

    python benchmarks/prototypes.py caller      # update(): as is vs proposed hot path
    PYTHONMALLOC=malloc MALLOC_TRIM_THRESHOLD_=1099511627776 \\
        python benchmarks/prototypes.py caller  # the same without first-touch page faults
    python benchmarks/prototypes.py throughput  # engine + HttpTransport vs one-send lanes

Both start nginx (or the fallback receiver) and a silent remote, like run.py.
"""

from __future__ import annotations

import gc
import http.client
import json
import queue
import statistics
import subprocess
import sys
import threading
import time
from functools import partial
from typing import Any, Optional
from urllib.parse import urlsplit

import measures
import remotes
from common import STATUSES, engine_config, server_ids

from lightd_sync import RemoteUnreachableError, SyncEngine, Transport, Update
from lightd_sync._model import _STATUS_BY_VALUE, check_server_id, parse_status

__all__ = ["HotPathEngine", "LaneLockEngine", "OneSendTransport"]


class HotPathEngine(SyncEngine):
    """
    ``update()`` as proposed: no ``os.getpid()`` per call, one Python frame on the queue path.

    The fork check becomes a field the at-fork hook clears (here: ``_pid is None``
    stands in for it); the drop path is left to the engine as it is.
    """

    def update(self, server: str, status: Any) -> bool:  # type: ignore[override]
        try:
            st = _STATUS_BY_VALUE[status]
        except (KeyError, TypeError):
            st = parse_status(status)
        if type(server) is not str or not 0 < len(server) <= 255 or not server.isprintable():
            check_server_id(server)
        if self._pid is None:
            self._start()
        item = [server, st, None, None, False]
        with self._lock:
            latest = self._latest
            latest[server] = item
            latest.move_to_end(server)
            if len(latest) > self._config.max_servers:
                latest.popitem(last=False)
            if not self._closed and self._pending < self._queue_size:
                self._submitted += 1
                self._pending += 1
                item[4] = True
                self._lanes[hash(server) % self._nlanes].put(item)
                return True
        return self._submit(server, st, None)  # the drop path, unchanged


class LaneLockEngine(HotPathEngine):
    """
    HotPathEngine, and the lanes no longer take the producer's lock to borrow the transport.

    ``_acquire``/``_release`` (the reload's use count of a transport) get a
    lock of their own: a lane then takes the lock ``update()`` needs once per
    delivery (to settle), not three times. (Only the running transport is
    counted here; the real change keeps the retired-transport bookkeeping.)
    """

    def start(self) -> LaneLockEngine:
        self._users_lock = threading.Lock()  # guards _users for the lanes
        super().start()
        return self

    def _acquire(self) -> Any:
        with self._users_lock:
            transport = self._transport
            self._users[id(transport)] = self._users.get(id(transport), 0) + 1
            return transport

    def _release(self, transport: Any) -> None:
        with self._users_lock:
            left = self._users[id(transport)] - 1
            if left:
                self._users[id(transport)] = left
            else:
                del self._users[id(transport)]


class OneSendTransport(Transport):
    """
    A lane hot path that reaches the ``http.client`` floor: one ``sendall`` per request.

    urllib3's ``HTTPConnection`` only connects (where the real transport would
    keep urllib3's TLS and proxy set-up); the request is the header block
    encoded once per transport plus the event id, length and body, written in
    one call; the answer is parsed by ``http.client.HTTPResponse`` directly.
    (http.client and urllib3 write the headers and the body in two calls.)
    Plain http only, no retry of an idle-closed connection: a prototype.
    """

    name = "one-send"

    def __init__(self, config: Any) -> None:
        from lightd_sync._transports.protocol import request_headers

        parts = urlsplit(config.url)
        self._host, self._port = parts.hostname or "", parts.port
        path = parts.path.rstrip("/") + "/update"
        host = f"{self._host}:{self._port}" if self._port else self._host
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{k}: {v}" for k, v in request_headers(config.token, post=True).items()]
        self._head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._timeout = config.timeout
        self._local = threading.local()
        self._conns: list[Any] = []

    def _conn(self) -> Any:
        from urllib3.connection import HTTPConnection

        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._conns.append(conn)
        return conn

    def send(self, update: Update) -> None:
        from lightd_sync._transports.protocol import encode_body, update_verdict

        conn = self._conn()
        body = encode_body(update)
        message = b"".join(
            (
                self._head,
                b"X-Lightd-Event-Id: ",
                str(update.event_id).encode("ascii"),
                b"\r\nContent-Length: ",
                str(len(body)).encode("ascii"),
                b"\r\n\r\n",
                body,
            )
        )
        try:
            if conn.sock is None:
                conn.connect()
            conn.sock.sendall(message)
            response = http.client.HTTPResponse(conn.sock, method="POST")
            response.begin()
            data = response.read()
            if response.will_close:
                conn.close()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise RemoteUnreachableError(f"POST /update: {exc}") from exc
        update_verdict(response.status, data, response.headers)

    def close(self) -> None:
        for conn in self._conns:
            conn.close()


# -- the A/B runs -----------------------------------------------------------------


def ab_caller(calls: int = 100_000, blocks: int = 10) -> None:
    """p99 of update() as is and with the proposed hot path, each against its interleaved floor."""
    fast, _ = remotes.start_fast_remote()
    silent, refused = remotes.SilentRemote().start(), remotes.RefusedPort().start()
    per_block = calls // blocks
    servers = server_ids(100, "caller")
    items = [(servers[i % 100], STATUSES[(i // 100) & 1]) for i in range(per_block)]
    try:
        for name, url in (("fast", fast.url), ("silent", silent.url), ("refused", refused.url)):
            for cls in (SyncEngine, HotPathEngine, LaneLockEngine):
                size = per_block * (blocks + 1) + 1000
                # Grow and free the heap first: under run.PRETOUCH_ENV (glibc malloc keeping
                # what is freed) both engines then run without first-touch page faults.
                junk = [[s, t, None, None, False] for s, t in items * (blocks + 1) * 2]
                del junk
                engine = cls(engine_config(url, queue_size=size))
                engine.start()
                time.sleep(0.1)
                floor_queue: queue.Queue[Any] = queue.Queue(size)
                gc.collect()
                sides = measures._interleaved(
                    blocks,
                    partial(measures._time_engine, engine.update, items),
                    partial(measures._time_put, floor_queue.put_nowait, items),
                )
                engine.close(0.3)
                eng, flo = sides["engine"], sides["floor"]
                print(
                    f"{name:8s} {cls.__name__:14s} median {eng['median_ns']:5d} ns "
                    f"p99 {eng['p99_ns']:6d} ns | floor median {flo['median_ns']:4d} "
                    f"p99 {flo['p99_ns']:5d} | p99 ratio {eng['p99_ns'] / flo['p99_ns']:.2f} "
                    f"| page faults {eng['faults']}/{flo['faults']}, waits "
                    f"{eng['voluntary_cs']}/{flo['voluntary_cs']}",
                    flush=True,
                )
                gc.collect()
    finally:
        for remote in (fast, silent, refused):
            remote.stop()


def _engine_rate(url: str, workers: int, updates: int, one_send: bool) -> float:
    config = engine_config(url, workers=workers, queue_size=updates + 1000)
    engine = SyncEngine(config, transport=OneSendTransport(config) if one_send else None)
    servers = server_ids(1000, "tput")
    pairs = [(servers[i % 1000], STATUSES[(i // 1000) & 1]) for i in range(updates)]
    for server, status in pairs[:300]:
        engine.update(server, status)
    engine.flush(60)
    t0 = time.perf_counter()
    for server, status in pairs[300:]:
        engine.update(server, status)
    drained = engine.flush(120)
    seconds = time.perf_counter() - t0
    stats = engine.stats()
    engine.close(2)
    if not drained or stats.failed:
        raise RuntimeError(f"not delivered: {stats}")
    return (updates - 300) / seconds


def ab_throughput(updates: int = 20_000, repeats: int = 3) -> None:
    """Engine as is, with one-send lanes, and the two floors: interleaved, in subprocesses."""
    fast, _ = remotes.start_fast_remote()
    rates: dict[tuple[int, str], list[float]] = {}
    try:
        for _ in range(repeats):
            for workers in (1, 4):
                for variant in ("engine", "one-send", "urllib3", "http_client"):
                    rate = _rate_in_subprocess(fast.url, workers, updates, variant)
                    rates.setdefault((workers, variant), []).append(rate)
    finally:
        fast.stop()
    for (workers, variant), values in sorted(rates.items()):
        print(
            f"{workers} worker(s) {variant:12s} median {statistics.median(values):7.0f}/s {values}"
        )


def _rate_in_subprocess(url: str, workers: int, updates: int, variant: str) -> float:
    if variant in ("engine", "one-send"):
        args = ["engine-rate", url, str(workers), str(updates), variant]
        cmd = [sys.executable, __file__, *args]
    else:
        params = {"variant": variant, "workers": workers, "updates": updates, "warm": 300}
        params.update(url=url, limit=120)
        cmd = [sys.executable, measures.__file__.replace("measures", "worker"), "throughput"]
        cmd.append(json.dumps(params))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    line = done.stdout.strip().splitlines()[-1]
    return float(json.loads(line.removeprefix("RESULT "))["per_second"])


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["caller"]:
        ab_caller()
    elif args[:1] == ["throughput"]:
        ab_throughput()
    elif args[:1] == ["engine-rate"]:
        url, workers, updates, variant = args[1], int(args[2]), int(args[3]), args[4]
        print(
            json.dumps({"per_second": _engine_rate(url, workers, updates, variant == "one-send")})
        )
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
