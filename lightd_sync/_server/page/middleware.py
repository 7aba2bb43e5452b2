"""The status page as WSGI middleware around the receiver: :class:`StatusPage`."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Iterable
from http import HTTPStatus
from importlib import resources
from typing import Any, Callable, Optional, Union
from urllib.parse import parse_qs

from ..._logutil import get_logger
from .sessions import SessionTable

__all__ = ["OPERATOR_KEY", "StatusPage"]

log = get_logger("receiver.page")

#: The WSGI environ key set to True for a request that carries a valid session
#: cookie (and no Authorization header): the receiver then treats it as the
#: operator's. Clients cannot set it: HTTP headers arrive as ``HTTP_*`` keys.
OPERATOR_KEY = "lightd_sync.operator"

COOKIE = "lightd-sync-session"
SECURE_COOKIE = "__Host-lightd-sync-session"  # the prefix: Secure, Path=/, no Domain

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_SECURITY = [
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
]
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_STATIC = "/static/"
_MAX_FORM = 4096  # bytes of a login form read; a token is far shorter
_LOGIN_ERRORS = {
    "": "",
    "wrong": '<p class="notice error" role="alert">That is not the operator token.</p>',
    "busy": '<p class="notice error" role="alert">Too many logins at once; try again.</p>',
    "form": '<p class="notice error" role="alert">Send the form with the token field.</p>',
}

TokenSource = Union[str, Callable[[], str]]
StartResponse = Callable[..., Any]


class StatusPage:
    """
    WSGI middleware serving the receiver's status page in front of *app*.

    It answers ``GET /`` (the login form, or the page once logged in),
    ``POST /login`` (the form's ``token`` field, compared in constant time
    with the operator token), ``POST /logout`` and ``GET /static/<file>``.
    Every other request goes to *app*; one that carries a valid session
    cookie and no ``Authorization`` header gets ``environ["lightd_sync.operator"]
    = True`` first, which the receiver takes as the operator's token; unless
    the browser says another page made it (``Sec-Fetch-Site`` other than
    ``same-origin`` or ``none``).

    The session cookie is ``HttpOnly; SameSite=Strict; Path=/``, plus
    ``Secure`` (and the ``__Host-`` name prefix) when the request arrived over
    HTTPS (``wsgi.url_scheme``, which a WSGI server sets from a trusted proxy
    only when configured to) or *secure_cookies* is true. Its value is a
    random session id that only this process's session table knows (see
    :mod:`lightd_sync._server.page.sessions`): a forged, expired or logged-out
    cookie is refused, and so is every session when the operator token changes.

    A wrong token is answered after *failed_login_delay* seconds, sleeping in
    the request's own thread, holding no lock; at most *max_slow_logins* such
    answers wait at once, beyond which a login is answered 429 at once, so that
    wrong guesses never take every worker thread. Each is logged (the client's
    address, never what it sent).

    Args:
        app: The receiver's WSGI application.
        operator_token: The operator token, or a callable returning the one
            in force now (so that a reload revokes the sessions of the old one).
        secure_cookies: Always mark the cookie ``Secure``: behind a proxy that
            terminates TLS, where the receiver itself sees plain HTTP.
        session_ttl: Seconds a login lasts.
        failed_login_delay: Seconds before a wrong token is answered.
        max_slow_logins: Wrong-token answers that may wait at once.
        clock: Wall-clock seconds, for the sessions' expiry (tests inject their own).

    .. versionadded:: 0.2.0
    """

    def __init__(
        self,
        app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]],
        *,
        operator_token: TokenSource,
        secure_cookies: bool = False,
        session_ttl: float = 12 * 3600.0,
        failed_login_delay: float = 1.0,
        max_slow_logins: int = 4,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self._token: Callable[[], str] = (
            operator_token if callable(operator_token) else (lambda: operator_token)
        )
        if not self._token():
            raise ValueError("operator_token: expected a non-empty string")
        if not (_is_number(session_ttl) and 1 <= session_ttl < 10**9):
            raise ValueError(f"session_ttl: expected seconds >= 1, got {session_ttl!r}")
        if not (_is_number(failed_login_delay) and 0 <= failed_login_delay <= 60):
            raise ValueError(
                f"failed_login_delay: expected 0 to 60 seconds, got {failed_login_delay!r}"
            )
        if not (type(max_slow_logins) is int and max_slow_logins >= 1):
            raise ValueError(
                f"max_slow_logins: expected a whole number >= 1, got {max_slow_logins!r}"
            )
        self.secure_cookies = bool(secure_cookies)
        self.sessions = SessionTable(self._token, ttl=session_ttl, clock=clock)
        self._ttl = int(session_ttl)
        self._delay = failed_login_delay
        self._max_slow = max_slow_logins
        # Guards _slow: how many wrong-token answers are waiting now. Held only
        # to count, never while waiting.
        self._slow_lock = threading.Lock()
        self._slow = 0
        self._static, self._page, self._login = _load_assets()

    # -- WSGI ------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Answer the page's routes; hand every other request to the app."""
        path = str(environ.get("PATH_INFO") or "")
        method = str(environ.get("REQUEST_METHOD") or "")
        if path == "/":
            if method not in ("GET", "HEAD"):
                return _not_allowed(start_response, "GET, HEAD")
            if self._logged_in(environ):
                return _html(start_response, method, 200, self._page)
            return _html(start_response, method, 200, self._login_page(""))
        if path == "/login":
            if method != "POST":
                return _not_allowed(start_response, "POST")
            return self._do_login(environ, start_response)
        if path == "/logout":
            if method != "POST":
                return _not_allowed(start_response, "POST")
            self.sessions.close(_cookie(environ))
            return _see_other(start_response, [self._cookie_header(environ, "", 0)])
        if path.startswith(_STATIC):
            if method not in ("GET", "HEAD"):
                return _not_allowed(start_response, "GET, HEAD")
            return self._serve_static(path[len(_STATIC) :], method, start_response)
        if "HTTP_AUTHORIZATION" not in environ and self._logged_in(environ):
            environ[OPERATOR_KEY] = True
        return self.app(environ, start_response)

    # -- sessions --------------------------------------------------------------

    def _logged_in(self, environ: dict[str, Any]) -> bool:
        # A request another page made (another site, or a sibling host of the
        # same site, which SameSite=Strict lets through) is never the operator's.
        if not _from_here(environ):
            return False
        return self.sessions.valid(_cookie(environ))

    def _secure(self, environ: dict[str, Any]) -> bool:
        return self.secure_cookies or environ.get("wsgi.url_scheme") == "https"

    def _cookie_header(self, environ: dict[str, Any], value: str, max_age: int) -> tuple[str, str]:
        secure = self._secure(environ)
        name = SECURE_COOKIE if secure else COOKIE
        attributes = f"Max-Age={max_age}; Path=/; HttpOnly; SameSite=Strict"
        return ("Set-Cookie", f"{name}={value}; {attributes}{'; Secure' if secure else ''}")

    def _do_login(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        client = str(environ.get("REMOTE_ADDR") or "-")
        if not _from_here(environ):
            return _html(start_response, "POST", 403, self._login_page("form"))
        given = _form_token(environ)
        if given is None:
            return _html(start_response, "POST", 400, self._login_page("form"))
        expected = self._token().encode("utf-8")
        if hmac.compare_digest(given.encode("utf-8", "replace"), expected):
            sid = self.sessions.open()
            log.info("status page: operator logged in from %s", client)
            return _see_other(start_response, [self._cookie_header(environ, sid, self._ttl)])
        with self._slow_lock:
            busy = self._slow >= self._max_slow
            if not busy:
                self._slow += 1
        log.warning("status page: a login with a wrong operator token from %s", client)
        if busy:
            headers = [("Retry-After", str(max(1, round(self._delay))))]
            return _html(start_response, "POST", 429, self._login_page("busy"), headers)
        try:
            time.sleep(self._delay)  # this request's thread only; no lock held
        finally:
            with self._slow_lock:
                self._slow -= 1
        return _html(start_response, "POST", 401, self._login_page("wrong"))

    def _login_page(self, error: str) -> bytes:
        return self._login.replace(b"<!--ERROR-->", _LOGIN_ERRORS[error].encode())

    # -- static files ----------------------------------------------------------

    def _serve_static(
        self, name: str, method: str, start_response: StartResponse
    ) -> Iterable[bytes]:
        # Only the package's own files, looked up by exact name: no path is
        # ever built from the request, so "../" leads nowhere.
        found = self._static.get(name)
        if found is None:
            body = b"not found\n"
            start_response(
                "404 Not Found",
                [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(body))),
                    *_SECURITY,
                ],
            )
            return [b"" if method == "HEAD" else body]
        content_type, body, etag = found
        start_response(
            "200 OK",
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-cache"),
                ("ETag", etag),
                *_SECURITY,
            ],
        )
        return [b"" if method == "HEAD" else body]


