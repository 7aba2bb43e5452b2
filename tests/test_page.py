"""
The status page's middleware without a browser: sessions, headers, static files, methods.

Over real HTTP (waitress on 127.0.0.1) in front of a stand-in app that records
what the middleware told it; raw sockets where a client library would tidy the
path up first (``/static/../x``).
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urljoin

import pytest
import requests

from lightd_sync._server.http import serve
from lightd_sync._server.page import CSP, OPERATOR_KEY, StatusPage
from lightd_sync._server.page.middleware import COOKIE, SECURE_COOKIE

from .conftest import TOKEN, LogCapture

pytestmark = pytest.mark.timeout(30)


class Recorder:
    """The inner app: answers 200 JSON, keeps whether each request came as the operator's."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        self.seen.append((environ["PATH_INFO"], environ.get(OPERATOR_KEY) is True))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"ok":true}']


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Site:
    def __init__(self, page: StatusPage, inner: Recorder, url: str, clock: Clock) -> None:
        self.page, self.inner, self.url, self.clock = page, inner, url, clock
        self.port = int(url.rsplit(":", 1)[1])

    def login(self, token: str = TOKEN) -> requests.Response:
        return requests.post(
            self.url + "/login", data={"token": token}, allow_redirects=False, timeout=10
        )

    def get(self, path: str, cookie: Optional[str] = None, **kw: Any) -> requests.Response:
        headers = dict(kw.pop("headers", {}))
        if cookie is not None:
            headers["Cookie"] = f"{COOKIE}={cookie}"
        return requests.get(self.url + path, headers=headers, timeout=10, **kw)

    def as_operator(self, cookie: Optional[str], **kw: Any) -> bool:
        self.get("/servers", cookie, **kw)
        return self.inner.seen[-1] == ("/servers", True)


@pytest.fixture
def site() -> Iterator[Site]:
    with _site() as running:
        yield running


@contextlib.contextmanager
def _site(**options: Any) -> Iterator[Site]:
    inner, clock = Recorder(), Clock()
    options.setdefault("operator_token", TOKEN)
    options.setdefault("failed_login_delay", 0.3)
    page = StatusPage(inner, clock=clock, **options)
    with serve(page) as server:
        yield Site(page, inner, server.url, clock)


def session_of(answer: requests.Response) -> str:
    match = re.match(r"[^=]+=([^;]*);", answer.headers["Set-Cookie"])
    assert match, answer.headers
    return match.group(1)


def raw_get(port: int, target: str, method: str = "GET") -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def assert_page_headers(answer: requests.Response) -> None:
    assert answer.headers["Content-Security-Policy"] == CSP
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Referrer-Policy"] == "no-referrer"


# -- the login -------------------------------------------------------------------------


def test_the_root_shows_a_login_form_with_the_security_headers(site: Site) -> None:
    answer = site.get("/")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
    assert answer.headers["Cache-Control"] == "no-store"
    assert_page_headers(answer)
    assert 'action="login"' in answer.text and 'name="token"' in answer.text
    assert "Set-Cookie" not in answer.headers
    assert site.inner.seen == []  # the app never saw it


def test_the_right_token_opens_a_session_with_a_strict_cookie(site: Site) -> None:
    answer = site.login()
    assert answer.status_code == 303 and answer.headers["Location"] == "./"
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith(COOKIE + "=")
    parts = {p.strip() for p in cookie.split(";")}
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= parts
    assert "Secure" not in parts  # plain HTTP, secure_cookies not given
    assert TOKEN not in cookie
    sid = session_of(answer)
    page = site.get("/", sid)
    assert page.status_code == 200 and 'src="static/app.js?v=' in page.text
    assert_page_headers(page)
    assert page.headers["Cache-Control"] == "no-store"
    assert site.as_operator(sid)
    assert not site.as_operator(None)
    # A request with its own Authorization header is judged by the app, on that header.
    assert not site.as_operator(sid, headers={"Authorization": "Bearer something"})
    # A request another site made is never the operator's.
    assert not site.as_operator(sid, headers={"Sec-Fetch-Site": "cross-site"})
    assert not site.as_operator(sid, headers={"Sec-Fetch-Site": "same-site"})
    assert site.as_operator(sid, headers={"Sec-Fetch-Site": "same-origin"})
    assert site.as_operator(sid, headers={"Sec-Fetch-Site": "none"})


