"""
``lightd-sync check --config config.json``: walk the protocol's troubleshooting list.

Each step prints one line, ✓ / ! / ✗, and on ✗ the fix. A failed step ends
the walk when the steps after it could only fail the same way (no TCP, no
TLS; no answer, no token check).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import statistics
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import urlsplit

import attrs

from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    add_command,
    clean,
    marks_for,
    positive_float,
    scrub,
)

if TYPE_CHECKING:
    from .._config import RemoteConfig
    from .._transports.http import HttpTransport

__all__ = ["Step", "add_parser", "run"]

OK, WARN, FAIL = "ok", "warn", "fail"
_LATENCY_SAMPLES = 3
_SLOW_MS = 1000.0
_AUTH_FIX = (
    "the tokens do not match on both sides: give the remote and this node the same "
    "token (remote.token in config.json, or LIGHTD_REMOTE_TOKEN)"
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


def add_parser(subparsers: Any) -> None:
    """Add the ``check`` subcommand."""
    parser = add_command(
        subparsers,
        "check",
        summary="find out why updates do not arrive: config, DNS, TCP, TLS, /health, token",
        description="Walk the troubleshooting list against the real remote, one line per "
        "step (✓ passed, ! warning, ✗ failed, with the fix): the config parses and "
        "validates; remote.enabled is true; the URL is well formed (and HTTPS); its "
        "host resolves; TCP connects; TLS handshakes and the certificate verifies; "
        "/health answers 200 with the expected body; the token is accepted; the "
        "round-trip latency. Stops at the first failure that makes later steps "
        "meaningless. Exit 0 when every step passes, 1 otherwise. The token is "
        "never printed.",
        epilog="example:\n  lightd-sync check --config /etc/lightd/config.json --timeout 3",
    )
    parser.add_argument(
        "--config",
        required=True,
        metavar="FILE",
        help="Lightd's config.json (LIGHTD_REMOTE_* variables override it)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        metavar="SECONDS",
        help="limit of every network step (default: remote.timeout, 10 s)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object: {"ok": ..., "steps": [{"name", "ok", "level", '
        '"detail", "fix"}, ...]}; level is ok, warn or fail',
    )


class _Doctor:
    """Runs the steps in order and keeps their outcomes."""

    def __init__(self, config_path: str, timeout: Optional[float]) -> None:
        self.config_path = config_path
        self.timeout_arg = timeout
        self.timeout = timeout or 10.0
        self.steps: list[Step] = []
        self.token: Optional[str] = None
        self._config: Optional[RemoteConfig] = None
        self._transport: Optional[HttpTransport] = None

    def add(self, name: str, level: str, detail: str, fix: Optional[str] = None) -> bool:
        """Record a step; return True if the walk may go on."""
        detail = clean(scrub(detail, self.token))
        self.steps.append(Step(name, level, detail, scrub(fix, self.token) if fix else None))
        return level != FAIL

    @property
    def config(self) -> RemoteConfig:
        """The config, once the first step has read it."""
        assert self._config is not None, "check_config() comes first"
        return self._config

    # -- the steps -----------------------------------------------------------

    def run(self) -> None:
        if not (self.check_config() and self.check_enabled()):
            return
        if self.config.transport != "http":
            self.check_other_transport()
            return
        if not self.check_url():
            return
        parts = urlsplit(self.config.url or "")
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if not (self.check_dns(host, port) and self.check_tcp_tls(parts.scheme, host, port)):
            return
        if self.check_health_and_token():
            self.check_latency()

    def check_config(self) -> bool:
        from .._config import ENV_OVERRIDES, load_config
        from .._exceptions import ConfigError

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
            return self.add("config", FAIL, message, fix)
        self.token = self.config.token
        if self.timeout_arg is None:
            self.timeout = self.config.timeout
        overrides = [var for var in ENV_OVERRIDES if os.environ.get(var)]
        verb = "overrides" if len(overrides) == 1 else "override"
        note = f" ({', '.join(overrides)} {verb} it)" if overrides else ""
        return self.add("config", OK, f"{self.config_path} is valid{note}")

    def check_enabled(self) -> bool:
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

    def check_other_transport(self) -> None:
        from .._exceptions import ConfigError, DeliveryError
        from .._transports.registry import make_transport

        name = self.config.transport
        where = f": updates are appended to {self.config.path}" if name == "file" else ""
        try:
            transport = make_transport(self.config)
        except ConfigError as exc:
            self.add("transport", FAIL, str(exc), "correct remote.transport in config.json")
            return
        try:
            transport.check_health()
        except DeliveryError as exc:
            fix = (
                "create the folder of remote.path and make it writable by this user"
                if name == "file"
                else f"look at the documentation of the {name!r} transport"
            )
            self.add("transport", FAIL, f"{name} transport: {exc.message}", fix)
            return
        finally:
            transport.close()
        self.add(
            "transport",
            WARN,
            f"{name} transport is healthy{where}; no remote server to check",
            'set "transport": "http" (or remove it) to send to the remote',
        )

    def check_url(self) -> bool:
        from .._config import is_loopback_url

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

    def check_dns(self, host: str, port: int) -> bool:
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

        worker = threading.Thread(target=resolve, name="check-dns", daemon=True)
        worker.start()
        worker.join(self.timeout)
        fix = (
            "check the host name in remote.url; if it is right, check this machine's "
            "DNS settings (/etc/resolv.conf, /etc/hosts)"
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

    def check_tcp_tls(self, scheme: str, host: str, port: int) -> bool:
        started = time.monotonic()
        try:
            sock = socket.create_connection((host, port), timeout=self.timeout)
        except ConnectionRefusedError:
            return self.add(
                "tcp",
                FAIL,
                f"connection refused by {host}:{port}: nothing listens there",
                "start the remote server, or correct the port in remote.url "
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
            self.add("tcp", OK, f"connected to {peer[0]}:{peer[1]} in {elapsed:.1f} ms")
            if scheme != "https":
                return True
            return self.check_tls(sock, host)

    def check_tls(self, sock: socket.socket, host: str) -> bool:
        import ssl  # only https needs it, and it is slow to import

        from .._exceptions import ConfigError
        from .._transports._pools import tls_context

        try:  # the transport's own context: ca_bundle, client certificate, verify
            context = tls_context(self.config)
        except ConfigError as exc:
            return self.add("tls", FAIL, str(exc), "fix the file the message names")
        if self.config.verify:
            context.check_hostname = True
        try:
            with context.wrap_socket(sock, server_hostname=host) as tls:
                version = tls.version()
                cert = tls.getpeercert() or {}
        except ssl.SSLCertVerificationError as exc:
            return self.add(
                "tls",
                FAIL,
                f"the certificate of {host} was rejected: {exc.verify_message}",
                f"the remote needs a certificate valid for {host} from a CA this machine "
                "trusts (for a private CA, set remote.ca_bundle to its PEM file)",
            )
        except ssl.SSLError as exc:
            return self.add(
                "tls",
                FAIL,
                f"TLS handshake with {host} failed: {exc.reason or exc}",
                "is the remote serving HTTPS on this port? (https:// vs http:// in remote.url)",
            )
        except socket.timeout:
            return self.add(
                "tls",
                FAIL,
                f"no TLS answer from {host} within {self.timeout:g} s",
                "the port accepts connections but does not speak TLS: check the port",
            )
        except OSError as exc:
            return self.add(
                "tls",
                FAIL,
                f"the connection to {host} broke during the TLS handshake: {exc.strerror or exc}",
                "is the remote serving HTTPS on this port? (https:// vs http:// in remote.url)",
            )
        until = cert.get("notAfter")
        valid = f", valid until {until}" if isinstance(until, str) else ""
        return self.add("tls", OK, f"{version}, certificate verified for {host}{valid}")

    def check_health_and_token(self) -> bool:
        from .._config import redact_token
        from .._exceptions import (
            AuthRejectedError,
            DeliveryError,
            RemoteRejectedError,
            RemoteTimeoutError,
        )
        from .._transports.http import HttpTransport

        config = attrs.evolve(self.config, timeout=self.timeout, workers=1)
        transport = HttpTransport(config)
        self._transport = transport
        started = time.monotonic()
        try:
            transport.check_health()
        except AuthRejectedError as exc:
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
                f"this node's token is {redact_token(config.token)}",
                _AUTH_FIX,
            )
        except RemoteTimeoutError:
            return self.add(
                "health",
                FAIL,
                f"GET /health: no answer within {self.timeout:g} s",
                "the port accepts connections but no HTTP answer comes: is it the remote's "
                "port, is the remote overloaded? (a longer --timeout tells)",
            )
        except RemoteRejectedError as exc:
            return self.add("health", FAIL, exc.message, _rejected_fix(exc.status, exc.message))
        except DeliveryError as exc:
            return self.add(
                "health",
                FAIL,
                exc.message,
                "the connection broke during the request: look at the remote's logs "
                "(and at any proxy in between)",
            )
        elapsed = (time.monotonic() - started) * 1000
        self.add(
            "health",
            OK,
            f'GET /health answered 200 {{"status": 200, "endpoint": "active"}} in {elapsed:.0f} ms',
        )
        return self.add("token", OK, "accepted (GET /health with it answered 200)")

    def check_latency(self) -> None:
        from .._exceptions import DeliveryError

        assert self._transport is not None, "check_health_and_token() comes first"
        samples = []
        try:
            for _ in range(_LATENCY_SAMPLES):
                started = time.monotonic()
                self._transport.check_health()
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


def _print_text(doctor: _Doctor) -> None:
    marks = marks_for(sys.stdout)
    mark = {OK: marks.ok, WARN: marks.warn, FAIL: marks.fail}
    width = max(len(step.name) for step in doctor.steps)
    pad = " " * (len(marks.fail) + 1 + width + 2)
    print(f"checking {doctor.config_path}")
    for step in doctor.steps:
        print(f"{mark[step.level].ljust(len(marks.fail))} {step.name.ljust(width)}  {step.detail}")
        if step.fix and step.level != OK:
            print(f"{pad}{'fix' if step.level == FAIL else 'hint'}: {step.fix}")
    failed = [step for step in doctor.steps if not step.ok]
    warnings = sum(step.level == WARN for step in doctor.steps)
    also = f" ({warnings} warning{'s' if warnings != 1 else ''})" if warnings else ""
    if failed:
        print(f"{marks.fail} failed at {failed[0].name}{also}: fix it and run check again")
    else:
        print(f"{marks.ok} all {len(doctor.steps)} checks passed{also}")


def run(args: argparse.Namespace) -> int:
    """Walk the steps; 0 if every one passed (warnings allowed), 1 otherwise."""
    doctor = _Doctor(args.config, args.timeout)
    try:
        doctor.run()
    finally:
        doctor.close()
    ok = all(step.ok for step in doctor.steps)
    if args.json:
        document = {
            "ok": ok,
            "config": doctor.config_path,
            "steps": [step.to_dict() for step in doctor.steps],
        }
        print(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        _print_text(doctor)
    return EXIT_OK if ok else EXIT_FAILED