def _load_assets() -> tuple[dict[str, tuple[str, bytes, str]], bytes, bytes]:
    """The static files (type, bytes, ETag), the page and the login page, from the package."""
    root = resources.files(__package__)
    static: dict[str, tuple[str, bytes, str]] = {}
    for entry in (root / "static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            static[entry.name] = (_TYPES[suffix], body, etag)
    # The pages name each file with its hash (?v=...), so that a browser never
    # runs a new page with an old script after an upgrade.
    pages = []
    for name in ("page.html", "login.html"):
        html = (root / name).read_bytes()
        for file, (_, _, etag) in static.items():
            versioned = f'"static/{file}?v={etag[1:9]}"'
            html = html.replace(f'"static/{file}"'.encode(), versioned.encode())
        pages.append(html)
    return static, pages[0], pages[1]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _from_here(environ: dict[str, Any]) -> bool:
    """
    Whether the browser says the request came from this origin's own pages, or from
    no page (typed, bookmarked); a client without ``Sec-Fetch-Site`` is taken at its word.
    """
    site = environ.get("HTTP_SEC_FETCH_SITE")
    return site is None or site in ("same-origin", "none")


def _cookie(environ: dict[str, Any]) -> Optional[str]:
    """The session id the request's Cookie header carries, if any."""
    header = str(environ.get("HTTP_COOKIE") or "")
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name in (COOKIE, SECURE_COOKIE):
            return value.strip()
    return None


def _form_token(environ: dict[str, Any]) -> Optional[str]:
    """The ``token`` field of a urlencoded login form, or None when the form is not one."""
    kind = str(environ.get("CONTENT_TYPE") or "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return None
    raw = str(environ.get("CONTENT_LENGTH") or "").strip()
    if not (raw.isascii() and raw.isdigit()) or int(raw) > _MAX_FORM:
        return None
    body = environ["wsgi.input"].read(int(raw))
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=8, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return None
    values = fields.get("token")
    if not values or len(values) != 1:
        return None
    return str(values[0]).strip()


def _html(
    start_response: StartResponse,
    method: str,
    status: int,
    body: bytes,
    extra: Optional[list[tuple[str, str]]] = None,
) -> Iterable[bytes]:
    start_response(
        f"{status} {HTTPStatus(status).phrase}",
        [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            *_SECURITY,
            *(extra or []),
        ],
    )
    return [b"" if method == "HEAD" else body]


def _see_other(start_response: StartResponse, headers: list[tuple[str, str]]) -> Iterable[bytes]:
    start_response(
        "303 See Other",
        [
            ("Location", "./"),  # relative: the page may sit under a prefix
            ("Content-Length", "0"),
            ("Cache-Control", "no-store"),
            *_SECURITY,
            *headers,
        ],
    )
    return [b""]


def _not_allowed(start_response: StartResponse, allow: str) -> Iterable[bytes]:
    body = f"method not allowed; use {allow}\n".encode()
    start_response(
        "405 Method Not Allowed",
        [
            ("Allow", allow),
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            *_SECURITY,
        ],
    )
    return [body]
