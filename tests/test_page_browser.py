"""
The status page in a real browser: Debian's chromium, driven by Playwright, on the receiver.

The receiver is the command an operator runs (``python -m lightd_sync
receiver --nodes ...``), on 127.0.0.1 and a port of the OS's choosing; nodes
fill it over HTTP with their own tokens, and a real :class:`SyncEngine` sends
the live update. The browser is ``/usr/bin/chromium`` (never one Playwright
downloads). Every request the page makes is recorded; one for another host
would be refused and fails the test.

tox runs this file in one env of the matrix (py311): the others set
``LIGHTD_SYNC_BROWSER=0``. Where chromium or Playwright is missing it skips,
except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from lightd_sync import RemoteConfig, SyncEngine

from .test_cli import Streaming

CHROMIUM = "/usr/bin/chromium"
OPERATOR = "lightd_0perat0r0000000000000000000000000a"
NODES = {
    "node-a": "lightd_a0000000000000000000000000000001",
    "node-b": "lightd_b0000000000000000000000000000002",
    "node-c": "lightd_c0000000000000000000000000000003",  # never heard from
}
HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        os.environ.get("LIGHTD_SYNC_BROWSER") == "0",
        reason="LIGHTD_SYNC_BROWSER=0: tox runs the browser test in one env of the matrix (py311)",
    ),
]


def _playwright() -> Any:
    """Playwright's sync API, or a skip (a failure under CI=true) saying what is missing."""
    missing = None
    try:
        from playwright import sync_api
    except ImportError:
        missing = "Playwright for Python is not installed (pip install playwright)"
    if missing is None and not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        missing = f"no chromium at {CHROMIUM} (apt-get install chromium)"
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser test: {missing}")
        pytest.skip(missing)
    return sync_api


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The receiver command with three nodes, filled by two of them; yields its URL."""
    folder = tmp_path_factory.mktemp("page")
    nodes, operator = folder / "nodes.json", folder / "operator.token"
    nodes.write_text(json.dumps(NODES), encoding="utf-8")
    operator.write_text(OPERATOR + "\n", encoding="utf-8")
    os.chmod(nodes, 0o600)
    os.chmod(operator, 0o600)
    proc = Streaming(
        "receiver",
        "--port",
        "0",
        "--nodes",
        str(nodes),
        "--operator-token-file",
        str(operator),
        "--stuck-after",
        "1",
        "--no-audit",
    )
    try:
        line = proc.wait_for(r"listening on http://")
        url = line.split("listening on ", 1)[1].split()[0]
        _fill(url)
        yield url
    finally:
        proc.stop()
        assert OPERATOR not in proc.stdout_text + proc.stderr_text


def _send(url: str, node: str, body: dict[str, Any]) -> None:
    answer = requests.post(
        url + "/update",
        json=body,
        headers={"Authorization": f"Bearer {NODES[node]}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text


def _fill(url: str) -> None:
    """Twelve servers on node-a and node-b: ready, failed (three), stuck installing; usage."""
    for i in range(8):
        node = "node-a" if i % 2 else "node-b"
        _send(url, node, {"event": "update", "server": f"web-{i:02d}", "status": "installing"})
        _send(url, node, {"event": "update", "server": f"web-{i:02d}", "status": "ready"})
    _send(url, "node-a", {"event": "update", "server": "db-01", "status": "installing"})
    _send(url, "node-a", {"event": "update", "server": "db-01", "error": "timeout"})
    _send(url, "node-b", {"event": "update", "server": "db-02", "error": "failed", "data": HOSTILE})
    _send(url, "node-b", {"event": "update", "server": "db-03", "error": "disk quota exceeded"})
    _send(url, "node-a", {"event": "update", "server": "mc-stuck", "status": "installing"})
    for server, cost in (("web-01", 0.0421), ("web-02", 1.5)):
        _send(
            url,
            "node-a" if server == "web-01" else "node-b",
            {
                "event": "billing",
                "server": server,
                "memory_gb": 2.0,
                "cpu_vcpus": 1.0,
                "storage_gb": 20.0,
                "egress_gb": 0.5,
                "duration_hours": 1.0,
                "estimated_cost": cost,
                "timestamp": int(time.time()),
            },
        )


def test_the_status_page_in_chromium(receiver: str) -> None:
    sync_api = _playwright()
    origin = urlsplit(receiver).netloc
    requested: list[str] = []
    refused: list[str] = []
    errors: list[str] = []

    def guard(route: Any) -> None:
        url = route.request.url
        requested.append(url)
        if urlsplit(url).netloc == origin and url.startswith("http://"):
            route.continue_()
        else:
            refused.append(url)
            route.abort()

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            context = browser.new_context(base_url=receiver, locale="en-US")
            context.route("**/*", guard)
            page = context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.set_default_timeout(10_000)
            _login(sync_api.expect, page, context)
            _fleet(sync_api.expect, page)
            _filter_and_history(sync_api.expect, page)
            _live(sync_api.expect, page, receiver)
            _hidden_tab(page)
            _logout(sync_api.expect, page, context, receiver)
        finally:
            browser.close()

    # Nothing left for another host; the script threw nothing.
    assert refused == []
    assert requested and all(urlsplit(url).netloc == origin for url in requested)
    assert errors == []


def _login(expect: Any, page: Any, context: Any) -> None:
    """A wrong token is refused; the operator token opens the page."""
    page.goto("/")
    expect(page.locator("#token")).to_be_visible()
    page.fill("#token", OPERATOR[:-1] + "b")
    page.click("button[type=submit]")
    expect(page.locator(".notice.error")).to_contain_text("not the operator token")
    assert context.cookies() == []
    page.fill("#token", OPERATOR)
    page.click("button[type=submit]")
    expect(page.locator("#list-view")).to_be_visible()


def _fleet(expect: Any, page: Any) -> None:
    """The counts, the nodes, the table: stuck, cost, a hostile value shown as text."""
    expect(page.locator("#n-failed")).to_have_text("3")
    expect(page.locator("#n-ready")).to_have_text("8")
    expect(page.locator("#n-installing")).to_have_text("1")
    expect(page.locator("#n-all")).to_have_text("12")
    expect(page.locator("#n-stuck")).to_have_text("1")
    expect(page.locator("#nodes li")).to_have_count(3)
    expect(page.locator("#nodes li.node.online")).to_have_count(2)
    expect(page.locator("#nodes li.node.never_seen")).to_contain_text("node-c")
    expect(page.locator("#servers tr")).to_have_count(12)
    stuck = page.locator('#servers tr[data-server="mc-stuck"]')
    expect(stuck).to_have_class("status-installing stuck")
    expect(stuck).to_contain_text("stuck")
    expect(stuck).to_contain_text("node-a")
    expect(page.locator('#servers tr[data-server="web-02"]')).to_contain_text("1.50")
    expect(page.locator('#servers tr[data-server="web-01"]')).to_contain_text("1 vCPU")
    hostile = page.locator('#servers tr[data-server="db-02"]')
    expect(hostile).to_contain_text(HOSTILE)  # shown as text, never as markup
    assert page.locator("#servers img").count() == 0
    expect(page.locator('#servers tr[data-server="db-01"]')).to_contain_text("timeout")
    updated = page.locator('#servers tr[data-server="web-00"] td.time')
    expect(updated).to_have_text(re.compile(r"^(just now|\d+ s ago|1 min ago)$"))
    expect(updated).to_have_attribute("title", re.compile(r"^\d{4}-\d\d-\d\dT.*Z$"))


def _filter_and_history(expect: Any, page: Any) -> None:
    """The failed filter, then one server's history in its own view."""
    page.click('#status-filter button[data-status="failed"]')
    expect(page.locator("#servers tr")).to_have_count(3)
    expect(page.locator("#servers tr.status-failed")).to_have_count(3)
    assert "status=failed" in page.url
    expect(page.locator("#csv")).to_have_attribute("href", "servers.csv?status=failed")
    csv = page.request.get("/servers.csv?status=failed")  # with the page's session cookie
    assert csv.status == 200 and len(csv.text().strip().splitlines()) == 1 + 3
    page.click('#servers tr[data-server="db-01"] a')
    expect(page.locator("#detail-view")).to_be_visible()
    expect(page.locator("#detail-title")).to_have_text("db-01")
    rows = page.locator("#history tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("failed")
    expect(rows.nth(0)).to_contain_text("timeout")
    expect(rows.nth(1)).to_contain_text("installing")
    assert "#/server/db-01" in page.url
    page.click("#back")
    expect(page.locator("#servers tr")).to_have_count(12)


def _live(expect: Any, page: Any, receiver: str) -> None:
    """An update a real SyncEngine sends shows within 5 s, without a reload."""
    config = RemoteConfig(enabled=True, url=receiver, token=NODES["node-b"])
    with SyncEngine(config) as engine:
        sent = time.monotonic()
        assert engine.update("aaa-live", "ready")
        live = page.locator('#servers tr[data-server="aaa-live"]')
        expect(live).to_be_visible(timeout=5_000)
        shown = time.monotonic() - sent
        expect(live).to_contain_text("node-b")
        expect(page.locator("#n-ready")).to_have_text("9", timeout=5_000)
    assert shown < 5.0, shown


_VISIBILITY = """state => {
    Object.defineProperty(document, "visibilityState", {configurable: true, get: () => state});
    document.dispatchEvent(new Event("visibilitychange"));
}"""


def _hidden_tab(page: Any) -> None:
    """A hidden tab polls nothing; shown again, it asks at once."""
    polls: list[float] = []
    page.on("request", lambda r: polls.append(time.monotonic()) if "summary" in r.url else None)
    page.evaluate(_VISIBILITY, "hidden")
    hidden = time.monotonic()
    # Absence can only be watched for a while: longer than a poll interval (2 s) and one in flight.
    page.wait_for_timeout(3_000)
    assert [t for t in polls if t > hidden + 0.5] == []
    # Taken before the tab is shown: its handler asks at once, and Playwright may
    # hand us that request's event while evaluate() is still returning.
    shown = time.monotonic()
    page.evaluate(_VISIBILITY, "visible")
    deadline = shown + 2.0
    while not [t for t in polls if t >= shown] and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert [t for t in polls if t >= shown], "no poll after the tab was shown again"


def _logout(expect: Any, page: Any, context: Any, receiver: str) -> None:
    """Logging out ends the session on the server too."""
    session = [c for c in context.cookies() if c["name"].endswith("session")]
    assert len(session) == 1 and session[0]["httpOnly"]
    assert session[0]["sameSite"] == "Strict"
    page.click("#logout")
    expect(page.locator("#token")).to_be_visible()
    assert context.cookies() == []
    stale = requests.get(
        receiver + "/servers",
        headers={"Cookie": f"{session[0]['name']}={session[0]['value']}"},
        timeout=10,
    )
    assert stale.status_code == 401
    assert page.title() != "pwned"


FLEET = 100_000


@pytest.fixture(scope="module")
def big_receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The receiver command without --nodes (its one token logs in), holding 100,000 servers."""
    folder = tmp_path_factory.mktemp("fleet")
    token = folder / "token"
    token.write_text(OPERATOR, encoding="utf-8")
    os.chmod(token, 0o600)
    proc = Streaming(
        "receiver",
        "--port",
        "0",
        "--token-file",
        str(token),
        "--db",
        str(folder / "fleet.sqlite3"),
        "--batch-max",
        "2000",
        "--no-audit",
    )
    try:
        line = proc.wait_for(r"listening on http://")
        url = line.split("listening on ", 1)[1].split()[0]
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {OPERATOR}"
            for start in range(0, FLEET, 2000):
                batch = [
                    {"event": "update", "server": f"srv-{n:06d}", "status": "ready"}
                    if n % 17
                    else {"event": "update", "server": f"srv-{n:06d}", "error": "timeout"}
                    for n in range(start, start + 2000)
                ]
                answer = session.post(url + "/updates", json={"updates": batch}, timeout=60)
                assert answer.status_code == 200, answer.text[:300]
        yield url
    finally:
        proc.stop()


def test_the_first_page_of_100000_servers_shows_within_a_second(big_receiver: str) -> None:
    """The page asks for one page of servers, whatever the fleet; it shows in well under 1 s."""
    sync_api = _playwright()
    servers_asked: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(base_url=big_receiver, locale="en-US")
            page.set_default_timeout(10_000)
            page.goto("/")
            page.fill("#token", OPERATOR)
            page.click("button[type=submit]")
            sync_api.expect(page.locator("#servers tr")).to_have_count(50)
            page.on(
                "request",
                lambda r: servers_asked.append(r.url) if "/servers" in r.url else None,
            )
            page.reload()  # the first load, logged in: measured from navigation start
            page.wait_for_function(
                "() => document.querySelectorAll('#servers tr').length === 50", polling="raf"
            )
            shown_ms = page.evaluate("performance.now()")
            sync_api.expect(page.locator("#n-all")).to_have_text(f"{FLEET:,}")
            sync_api.expect(page.locator("#n-failed")).to_have_text(f"{FLEET // 17 + 1:,}")
        finally:
            browser.close()
    print(f"first page of {FLEET} servers shown {shown_ms:.0f} ms after navigation start")
    assert shown_ms < 1000, shown_ms
    assert servers_asked and all("limit=50" in url for url in servers_asked), servers_asked
