"""
``python docs/_ext/check_offline.py docs/_build/html``: the pages load nothing from elsewhere.

Fails (exit 1, naming each page and URL) if an HTML page has a ``<script src>``,
a stylesheet ``<link href>`` or an ES module ``import`` of an absolute URL
(``http:``, ``https:`` or ``//``): offline readers would see a diagram's source
text instead of the diagram. ``tox -e docs`` runs it after the build.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

__all__ = ["external_loads", "main"]

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


def main(argv: list[str]) -> int:
    folder = Path(argv[0] if argv else "docs/_build/html")
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
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