def test_a_wrong_token_is_answered_slowly_and_logged_without_it(
    site: Site, logs: LogCapture
) -> None:
    site.page._delay = 1.0  # the default
    wrong = TOKEN[:-4] + "ffff"
    started = time.monotonic()
    answer = site.login(wrong)
    took = time.monotonic() - started
    assert answer.status_code == 401
    assert took >= 0.95, took
    assert "Set-Cookie" not in answer.headers
    assert "not the operator token" in answer.text
    assert wrong not in answer.text and TOKEN not in answer.text
    messages = logs.text()
    assert "a login with a wrong operator token from 127.0.0.1" in messages
    assert TOKEN[8:16] not in messages and wrong[8:16] not in messages


def test_a_wrong_login_waits_without_holding_up_other_requests(site: Site) -> None:
    site.page._delay = 1.5
    sid = session_of(site.login())
    done = threading.Event()
    slow = threading.Thread(target=lambda: (site.login("lightd_" + "0" * 32), done.set()))
    slow.start()
    try:
        page = site.page
        assert _wait(lambda: page._slow == 1)  # the wrong login is waiting now
        started = time.monotonic()
        assert site.get("/", sid).status_code == 200
        assert site.login().status_code == 303
        assert time.monotonic() - started < 1.0
        assert not done.is_set()  # the wrong login was still waiting meanwhile
    finally:
        slow.join(10)


def test_wrong_logins_beyond_the_waiting_cap_get_429_at_once() -> None:
    with _site(max_slow_logins=1, failed_login_delay=1.5) as site:
        first = threading.Thread(target=site.login, args=("lightd_" + "1" * 32,))
        first.start()
        try:
            page = site.page
            assert _wait(lambda: page._slow == 1)
            started = time.monotonic()
            answer = site.login("lightd_" + "2" * 32)
            assert answer.status_code == 429 and answer.headers["Retry-After"] == "2"
            assert time.monotonic() - started < 1.0
        finally:
            first.join(10)


@pytest.mark.parametrize(
    "form",
    [
        {},
        {"token": ""},
        {"nottoken": TOKEN},
        "token=" + TOKEN + "&token=" + TOKEN,
        "x" * 5000,
    ],
)
def test_a_login_without_one_token_field_is_refused(site: Site, form: Any) -> None:
    answer = requests.post(site.url + "/login", data=form, allow_redirects=False, timeout=10)
    assert answer.status_code in (400, 401)
    assert "Set-Cookie" not in answer.headers


def test_a_login_sent_as_json_is_refused(site: Site) -> None:
    answer = requests.post(
        site.url + "/login", json={"token": TOKEN}, allow_redirects=False, timeout=10
    )
    assert answer.status_code == 400 and "Set-Cookie" not in answer.headers


