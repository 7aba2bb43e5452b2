"""
The steps of ``lightd-sync check``: each one a method of :class:`Doctor`, in order.

A failed step ends the walk when the steps after it could only fail the same
way (no TCP, no TLS; no answer, no token check). The requests go through the
configured transport itself (its proxy, TLS settings and timeouts), so what
check sees is what delivery sees. Printing is the command's
(:mod:`lightd_sync._cli.check`): the doctor hands each step to *on_step*.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import os
import socket
import ssl
import statistics
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional
from urllib.parse import urlsplit

import attrs

from .._secrets import scrub
from .._threads import start_quietly
from ._common import clean

if TYPE_CHECKING:
    from .._config import RemoteConfig
    from .._transports.base import Transport

__all__ = ["FAIL", "OK", "STEPS", "WARN", "Doctor", "Step"]

OK, WARN, FAIL = "ok", "warn", "fail"
#: Every step check may print, in order (tls only for https://).
STEPS = (
    "config",
    "enabled",
    "state",
    "transport",
    "url",
    "proxy",
    "dns",
    "tcp",
    "tls",
    "health",
    "token",
    "latency",
)
_LATENCY_SAMPLES = 3
_SLOW_MS = 1000.0
_AUTH_FIX = (
    "the tokens do not match on both sides: give the remote and this node the same "
    "token (remote.token in config.json, or LIGHTD_REMOTE_TOKEN)"
)
#: How long a probe of the scheme waits: a TLS server answers a hello within a round trip.
_PROBE_WAIT = 2.0
#: OpenSSL's reasons when the answer to a TLS hello is not TLS (plain HTTP, most often).
_NOT_TLS_REASONS = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "HTTP_REQUEST",
        "UNKNOWN_PROTOCOL",
        "PACKET_LENGTH_TOO_LONG",
        "RECORD_LAYER_FAILURE",
        "UNEXPECTED_RECORD",
        "RECORD_TOO_LARGE",
    }
)
_PLAIN_FIX = (
    "the remote seems to serve plain HTTP on this port: use http:// in remote.url if it "
    "is meant to (then the token crosses the network readable), else correct the port of "
    "its HTTPS"
)
_TLS_FIX = "the port speaks TLS: use https:// in remote.url"
_CA_FIX = (
    "the remote needs a certificate valid for {host} from a CA this machine trusts "
    "(for a private CA, set remote.ca_bundle to its PEM file)"
)


@attrs.frozen
class Step:
    """The outcome of one troubleshooting step."""

    name: str
    level: str  # ok, warn or fail
    detail: str
    fix: Optional[str] = None

    @property
    def ok(self) -> bool:
        """False only for a failed step (a warning is not a failure)."""
        return self.level != FAIL

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``name``, ``ok``, ``level``, ``detail``, ``fix``."""
        return {
            "name": self.name,
            "ok": self.ok,
            "level": self.level,
            "detail": self.detail,
            "fix": self.fix,
        }


