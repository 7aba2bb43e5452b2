"""
Mermaid diagrams that render from disk (``file://``) as well as over HTTP.

sphinxcontrib-mermaid draws each diagram in the browser with an inline
``<script type="module">`` that imports ``mermaid.esm.min.mjs``. Opened from
disk, a page's origin is ``null`` and Chromium refuses to fetch any module
script for it (CORS): every diagram stays as its ``flowchart TB ...`` text.
A classic script has no such rule. This extension keeps the extension's
``mermaid`` directive and its ``<pre class="mermaid">`` output, replaces its
page script with mermaid's UMD build (``_static/mermaid/mermaid.min.js``, a
plain ``<script src>`` that defines ``window.mermaid``) and a classic script
that renders the page's diagrams once it is parsed.

Add it to ``extensions`` after ``sphinxcontrib.mermaid``.
``check_offline.py --render`` opens a built page from disk in headless
Chromium and fails when a diagram did not become an ``<svg>``.
"""

from __future__ import annotations

from typing import Any

from sphinx.errors import ExtensionError
from sphinxcontrib import mermaid as sphinx_mermaid

__all__ = ["RENDER_JS", "UMD_SCRIPT", "setup"]

#: Mermaid's UMD build, relative to ``_static`` (conf.py puts it there).
UMD_SCRIPT = "mermaid/mermaid.min.js"

#: Renders every diagram of the page, in furo's light or dark scheme. A classic
#: script: no ``import``, so it runs from ``file://`` too.
RENDER_JS = """\
document.addEventListener("DOMContentLoaded", function () {
  var theme = document.body.dataset.theme;
  var dark = theme === "dark" || (theme !== "light" && window.matchMedia &&
    window.matchMedia("(prefers-color-scheme: dark)").matches);
  window.mermaid.initialize({startOnLoad: false, theme: dark ? "dark" : "default"});
  window.mermaid.run({querySelector: "pre.mermaid"});
});
"""


def _install_js(
    app: Any, pagename: str, templatename: str, context: dict[str, Any], doctree: Any
) -> None:
    """Add the two scripts to the pages that hold a diagram (and only to those)."""
    if doctree is None or doctree.next_node(sphinx_mermaid.mermaid) is None:
        return
    app.add_js_file(UMD_SCRIPT, priority=500)
    app.add_js_file(None, body=RENDER_JS, priority=501)


def setup(app: Any) -> dict[str, Any]:
    # The extension's own page script is an ES module: take its listener off.
    found = [
        listener.id
        for listener in app.events.listeners.get("html-page-context", [])
        if listener.handler is sphinx_mermaid.install_js
    ]
    if not found:
        raise ExtensionError(
            "sphinxcontrib.mermaid's install_js is not connected: load this extension after it"
        )
    for listener_id in found:
        app.disconnect(listener_id)
    app.connect("html-page-context", _install_js)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