@pytest.mark.parametrize("where", ["cross-site", "same-site"])
def test_a_login_another_page_sent_is_refused(site: Site, where: str) -> None:
    answer = requests.post(
        site.url + "/login",
        data={"token": TOKEN},
        headers={"Sec-Fetch-Site": where},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 403 and "Set-Cookie" not in answer.headers


# -- the session cookie ----------------------------------------------------------------


def test_forged_tampered_and_malformed_cookies_are_refused(site: Site) -> None:
    sid = session_of(site.login())
    assert site.as_operator(sid)
    tampered = ("A" if sid[0] != "A" else "B") + sid[1:]
    forged = "Q" * len(sid)
    for bad in (tampered, forged, sid[:-1], sid + "A", sid + "=", "../" + sid, "", TOKEN):
        assert not site.as_operator(bad), bad
        assert "Log in" in site.get("/", bad).text
    assert site.as_operator(sid)  # none of that harmed the real one


def test_a_session_expires(site: Site) -> None:
    sid = session_of(site.login())
    site.clock.now += 12 * 3600 - 1
    assert site.as_operator(sid)
    site.clock.now += 2
    assert not site.as_operator(sid)
    assert len(site.page.sessions) == 0  # and it was dropped


def test_logout_ends_the_session_on_the_server(site: Site) -> None:
    sid = session_of(site.login())
    other = session_of(site.login())
    answer = requests.post(
        site.url + "/logout",
        headers={"Cookie": f"{COOKIE}={sid}"},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 303
    assert answer.headers["Set-Cookie"].startswith(f"{COOKIE}=; Max-Age=0;")
    # The browser forgets the cookie; a copy kept elsewhere is refused too.
    assert not site.as_operator(sid)
    assert site.as_operator(other)  # another login is untouched


def test_a_changed_operator_token_ends_every_session() -> None:
    current = [TOKEN]
    with _site(operator_token=lambda: current[0]) as site:
        sid = session_of(site.login())
        assert site.as_operator(sid)
        current[0] = "lightd_" + "9" * 32
        assert not site.as_operator(sid)
        assert site.login(TOKEN).status_code == 401  # the old token no longer logs in
        assert site.as_operator(session_of(site.login(current[0])))


def test_secure_cookies_when_asked_or_over_https() -> None:
    with _site(secure_cookies=True) as site:
        answer = site.login()
        cookie = answer.headers["Set-Cookie"]
        assert cookie.startswith(SECURE_COOKIE + "=") and cookie.endswith("; Secure")
        sid = session_of(answer)
        headers = {"Cookie": f"{SECURE_COOKIE}={sid}"}
        assert site.get("/servers", headers=headers).ok and site.inner.seen[-1][1]
    page = StatusPage(Recorder(), operator_token=TOKEN)
    seen: list[Any] = []
    body = f"token={TOKEN}".encode()
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/login",
        "wsgi.url_scheme": "https",
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": __import__("io").BytesIO(body),
    }
    page(environ, lambda status, headers: seen.extend(headers))
    assert dict(seen)["Set-Cookie"].endswith("; Secure")


def test_sessions_are_bounded() -> None:
    inner = Recorder()
    page = StatusPage(inner, operator_token=TOKEN)
    page.sessions._max = 3
    ids = [page.sessions.open() for _ in range(5)]
    assert len(page.sessions) == 3
    assert [page.sessions.valid(s) for s in ids] == [False, False, True, True, True]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("operator_token", ""),
        ("session_ttl", 0),
        ("session_ttl", float("nan")),
        ("session_ttl", True),
        ("failed_login_delay", -1),
        ("failed_login_delay", "1"),
        ("max_slow_logins", 0),
        ("max_slow_logins", 1.5),
    ],
)
def test_bad_options_are_refused_naming_them(option: str, value: Any) -> None:
    options: dict[str, Any] = {"operator_token": TOKEN, option: value}
    with pytest.raises(ValueError, match=f"^{option}: "):
        StatusPage(Recorder(), **options)


# -- static files, methods ---------------------------------------------------------------


def test_static_files_are_served_with_their_types(site: Site) -> None:
    for name, kind in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ]:
        answer = site.get("/static/" + name)
        assert answer.status_code == 200, name
        assert answer.headers["Content-Type"] == kind
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["ETag"]
        assert answer.content
    assert site.inner.seen == []


@pytest.mark.parametrize(
    "target",
    [
        "/static/../x",
        "/static/../middleware.py",
        "/static/../../../../etc/passwd",
        "/static/%2e%2e/middleware.py",
        "/static/..%2fmiddleware.py",
        "/static/",
        "/static/app.js/",
        "/static//etc/passwd",
        "/static/APP.JS",
        "/static/page.html",
        "/static/__init__.py",
    ],
)
def test_static_paths_lead_nowhere_else(site: Site, target: str) -> None:
    status, data = raw_get(site.port, target)
    # Either the middleware refuses it, or waitress resolved the dots and the
    # path is no longer a static one (then the app answers it, as any path).
    body = data.partition(b"\r\n\r\n")[2]
    assert b"import " not in body and b"root:" not in body and b"<html" not in body
    if site.inner.seen:
        assert not site.inner.seen[-1][0].startswith("/static/")
    else:
        assert status == 404


def test_head_and_methods(site: Site) -> None:
    for path in ("/", "/static/app.js"):
        status, data = raw_get(site.port, path, "HEAD")
        head, _, body = data.partition(b"\r\n\r\n")
        assert status == 200 and body == b"", path
        assert b"Content-Length: " in head and b"Content-Length: 0\r\n" not in head
    for method, path, allow in [
        ("POST", "/", "GET, HEAD"),
        ("DELETE", "/", "GET, HEAD"),
        ("GET", "/login", "POST"),
        ("GET", "/logout", "POST"),
        ("PUT", "/static/app.js", "GET, HEAD"),
    ]:
        answer = requests.request(method, site.url + path, allow_redirects=False, timeout=10)
        assert answer.status_code == 405, (method, path)
        assert answer.headers["Allow"] == allow
    assert site.inner.seen == []


# -- the page itself ----------------------------------------------------------------------