class Doctor:
    """Runs the steps in order and keeps their outcomes."""

    def __init__(
        self,
        config_path: str,
        timeout: Optional[float],
        on_step: Optional[Callable[[Step], None]],
    ) -> None:
        self.config_path = config_path
        self.timeout_arg = timeout
        self.timeout = timeout or 10.0
        self.on_step = on_step
        self.steps: list[Step] = []
        self.token: Optional[str] = None
        self.unusable_config = False  # exit 2: the config (or the transport it names) is wrong
        self.current = "config"  # the step in progress (what Ctrl-C interrupted)
        self._config: Optional[RemoteConfig] = None
        self._transport: Optional[Transport] = None
        self._proxy: Any = None  # the Proxy the requests go through, once check_proxy() chose

    def add(self, name: str, level: str, detail: str, fix: Optional[str] = None) -> bool:
        """Record (and print) a step; return True if the walk may go on."""
        detail = clean(scrub(detail, self.token))
        step = Step(name, level, detail, clean(scrub(fix, self.token)) if fix else None)
        self.steps.append(step)
        if self.on_step is not None:
            self.on_step(step)
        return level != FAIL

    @property
    def config(self) -> RemoteConfig:
        """The config, once the first step has read it."""
        assert self._config is not None, "check_config() comes first"
        return self._config

    @property
    def transport(self) -> Transport:
        """The transport, once the transport step has built it."""
        assert self._transport is not None, "check_transport() comes first"
        return self._transport

    # -- the steps -----------------------------------------------------------

    def run(self) -> None:
        if not (self.check_config() and self.check_enabled()):
            return
        self.check_state()
        if not self.check_transport():
            return
        if not (self.check_url() and self.check_proxy()):
            return
        host, port = self.first_hop()
        if not (self.check_dns(host, port) and self.check_tcp(host, port)):
            return
        if self.check_health_and_token():
            self.check_latency()

    def check_config(self) -> bool:
        from .._config import ENV_OVERRIDES, load_config
        from .._exceptions import ConfigError

        self.current = "config"
        try:
            self._config = load_config(self.config_path)
        except ConfigError as exc:
            message = str(exc)
            if "cannot read the config file" in message:
                fix = "give the path of Lightd's config.json with --config"
            elif "invalid JSON" in message or "top level" in message:
                fix = "fix the JSON syntax at the place named"
            else:
                fix = "correct the value named (in config.json, or the variable named)"
            self.unusable_config = True
            return self.add("config", FAIL, message, fix)
        self.token = self.config.token
        if self.timeout_arg is None:
            self.timeout = self.config.timeout
        overrides = [var for var in ENV_OVERRIDES if os.environ.get(var)]
        verb = "overrides" if len(overrides) == 1 else "override"
        note = f" ({', '.join(overrides)} {verb} it)" if overrides else ""
        return self.add("config", OK, f"{self.config_path} is valid{note}")

    def check_enabled(self) -> bool:
        self.current = "enabled"
        if self.config.enabled:
            return self.add("enabled", OK, "remote.enabled is true")
        by_env = os.environ.get("LIGHTD_REMOTE_ENABLED")
        why = f"LIGHTD_REMOTE_ENABLED={by_env} turns it off" if by_env else "false or missing"
        return self.add(
            "enabled",
            FAIL,
            f"remote.enabled is {why}: Lightd sends nothing",
            'set "enabled": true in the "remote" object of config.json',
        )

    def check_state(self) -> None:
        """Report the state file (remote.state_path): rows, and how many the remote never acked."""
        import sqlite3

        from .._engine.state_file import summary

        path = self.config.state_path
        if path is None:
            return
        self.current = "state"
        if not os.path.exists(path):
            self.add("state", OK, f"{path}: no file yet (created when the engine starts)")
            return
        try:
            rows, unacked = summary(path)
        except sqlite3.Error as exc:
            self.add(
                "state",
                WARN,
                f"{path}: cannot be read as a state file ({exc})",
                "the engine will log it, move a damaged file aside and keep delivering; "
                "point remote.state_path at a file of its own",
            )
            return
        self.add(
            "state",
            OK,
            f"{path}: {rows} servers, {unacked} not acknowledged by the remote yet",
        )

    def check_transport(self) -> bool:
        """Build the configured transport; go on only if it talks HTTP to remote.url."""
        from .._exceptions import ConfigError
        from .._transports.registry import make_transport

        self.current = "transport"
        name = self.config.transport
        config = attrs.evolve(self.config, timeout=self.timeout, workers=1)
        try:
            with _held_back_warnings():
                self._transport = make_transport(config)
        except ConfigError as exc:
            self.unusable_config = True
            return self.add(
                "transport", FAIL, str(exc), "correct the remote key named in config.json"
            )
        if getattr(self._transport, "talks_http", False):
            return self.add("transport", OK, f"{name}: sends over HTTP to remote.url")
        self.check_other_transport(name)
        return False

    def check_other_transport(self, name: str) -> None:
        from .._exceptions import DeliveryError

        where = f": updates are appended to {self.config.path}" if name == "file" else ""
        try:
            self.transport.check_health()
        except DeliveryError as exc:
            fix = (
                "create the folder of remote.path and make it writable by this user"
                if name == "file"
                else f"look at the documentation of the {name!r} transport"
            )
            self.add("transport", FAIL, f"{name} transport: {exc.message}", fix)
            return
        self.add(
            "transport",
            WARN,
            f"{name} transport is healthy{where}; it does not talk HTTP: no remote server to check",
            'set "transport": "http" (or remove it) to send to the remote',
        )

    def check_url(self) -> bool:
        from .._config import is_loopback_url

        self.current = "url"
        url = self.config.url or ""
        if url.startswith("https://"):
            return self.add("url", OK, url)
        if is_loopback_url(url):
            return self.add("url", OK, f"{url} (plain HTTP, to this machine)")
        return self.add(
            "url",
            WARN,
            f"{url}: plain HTTP to another machine; the token crosses the network readable",
            "use https:// in production",
        )

    def chosen_proxy(self) -> Any:
        """The transport's own proxy (http), else the rule the http transport follows."""
        from .._transports.http import HttpTransport

        if isinstance(self.transport, HttpTransport):
            return self.transport.proxy
        from .._transports._pools import choose_proxy

        return choose_proxy(self.config)

    def check_proxy(self) -> bool:
        self.current = "proxy"
        proxy = self.chosen_proxy()
        self._proxy = proxy if proxy is not None and not isinstance(proxy, str) else None
        if isinstance(proxy, str):
            return self.add(
                "proxy",
                WARN,
                f"ignoring the proxy: {proxy}; connecting directly",
                "correct the proxy variable named, or set remote.proxy",
            )
        if proxy is None:
            return self.add(
                "proxy",
                OK,
                "none: connecting directly (no remote.proxy; no proxy variable applies)",
            )
        return self.add(
            "proxy", OK, f"{proxy.url} (from {proxy.source}); the proxy resolves the remote's name"
        )

    def first_hop(self) -> tuple[str, int]:
        """The host and port this machine connects to: the proxy's, else the remote's."""
        url = self._proxy.url if self._proxy is not None else (self.config.url or "")
        parts = urlsplit(url)
        return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)

    def check_dns(self, host: str, port: int) -> bool:
        self.current = "dns"
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return self.add("dns", OK, f"{host} is an IP address; nothing to resolve")
        found: list[Any] = []

        def resolve() -> None:
            try:
                found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
            except (OSError, UnicodeError) as exc:
                found.append(exc)

        worker = threading.Thread(target=resolve, name="lightd-sync-check-dns", daemon=True)
        start_quietly(worker)
        worker.join(self.timeout)
        what = "the proxy's host name in its URL" if self._proxy else "the host name in remote.url"
        fix = (
            f"check {what}; if it is right, check this machine's DNS settings "
            "(/etc/resolv.conf, /etc/hosts)"
        )
        if not found:
            return self.add(
                "dns", FAIL, f"no answer from DNS for {host} within {self.timeout:g} s", fix
            )
        if isinstance(found[0], BaseException):
            exc = found[0]
            reason = getattr(exc, "strerror", None) or str(exc)
            return self.add("dns", FAIL, f"cannot resolve {host}: {reason}", fix)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in found[0]))
        shown = ", ".join(addresses[:4]) + (", …" if len(addresses) > 4 else "")
        return self.add("dns", OK, f"{host} resolves to {shown}")

    def check_tcp(self, host: str, port: int) -> bool:
        self.current = "tcp"
        what = "the proxy" if self._proxy else "the remote server"
        started = time.monotonic()
        try:
            sock = socket.create_connection((host, port), timeout=self.timeout)
        except ConnectionRefusedError:
            where = "the proxy's URL" if self._proxy else "remote.url"
            return self.add(
                "tcp",
                FAIL,
                f"connection refused by {host}:{port}: nothing listens there",
                f"start {what}, or correct the port in {where} "
                "(https:// defaults to 443, http:// to 80)",
            )
        except socket.timeout:
            return self.add(
                "tcp",
                FAIL,
                f"no answer from {host}:{port} within {self.timeout:g} s",
                "a firewall may drop the packets, or the host is down; check host and port",
            )
        except OSError as exc:
            return self.add(
                "tcp",
                FAIL,
                f"cannot connect to {host}:{port}: {exc.strerror or exc}",
                "check the network route to the host (firewall, VPN, proxy)",
            )
        with sock:
            elapsed = (time.monotonic() - started) * 1000
            peer = sock.getpeername()
        via = "the proxy at " if self._proxy else ""
        return self.add("tcp", OK, f"connected to {via}{peer[0]}:{peer[1]} in {elapsed:.1f} ms")

    def tls_verified(self) -> bool:
        """Record what the request that just succeeded says about TLS (https only)."""
        parts = urlsplit(self.config.url or "")
        if parts.scheme != "https":
            return True
        host = parts.hostname or ""
        if not self.config.verify:
            return self.add(
                "tls",
                WARN,
                f"TLS to {host} works, but its certificate was NOT verified "
                "(remote.verify is false): anyone on the path can read the token",
                "set remote.verify to true (for a private CA, remote.ca_bundle to its PEM file)",
            )
        trusted = (
            f"a CA in remote.ca_bundle ({self.config.ca_bundle})"
            if self.config.ca_bundle
            else "a CA this machine trusts"
        )
        return self.add("tls", OK, f"certificate of {host} verified: valid, and from {trusted}")

    def tls_failed(self, exc: BaseException) -> bool:
        """Record a request that failed in TLS; False if *exc* is no TLS failure."""
        found = _ssl_error(exc)
        if found is None:
            return False
        host = urlsplit(self.config.url or "").hostname or ""
        if isinstance(found, ssl.SSLCertVerificationError):
            self.add(
                "tls",
                FAIL,
                f"the certificate of {host} was rejected: {found.verify_message}",
                _CA_FIX.format(host=host),
            )
        elif str(found.reason or "").upper().replace(" ", "_") in _NOT_TLS_REASONS:
            self.add(
                "tls",
                FAIL,
                f"TLS handshake with {host} failed: the answer to the TLS hello is not TLS "
                f"({found.reason}); the remote may speak plain HTTP on this port",
                _PLAIN_FIX,
            )
        else:
            self.add(
                "tls",
                FAIL,
                f"TLS handshake with {host} failed: {found.reason or found}",
                "is the remote serving HTTPS on this port? (https:// vs http:// in remote.url)",
            )
        return True

    def scheme_probe_target(self) -> Optional[tuple[str, int]]:
        """Where to probe the scheme: the remote itself; None through a proxy."""
        if self._proxy is not None:
            return None
        parts = urlsplit(self.config.url or "")
        try:
            port = parts.port
        except ValueError:
            return None
        return parts.hostname or "", port or (443 if parts.scheme == "https" else 80)

    def probe_wait(self) -> float:
        return min(self.timeout, _PROBE_WAIT)

    def wrong_scheme_before_tls(self) -> bool:
        """For https://: fail the tls step at once if the port does not speak TLS."""
        target = self.scheme_probe_target()
        if urlsplit(self.config.url or "").scheme != "https" or target is None:
            return False
        host, port = target
        wait = self.probe_wait()
        verdict, reason = _probe_tls(host, port, wait)
        if verdict == "plain":
            return not self.add(
                "tls",
                FAIL,
                f"TLS handshake with {host}:{port} failed: the answer to the TLS hello is not "
                f"TLS ({reason}); the remote may speak plain HTTP on this port",
                _PLAIN_FIX,
            )
        if verdict in ("silent", "unknown"):
            status = _probe_plain(host, port, urlsplit(self.config.url or "").path, wait)
            if status is not None:
                return not self.add(
                    "tls",
                    FAIL,
                    f"no TLS answer to the TLS hello from {host}:{port} "
                    f"({f'none within {wait:g} s' if verdict == 'silent' else reason}), but a "
                    f"plain HTTP GET /health (without the token) was answered HTTP {status}: "
                    "the remote speaks plain HTTP on this port",
                    _PLAIN_FIX,
                )
        return False

    def speaks_tls(self) -> bool:
        """For http://: whether the remote's port completes a TLS handshake."""
        target = self.scheme_probe_target()
        if urlsplit(self.config.url or "").scheme != "http" or target is None:
            return False
        return _probe_tls(*target, self.probe_wait())[0] == "tls"

    def check_health_and_token(self) -> bool:
        from .._config import redact_token
        from .._exceptions import (
            AuthRejectedError,
            DeliveryError,
            RemoteRejectedError,
            RemoteTimeoutError,
        )

        self.current = "tls" if urlsplit(self.config.url or "").scheme == "https" else "health"
        if self.wrong_scheme_before_tls():
            return False
        started = time.monotonic()
        try:
            self.transport.check_health()
        except AuthRejectedError as exc:
            self.tls_verified()
            self.add(
                "health",
                WARN,
                f"GET /health answered HTTP {exc.status} before its body: the remote is up "
                "but refuses this token",
            )
            return self.add(
                "token",
                FAIL,
                f"the remote rejected the token (HTTP {exc.status}); "
                f"this node's token is {redact_token(self.config.token)}",
                _AUTH_FIX,
            )
        except RemoteTimeoutError:
            if self.speaks_tls():
                return self.add(
                    "health",
                    FAIL,
                    f"GET {self.health_url()}: no HTTP answer within {self.timeout:g} s, and "
                    "the port completes a TLS handshake: the remote speaks HTTPS there",
                    _TLS_FIX,
                )
            return self.add(
                "health",
                FAIL,
                f"GET /health: no answer within {self.timeout:g} s",
                "the port accepts connections but no HTTP answer comes: is it the remote's "
                "port, is the remote overloaded? (a longer --timeout tells)",
            )
        except RemoteRejectedError as exc:
            self.tls_verified()
            if exc.status == 404:
                return self.add(
                    "health",
                    FAIL,
                    f"GET {self.health_url()} answered HTTP 404: no such endpoint at that address",
                    self.base_path_fix(),
                )
            if exc.status == 400 and self.speaks_tls():
                return self.add(
                    "health",
                    FAIL,
                    f"{exc.message}; the port completes a TLS handshake: it expects HTTPS",
                    _TLS_FIX,
                )
            return self.add("health", FAIL, exc.message, _rejected_fix(exc.status, exc.message))
        except DeliveryError as exc:
            if self.tls_failed(exc):
                return False
            if self.speaks_tls():
                return self.add(
                    "health",
                    FAIL,
                    f"{exc.message}; the port completes a TLS handshake: it expects HTTPS, "
                    "not plain HTTP",
                    _TLS_FIX,
                )
            return self.add(
                "health",
                FAIL,
                exc.message,
                "the connection broke during the request: look at the remote's logs "
                "(and at the proxy's, if there is one)"
                if self._proxy is None
                else "the request through the proxy failed: look at the proxy's and the "
                "remote's logs",
            )
        elapsed = (time.monotonic() - started) * 1000
        self.tls_verified()
        self.current = "health"
        self.add(
            "health",
            OK,
            f'GET /health answered 200 {{"status": 200, "endpoint": "active"}} in {elapsed:.0f} ms',
        )
        return self.add("token", OK, "accepted (GET /health with it answered 200)")

    def health_url(self) -> str:
        return f"{(self.config.url or '').rstrip('/')}/health"

    def base_path_fix(self) -> str:
        """Name the base URL to use: a parent of remote.url that answers /health, if one does."""
        url = (self.config.url or "").rstrip("/")
        candidates = base_candidates(url)
        for candidate in candidates:
            if self.answers_health(candidate):
                return (
                    f"set remote.url to {candidate}: GET {candidate}/health answers as a "
                    "Lightd remote (remote.url is the base URL; /health and /update are "
                    "appended to it)"
                )
        if candidates and url.endswith(("/update", "/health")):
            return (
                f"remote.url is the base URL, without /update or /health: try {candidates[0]} "
                "(/health and /update are appended to it)"
            )
        return (
            f"check the path in remote.url: /health and /update are appended to it, so "
            f"{url}/health must be the remote's health endpoint"
        )

    def answers_health(self, url: str) -> bool:
        """Whether GET {url}/health, through a transport like the real one, answers healthy."""
        from .._exceptions import ConfigError, DeliveryError
        from .._transports.registry import make_transport

        config = attrs.evolve(self.config, url=url, timeout=self.probe_wait(), workers=1)
        try:
            with _held_back_warnings():
                transport = make_transport(config)
        except ConfigError:
            return False
        try:
            transport.check_health()
        except DeliveryError:
            return False
        finally:
            transport.close()
        return True

    def check_latency(self) -> None:
        from .._exceptions import DeliveryError

        self.current = "latency"
        samples = []
        try:
            for _ in range(_LATENCY_SAMPLES):
                started = time.monotonic()
                self.transport.check_health()
                samples.append((time.monotonic() - started) * 1000)
        except DeliveryError as exc:
            self.add("latency", FAIL, f"a repeated GET /health failed: {exc.message}")
            return
        median = statistics.median(samples)
        detail = (
            f"{median:.1f} ms round trip (median of {len(samples)}; "
            f"{min(samples):.1f}-{max(samples):.1f} ms)"
        )
        if median > _SLOW_MS:
            self.add(
                "latency",
                WARN,
                f"{detail}: slow",
                "slow delivery comes from network latency or a remote that processes "
                "requests slowly: look at both",
            )
        else:
            self.add("latency", OK, detail)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _chain(exc: BaseException) -> list[BaseException]:
    """*exc* and every exception it wraps (cause, context, arguments, ``reason``), outer first."""
    seen: set[int] = set()
    found: list[BaseException] = []
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        linked += list(current.args)
        todo.extend(e for e in linked if isinstance(e, BaseException))
    return found


