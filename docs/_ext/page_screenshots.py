"""
Take the status page's screenshots for docs/receiver.md: ``python docs/_ext/page_screenshots.py``.

It runs the receiver command on 127.0.0.1 with five nodes, fills it with a
demo fleet over HTTP (each node with its own token: installs, failures with
Lightd's error values, a stuck install, billing events), lets one node go
stale, and photographs the login form, the fleet and one server's history in
Debian's headless chromium (``/usr/bin/chromium``, driven by Playwright; no
browser is downloaded). The PNGs go to ``docs/_static/``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import requests

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "_static"
CHROMIUM = "/usr/bin/chromium"
OPERATOR = "lightd_" + "5" * 32
NODES = {
    "eu-fra-1": "lightd_" + "a1" * 16,
    "eu-ams-2": "lightd_" + "b2" * 16,
    "us-nyc-1": "lightd_" + "c3" * 16,
    "ap-sgp-1": "lightd_" + "d4" * 16,  # heard from once, then silent: stale
    "us-sfo-3": "lightd_" + "e5" * 16,  # configured, never heard from
}
STALE_AFTER, STUCK_AFTER = 6, 15
ERRORS = [
    ("failed", "docker pull ghcr.io/acme/shop:4.2: manifest unknown"),
    ("timeout", None),
    ("failed", "install script exited with 137 (out of memory)"),
    ("disk quota exceeded", "needed 40 GB on /var/lib/lightd, 12 GB free"),
]


def send(url: str, node: str, body: dict[str, Any]) -> None:
    headers = {"Authorization": f"Bearer {NODES[node]}", "X-Lightd-Event-Id": str(uuid.uuid4())}
    answer = requests.post(url + "/update", json=body, headers=headers, timeout=10)
    answer.raise_for_status()


def heartbeats(url: str, stop: threading.Event) -> None:
    """The live nodes' health checks, as Lightd makes them (here every second)."""
    while not stop.wait(1.0):
        for node in ("eu-fra-1", "eu-ams-2", "us-nyc-1"):
            requests.get(
                url + "/health", headers={"Authorization": f"Bearer {NODES[node]}"}, timeout=10
            )


def billing(url: str, node: str, server: str, rng: random.Random) -> None:
    memory, cpus = rng.choice([(1, 1), (2, 1), (4, 2), (8, 4)])
    send(
        url,
        node,
        {
            "event": "billing",
            "server": server,
            "memory_gb": float(memory),
            "cpu_vcpus": float(cpus),
            "storage_gb": float(rng.choice([10, 20, 40, 80])),
            "egress_gb": round(rng.random() * 6, 2),
            "duration_hours": 1.0,
            "estimated_cost": round(0.006 * memory + 0.011 * cpus + rng.random() * 0.01, 4),
            "timestamp": int(time.time()) - rng.randint(0, 3000),
        },
    )


def fill(url: str) -> None:
    rng = random.Random(7)  # noqa: S311 - a demo fleet, not a secret
    send(url, "ap-sgp-1", {"event": "update", "server": "ap-game-0042", "status": "ready"})
    billing(url, "ap-sgp-1", "ap-game-0042", rng)
    # Two installs that will be stuck by the time the page is shown.
    for server, node in (("api-eu-0007", "eu-fra-1"), ("db-us-0113", "us-nyc-1")):
        send(url, node, {"event": "update", "server": server, "status": "installing"})
    time.sleep(max(STALE_AFTER, STUCK_AFTER) + 0.5)
    kinds = ["mc", "shop", "api", "db", "web"]
    live = ["eu-fra-1", "eu-ams-2", "us-nyc-1"]
    for i in range(42):
        node = live[i % 3]
        server = f"{kinds[i % 5]}-{node[:2]}-{i * 37 % 1000:04d}"
        send(url, node, {"event": "update", "server": server, "status": "installing"})
        roll = rng.random()
        if roll < 0.14:
            error, data = ERRORS[i % len(ERRORS)]
            body = {"event": "update", "server": server, "error": error}
            if data is not None:
                body["data"] = data
            send(url, node, body)
        elif roll < 0.9:
            send(url, node, {"event": "update", "server": server, "status": "ready"})
            billing(url, node, server, rng)
            billing(url, node, server, rng)


def shoot(url: str, out: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        context = browser.new_context(
            viewport={"width": 1360, "height": 860}, device_scale_factor=1, color_scheme="light"
        )
        page = context.new_page()
        page.goto(url + "/")
        page.screenshot(path=str(out / "page-login.png"))
        page.fill("#token", OPERATOR)
        page.click("button[type=submit]")
        expect(page.locator("#servers tr").first).to_be_visible()
        page.wait_for_timeout(500)
        page.set_viewport_size({"width": 1360, "height": 1240})  # counts, nodes, 25 rows
        page.screenshot(path=str(out / "page-fleet.png"))
        page.set_viewport_size({"width": 1360, "height": 860})
        failed = page.locator("#servers tr.status-failed a").first
        failed.click()
        expect(page.locator("#history tr").first).to_be_visible()
        page.wait_for_timeout(300)
        page.screenshot(path=str(out / "page-failed-server.png"), full_page=True)
        dark = browser.new_context(
            viewport={"width": 1360, "height": 860}, device_scale_factor=1, color_scheme="dark"
        )
        page = dark.new_page()
        page.goto(url + "/")
        page.fill("#token", OPERATOR)
        page.click("button[type=submit]")
        page.click('#status-filter button[data-status="ready"]')
        expect(page.locator("#servers tr.status-ready").first).to_be_visible()
        page.locator("#servers tr.status-ready a").first.click()
        expect(page.locator("#usage tr").first).to_be_visible()
        page.wait_for_timeout(300)
        page.screenshot(path=str(out / "page-server-dark.png"), full_page=True)
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--out", type=Path, default=OUT, help="folder (default: docs/_static)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        nodes, operator = Path(folder, "nodes.json"), Path(folder, "operator.token")
        nodes.write_text(json.dumps(NODES), encoding="utf-8")
        operator.write_text(OPERATOR, encoding="utf-8")
        os.chmod(nodes, 0o600)
        os.chmod(operator, 0o600)
        command = [
            sys.executable, "-m", "lightd_sync", "receiver", "--port", "0", "--no-audit",
            "--nodes", str(nodes), "--operator-token-file", str(operator),
            "--stale-after", str(STALE_AFTER), "--stuck-after", str(STUCK_AFTER),
        ]  # fmt: skip
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)  # noqa: S603
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            match = re.search(r"listening on (http://\S+)", line)
            if not match:
                raise SystemExit(f"the receiver did not start: {line!r}")
            url = match.group(1)
            fill(url)
            stop = threading.Event()
            beating = threading.Thread(target=heartbeats, args=(url, stop), daemon=True)
            beating.start()
            try:
                shoot(url, args.out)
            finally:
                stop.set()
                beating.join(10)
        finally:
            proc.terminate()
            proc.wait(10)
    for name in sorted(args.out.glob("page-*.png")):
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
