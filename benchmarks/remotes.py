"""
The remotes the benchmark talks to, all on 127.0.0.1, all started and stopped here.

- :class:`NginxRemote`: the fast remote (Debian's ``nginx``, a generated config
  in a temporary folder, keep-alive on, access log off) so that the remote is
  never the bottleneck;
- :class:`ReceiverRemote`: the fallback when nginx is absent, lightd_sync's own
  reference receiver (on waitress, in process: much slower, said so in the results);
- :class:`SilentRemote`: accepts connections, reads and discards, never answers;
- :class:`RefusedPort`: a port bound but not listening, so connecting is refused.

Every class has ``url``, ``describe()`` and ``stop()``; ``stop()`` is bounded
in time and safe to call twice.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import http.client
import json
import math
import os
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional, Union

__all__ = [
    "NGINX_INSTALL",
    "TOKEN",
    "NginxRemote",
    "ReceiverRemote",
    "RefusedPort",
    "SilentRemote",
    "find_nginx",
    "install_express",
    "start_fast_remote",
]

#: The token every remote and engine of the benchmark shares.
TOKEN = "lightd_" + "5eb1a7c0de" * 3 + "ab"
#: How to get nginx on Debian or Ubuntu (the benchmark runs without it, slower).
NGINX_INSTALL = "apt-get update && apt-get install -y nginx"
HEALTH_BODY = {"status": 200, "endpoint": "active"}
READY_TIMEOUT = 10.0
#: The Express remote (``server.js``), a baseline for the receiver's benchmark and interop.
EXPRESS = Path(__file__).resolve().parent / "express"

_NGINX_CONF = """\
{user}worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type application/json;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location = /update {{ return 200 '{{"success": true}}'; }}
        location = /health {{ return 200 '{health}'; }}{updates}
    }}
}}
"""


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, timeout: float = READY_TIMEOUT) -> bool:
    """Poll ``GET {url}/health`` until it answers 200 with the expected body."""
    host, port = url.split("//", 1)[1].split(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(host, int(port), timeout=1)
        try:
            conn.request("GET", "/health", headers={"Authorization": f"Bearer {TOKEN}"})
            response = conn.getresponse()
            doc = json.loads(response.read()) if response.status == 200 else None
            if isinstance(doc, dict) and {k: doc.get(k) for k in HEALTH_BODY} == HEALTH_BODY:
                return True
        except (OSError, ValueError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        time.sleep(0.02)
    return False


def find_nginx() -> Optional[str]:
    """The nginx executable, or None: ``PATH`` first, then Debian's ``/usr/sbin/nginx``."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def install_express(npm: str) -> Path:
    """Install Express into :data:`EXPRESS` once, if it is not there yet; return the folder.

    The tests run on several workers, and both the interop test and the receiver's
    benchmark need Express: an exclusive lock on a file beside it makes the second
    caller wait for the first install instead of running ``npm install`` into the
    same folder at the same time.
    """
    with open(EXPRESS / ".install.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (EXPRESS / "node_modules" / "express").is_dir():
            subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--silent"],
                cwd=EXPRESS,
                check=True,
                timeout=300,
                capture_output=True,
            )
    return EXPRESS