def base_candidates(url: str) -> list[str]:
    """The base URLs to try after a 404: without a trailing /update or /health, else the parents."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    origin = f"{parts.scheme}://{parts.netloc}"
    for suffix in ("/update", "/health"):
        if path.endswith(suffix):
            return [origin + path[: -len(suffix)]]
    found = []
    while path:
        path = path.rpartition("/")[0]
        found.append(origin + path)
    return found[:3]


def _probe_tls(host: str, port: int, wait: float) -> tuple[str, str]:
    """
    Say what a TLS hello to *host*:*port* meets: ``tls``, ``plain`` (a non-TLS answer),
    ``silent`` (no answer within *wait*) or ``unknown`` (closed, refused...); and the reason.

    The certificate is not verified here: the question is only whether the port speaks TLS.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=wait) as sock,
            context.wrap_socket(sock, server_hostname=host or None),
        ):
            return "tls", "handshake completed"
    except ssl.SSLError as exc:
        reason = str(exc.reason or exc)
        if reason.upper().replace(" ", "_") in _NOT_TLS_REASONS:
            return "plain", reason
        if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            return "unknown", reason
        return "tls", reason  # an alert: a TLS server that refused this hello
    except socket.timeout:
        return "silent", "no answer"
    except OSError as exc:
        return "unknown", str(exc.strerror or exc)


