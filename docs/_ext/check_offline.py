"""
``python docs/_ext/check_offline.py [--render] docs/_build/html``: the pages work offline.

Fails (exit 1, naming each page and URL) if an HTML page has a ``<script src>``,
a stylesheet ``<link href>`` or an ES module ``import`` of an absolute URL
(``http:``, ``https:`` or ``//``): offline readers would see a diagram's source
text instead of the diagram.

With ``--render``, it also opens every page that holds a Mermaid diagram from
disk (``file://``, origin ``null``), and then over HTTP from 127.0.0.1, in
headless Chromium (``/usr/bin/chromium``
from Debian, or ``$CHROMIUM``) and fails if a diagram is still its source text
instead of an ``<svg>``: a module script, for one, is refused to such a page.
``tox -e docs`` runs it after the build.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import threading
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["chromium", "external_loads", "main", "render", "unrendered_diagrams"]

_REMOTE = re.compile(r"^\s*(https?:)?//", re.IGNORECASE)
# import x from "URL";  import("URL");  import "URL";
_IMPORT = re.compile(r"""\bimport\b[^"'`;]*?(?:\bfrom\s*)?\(?\s*["'`]([^"'`]+)["'`]""")


class _Loads(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script":
            self._in_script = True
            if found.get("src"):
                self.urls.append(found["src"] or "")
        elif tag == "link" and (found.get("rel") or "") in ("stylesheet", "modulepreload"):
            self.urls.append(found.get("href") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.urls += _IMPORT.findall(data)


def external_loads(html: str) -> list[str]:
    """The absolute URLs that *html* loads a script or stylesheet from."""
    parser = _Loads()
    parser.feed(html)
    return [url for url in parser.urls if _REMOTE.match(url)]


class _Diagrams(HTMLParser):
    """The text and the child tags of every ``<pre class="mermaid">``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, list[str]]] = []  # (text, tags inside)
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._depth:
            self.found[-1][1].append(tag)
            if tag == "pre":
                self._depth += 1
        elif tag == "pre" and "mermaid" in (dict(attrs).get("class") or "").split():
            self.found.append(("", []))
            self._depth = 1

    def handle_endtag(self, tag: str) -> None:
        if self._depth and tag == "pre":
            self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._depth and not self.found[-1][1]:  # the text before any tag: the source
            text, tags = self.found[-1]
            self.found[-1] = (text + data, tags)


def diagrams(html: str) -> int:
    """How many Mermaid diagrams (``<pre class="mermaid">``) *html* holds."""
    parser = _Diagrams()
    parser.feed(html)
    return len(parser.found)


def unrendered_diagrams(dom: str) -> list[str]:
    """The first line of each diagram of a rendered *dom* that is not an ``<svg>``."""
    parser = _Diagrams()
    parser.feed(dom)
    return [
        (text.strip().splitlines() or ["(empty)"])[0]
        for text, tags in parser.found
        if "svg" not in tags
    ]


def chromium() -> str | None:
    """The Chromium to render with: ``$CHROMIUM``, else ``chromium`` on ``PATH``."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium")


def render(url: str, browser: str, budget_ms: int = 10_000) -> str:
    """The DOM of *url* (``file://`` or ``http://``) in headless *browser*, scripts run."""
    command = [browser, "--headless", "--disable-gpu", "--no-first-run"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    command += [f"--virtual-time-budget={budget_ms}", "--dump-dom", url]
    done = subprocess.run(  # noqa: S603  (a fixed command line)
        command, capture_output=True, text=True, encoding="utf-8", timeout=120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{browser} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout


def _check_rendering(folder: Path, pages: list[Path]) -> int:
    browser = chromium()
    if browser is None:
        print(
            "--render needs Chromium: apt-get install chromium (or set CHROMIUM=/path/to/it)",
            file=sys.stderr,
        )
        return 1
    with_diagrams = [page for page in pages if diagrams(page.read_text("utf-8"))]
    if not with_diagrams:
        print(f"{folder}: no page holds a Mermaid diagram", file=sys.stderr)
        return 1
    failed = 0
    handler = functools.partial(_QuietHandler, directory=str(folder))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        serving = threading.Thread(
            target=server.serve_forever, name="check-offline-http", daemon=True
        )
        serving.start()
        try:
            for page in with_diagrams:
                expected = diagrams(page.read_text("utf-8"))
                name = page.relative_to(folder).as_posix()
                http = f"http://127.0.0.1:{server.server_address[1]}/{name}"
                ways = (("opened from disk", page.resolve().as_uri()), ("over HTTP", http))
                for how, url in ways:
                    dom = render(url, browser)
                    left = unrendered_diagrams(dom)
                    if diagrams(dom) != expected or left:
                        failed += 1
                        first = left[0] if left else f"{diagrams(dom)} diagrams in the DOM"
                        print(
                            f"{name}: {how}, {len(left)} of {expected} diagrams are not drawn "
                            f"(first: {first!r})",
                            file=sys.stderr,
                        )
        finally:
            server.shutdown()
            serving.join(timeout=10)
    if failed:
        return 1
    print(
        f"{len(with_diagrams)} pages opened in {browser}, from disk and over HTTP: "
        "every diagram is an <svg>"
    )
    return 0


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def main(argv: list[str]) -> int:
    check_render = "--render" in argv
    args = [arg for arg in argv if arg != "--render"]
    folder = Path(args[0] if args else "docs/_build/html")
    pages = sorted(folder.rglob("*.html"))
    if not pages:
        print(f"{folder}: no HTML pages: build the docs first", file=sys.stderr)
        return 1
    bad = [(page, url) for page in pages for url in external_loads(page.read_text("utf-8"))]
    for page, url in bad:
        print(f"{page.relative_to(folder)}: loads {url} from another host", file=sys.stderr)
    if bad:
        return 1
    print(f"{len(pages)} pages: every script and stylesheet is served with the docs")
    return _check_rendering(folder, pages) if check_render else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