def nginx_version(exe: str) -> str:
    """``nginx/1.22.1`` or what ``nginx -v`` said."""
    try:
        done = subprocess.run([exe, "-v"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return (done.stderr or done.stdout).strip().rsplit(": ", 1)[-1]


class NginxRemote:
    """nginx as the fast remote: a subprocess with a generated config, killed in :meth:`stop`."""

    kind = "nginx"

    def __init__(self, exe: str, *, batches: int = 0) -> None:
        self.exe = exe
        #: The batch offer of its health answer (0: none; else batch.max, and POST /updates).
        self.batches = batches
        self.version = nginx_version(exe)
        self._tmp = tempfile.mkdtemp(prefix="lightd-bench-nginx-")
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self.url = ""

    def start(self) -> NginxRemote:
        """Start nginx on a free port (a few tries: the port may be taken meanwhile)."""
        user = "user root;\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
        for _ in range(3):
            port = free_port()
            conf = Path(self._tmp, "nginx.conf")
            health = dict(HEALTH_BODY, batch={"max": self.batches}) if self.batches else HEALTH_BODY
            updates = (
                "\n        location = /updates { return 200 '{\"success\": true}'; }"
                if self.batches
                else ""
            )
            conf.write_text(
                _NGINX_CONF.format(
                    user=user,
                    tmp=self._tmp,
                    port=port,
                    health=json.dumps(health),
                    updates=updates,
                )
            )
            log = open(Path(self._tmp, "stderr.log"), "wb")  # noqa: SIM115 (closed below)
            try:
                self._proc = subprocess.Popen(
                    [self.exe, "-p", self._tmp, "-c", str(conf), "-e", f"{self._tmp}/error.log"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            finally:
                log.close()
            self.url = f"http://127.0.0.1:{port}"
            if wait_healthy(self.url, timeout=5):
                # nginx runs in a session of its own: stop it even if the caller forgets to.
                atexit.register(self.stop)
                return self
            self._kill()
        raise RuntimeError(f"nginx did not start: {self.errors()}")

    def errors(self) -> str:
        """The end of nginx's own error output."""
        text = ""
        for name in ("stderr.log", "error.log"):
            with contextlib.suppress(OSError):
                text += Path(self._tmp, name).read_text(errors="replace")
        return text.strip()[-500:]

    def describe(self) -> str:
        return f"{self.version} (1 worker, keep-alive, access log off) at {self.url}"

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)  # nginx: fast shutdown
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the master and its worker
            proc.wait(3)

    def stop(self) -> None:
        self._kill()
        shutil.rmtree(self._tmp, ignore_errors=True)


class ReceiverRemote:
    """lightd_sync's reference receiver (rate limit off, in memory), the fallback fast remote."""

    kind = "receiver"

    def __init__(self) -> None:
        from lightd_sync import receiver

        self._app = receiver.create_app(TOKEN, rate=math.inf, burst=1_000_000)
        self._server: Any = receiver.serve(self._app, "127.0.0.1", 0)
        self.url = ""

    def start(self) -> ReceiverRemote:
        self._server.start()
        self.url = str(self._server.url).rstrip("/")
        if not wait_healthy(self.url):
            self.stop()
            raise RuntimeError("the built-in receiver did not answer /health")
        return self

    def describe(self) -> str:
        return (
            f"lightd_sync.receiver at {self.url} (waitress, in this process, with SQLite "
            "in memory: the remote, not the client, bounds the throughput)"
        )

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._server.stop(3)
        with contextlib.suppress(Exception):
            self._app.close()


class SilentRemote:
    """Accepts every connection, reads and discards what arrives, never answers."""

    kind = "silent"

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(256)
        self._listener.setblocking(False)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-silent", daemon=True)

    def start(self) -> SilentRemote:
        self._thread.start()
        return self

    def describe(self) -> str:
        return f"silent remote at {self.url} (accepts, never answers)"

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    with contextlib.suppress(OSError):
                        conn, _ = sock.accept()
                        conn.setblocking(False)
                        self._selector.register(conn, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:  # the client left
                    self._selector.unregister(sock)
                    sock.close()
        for key in list(self._selector.get_map().values()):
            with contextlib.suppress(OSError, KeyError):
                self._selector.unregister(key.fileobj)
            with contextlib.suppress(OSError):
                key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(3)
        else:
            self._listener.close()


class RefusedPort:
    """A port held bound but never listening: every connection is refused at once."""

    kind = "refused"

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def start(self) -> RefusedPort:
        return self

    def describe(self) -> str:
        return f"refused port at {self.url}"

    def stop(self) -> None:
        self._sock.close()


FastRemote = Union[NginxRemote, ReceiverRemote]


def start_fast_remote(use_nginx: bool = True, batches: int = 0) -> tuple[FastRemote, str]:
    """
    Start nginx, or the built-in receiver when nginx is absent or fails.

    With *batches*, nginx offers batches of that many updates (a static health body).

    Returns:
        The started remote and a note on why the fallback was used ("" with nginx).
    """
    exe = find_nginx() if use_nginx else None
    note = ""
    if exe is not None:
        remote = NginxRemote(exe, batches=batches)
        try:
            return remote.start(), ""
        except (OSError, RuntimeError) as exc:
            remote.stop()
            note = f"nginx at {exe} failed to start ({exc}); "
    elif use_nginx:
        note = f"nginx not found (install it with `{NGINX_INSTALL}`); "
    else:
        note = "nginx not used (--no-nginx); "
    return ReceiverRemote().start(), note + "falling back to lightd_sync.receiver"