def _probe_plain(host: str, port: int, base_path: str, wait: float) -> Optional[int]:
    """The status a plain HTTP ``GET {path}/health`` (no token) gets, or None if no HTTP answer."""
    conn = http.client.HTTPConnection(host, port, timeout=wait)
    try:
        conn.request("GET", f"{base_path.rstrip('/')}/health")
        answer = conn.getresponse()
        if b"HTTPS port" in answer.read(4096):  # nginx: "plain HTTP request was sent to HTTPS port"
            return None
        return answer.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


class _HoldBack(logging.Filter):
    """
    Drop the transport's warnings that a step of check says already.

    Plain HTTP to another machine is the url step's warning, certificates not
    verified the tls step's; a plain-HTTP proxy on another machine has no step
    of its own, so that warning still shows.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not (
            record.levelno == logging.WARNING
            and ("plain http:// to another machine" in text or "VERIFICATION IS OFF" in text)
        )


class _held_back_warnings:  # noqa: N801 - used as a context manager, like a function
    """While a transport is made for check, its plain-HTTP and verify-off warnings are dropped."""

    def __enter__(self) -> None:
        self._filter = _HoldBack()
        logging.getLogger("lightd_sync.transport").addFilter(self._filter)

    def __exit__(self, *exc_info: object) -> None:
        logging.getLogger("lightd_sync.transport").removeFilter(self._filter)


def _ssl_error(exc: BaseException) -> Optional[ssl.SSLError]:
    """The TLS error behind *exc*, if a TLS failure caused it."""
    errors = [e for e in _chain(exc) if isinstance(e, ssl.SSLError)]
    verify = [e for e in errors if isinstance(e, ssl.SSLCertVerificationError)]
    return (verify or errors or [None])[0]


def _rejected_fix(status: Optional[int], message: str) -> str:
    if status == 404:
        return "check the path in remote.url: /health and /update are appended to it"
    if status is not None and 300 <= status < 400:
        return "put the final address in remote.url (redirects are never followed)"
    if status == 429:
        return "the remote rate-limits this node: wait, or raise its limit"
    if status is not None and status >= 500:
        return "the remote failed: look at its logs"
    if status == 200:
        return (
            'the remote must answer 200 {"status": 200, "endpoint": "active"}: '
            "is remote.url the address of a Lightd remote API?"
        )
    return "look at the remote's logs"