class _Inventory(HTMLParser):
    """What a page loads, and whether it holds inline script or style."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        found = dict(attrs)
        for name in ("src", "href", "action"):
            if found.get(name):
                self.urls.append(str(found[name]))
        if tag == "script" and not found.get("src"):
            self.inline.append("script")
        if tag == "style" or "style" in found:
            self.inline.append("style")
        if any(name.startswith("on") for name in found):
            self.inline.append("handler")


def test_the_pages_load_only_their_own_files_and_hold_no_inline_code(site: Site) -> None:
    sid = session_of(site.login())
    for html in (site.get("/").text, site.get("/", sid).text):
        inventory = _Inventory()
        inventory.feed(html)
        assert inventory.inline == []
        assert inventory.urls
        for url in inventory.urls:
            # Relative (the page may sit under a prefix), and never to another host.
            assert ":" not in url.split("?")[0] and not url.startswith(("/", "\\")), url
            if url.startswith("static/"):
                assert site.get("/" + url).status_code == 200, url


def test_the_script_never_puts_remote_data_in_as_html(site: Site) -> None:
    script = site.get("/static/app.js").text
    assert "innerHTML" not in script and "outerHTML" not in script
    assert "insertAdjacentHTML" not in script and "document.write" not in script
    assert "eval(" not in script and "new Function" not in script
    assert "http://" not in script and "https://" not in script


def _wait(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_the_screenshots_docs_receiver_md_shows_are_there() -> None:
    docs = Path(__file__).resolve().parent.parent / "docs"
    text = (docs / "receiver.md").read_text(encoding="utf-8")
    shown = re.findall(r"!\[[^\]]*\]\((_static/page-[a-z-]+\.png)\)", text)
    assert len(shown) >= 3  # the login, the fleet, one server
    for name in shown:
        assert (docs / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_the_receiver_reads_the_key_the_middleware_sets() -> None:
    from lightd_sync._server.app import OPERATOR_ENVIRON

    assert OPERATOR_ENVIRON == OPERATOR_KEY


# -- in the receiver command ------------------------------------------------------------


def test_the_receiver_command_serves_the_page_with_secure_cookies(tmp_path: Path) -> None:
    """Without --nodes its one token logs in; the session then reads the operator's routes."""
    from .test_cli import Streaming, cli_env

    proc = Streaming(
        "receiver",
        "--port",
        "0",
        "--no-audit",
        "--secure-cookies",
        env=cli_env(LIGHTD_REMOTE_TOKEN=TOKEN),
    )
    try:
        line = proc.wait_for(r"listening on http://")
        url = line.split("listening on ", 1)[1].split()[0]
        assert requests.get(url + "/servers", timeout=10).status_code == 401
        login = requests.post(
            url + "/login", data={"token": TOKEN}, allow_redirects=False, timeout=10
        )
        assert login.status_code == 303
        cookie = login.headers["Set-Cookie"]
        assert cookie.startswith(SECURE_COOKIE + "=") and cookie.endswith("; Secure")
        headers = {"Cookie": cookie.split(";")[0]}
        answer = requests.get(url + "/summary", headers=headers, timeout=10)
        assert answer.status_code == 200 and "counts" in answer.json()
        assert requests.get(url + "/", headers=headers, timeout=10).text.count("app.js") == 1
    finally:
        proc.stop()
    assert TOKEN not in proc.stdout_text + proc.stderr_text


def test_the_page_works_under_a_prefix_a_proxy_strips() -> None:
    """``location /lightd/ { proxy_pass http://receiver/; }``: every URL of the page is relative."""
    inner = Recorder()
    page = StatusPage(inner, operator_token=TOKEN)

    def mounted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ["PATH_INFO"]
        assert path.startswith("/lightd/"), path  # nothing may escape the prefix
        environ["SCRIPT_NAME"], environ["PATH_INFO"] = "/lightd", path[len("/lightd") :]
        return page(environ, start_response)

    with serve(mounted) as server:
        base = server.url + "/lightd/"
        with requests.Session() as browser:
            login_page = browser.get(base, timeout=10).text
            inventory = _Inventory()
            inventory.feed(login_page)
            for url in inventory.urls:
                if not url.startswith("#"):
                    target = urljoin(base, url)
                    if url == "login":
                        answer = browser.post(target, data={"token": TOKEN}, timeout=10)
                        assert answer.url == base and "app.js" in answer.text
                    else:
                        assert browser.get(target, timeout=10).status_code == 200, url
            assert browser.get(urljoin(base, "servers"), timeout=10).ok
            assert inner.seen[-1] == ("/servers", True)
