"""Receivers run as users run them: ``lightd-sync receiver`` (or gunicorn) in a subprocess."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any, Callable, Optional

from .conftest import TOKEN

# One opener for every request: no proxy from the environment. Python 3.12+
# loads the system's CA certificates whenever an opener is built (28 ms here).
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

ROOT = Path(__file__).resolve().parent.parent


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTD_REMOTE_")}
    env.update(PYTHONIOENCODING="utf-8", PYTHONUNBUFFERED="1", LIGHTD_REMOTE_TOKEN=TOKEN)
    env.update(extra)
    return env


class Process:
    """A server subprocess; its stdout and stderr lines are read as they come."""

    def __init__(
        self,
        argv: list[str],
        *,
        env: Optional[dict[str, str]] = None,
        ready: str = r"listening on (http://[\d.:\[\]]+)",
        preexec_fn: Optional[Callable[[], Any]] = None,
        timeout: float = 20.0,
    ) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env=env or child_env(),
            cwd=str(ROOT),
            preexec_fn=preexec_fn,  # noqa: PLW1509 - only setrlimit, before exec
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(pipe,), name="test-reader", daemon=True)
            for pipe in (self.proc.stdout, self.proc.stderr)
        ]
        for reader in self._readers:
            reader.start()
        try:
            line = self.wait_for(ready, timeout)
        except BaseException:
            self.stop()
            raise
        found = re.search(ready, line)
        assert found is not None
        self.url = found.group(1).rstrip("/")

    def _read(self, pipe: Optional[IO[str]]) -> None:
        assert pipe is not None
        for line in pipe:
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (self.proc.poll() is not None and self.lines.empty()):
                raise AssertionError(f"no line matching {pattern!r}; got:\n{self.text()}")
            try:
                line = self.lines.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            self.output.append(line)
            if re.search(pattern, line):
                return line

    def text(self) -> str:
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return "".join(self.output)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait(5)
        for reader in self._readers:
            reader.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        self.text()
        return code

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def receiver(*args: str, env: Optional[dict[str, str]] = None, **kw: Any) -> Process:
    argv = [sys.executable, "-m", "lightd_sync", "receiver", "--port", "0", *args]
    return Process(argv, env=env, **kw)


def call(
    url: str, method: str = "GET", body: Any = None, headers: Optional[dict[str, str]] = None
) -> tuple[int, Any]:
    """One request with the token; (status, decoded JSON body)."""
    data = None if body is None else json.dumps(body).encode()
    sent = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    sent.update(headers or {})
    request = urllib.request.Request(url, data=data, method=method, headers=sent)
    try:
        with OPENER.open(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read() or b"null")
