"""
Sphinx configuration of the lightd-sync documentation.

Build: ``tox -e docs`` (HTML and doctests, warnings are errors, nitpicky).
Everything here works offline: no intersphinx, and the Mermaid diagram is
rendered by the reader's browser, not at build time.
"""

from __future__ import annotations

import doctest
import importlib.metadata
import os
import re
from typing import Any

project = "lightd-sync"
author = "The lightd-sync developers"
copyright = "The lightd-sync developers"
try:
    release = importlib.metadata.version("lightd-sync")
except importlib.metadata.PackageNotFoundError:  # a source tree that is not installed
    release = "0.1.0"
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinxcontrib.mermaid",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "examples"]

# -- MyST --------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
myst_fence_as_directive = ["mermaid"]

# -- HTML --------------------------------------------------------------------
html_theme = "furo"
html_title = f"lightd-sync {release}"
html_static_path: list[str] = []
html_show_sourcelink = False

# -- autodoc -----------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
napoleon_use_rtype = False
python_use_unqualified_type_names = True

# -- doctest -----------------------------------------------------------------
# Every doctest is self-contained; this only spares each page the imports.
_DOCS = os.path.dirname(os.path.abspath(__file__))
doctest_global_setup = f"""
import lightd_sync
from lightd_sync import *
DOCS = {_DOCS!r}  # testing.md runs the example project in DOCS/examples
"""
doctest_default_flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
# Only ```{doctest} blocks and the docstrings' >>> examples run, not ```python
# examples that need a config file or a network.
doctest_test_doctest_blocks = "default"

# -- nitpicky cross-references, offline --------------------------------------
# Without intersphinx (there is no network), the standard library and the
# dependencies' types that appear in signatures cannot resolve: ignore those,
# and only those.
_STDLIB = (
    "typing",
    "collections",
    "os",
    "types",
    "threading",
    "sqlite3",
    "socket",
    "io",
    "datetime",
    "logging",
    "enum",
    "pathlib",
    "wsgiref",
)
_DEPENDENCIES = ("attrs", "attr", "cattrs", "urllib3", "requests", "waitress", "psycopg")
_BUILTINS = (
    "str",
    "int",
    "float",
    "bool",
    "bytes",
    "dict",
    "list",
    "tuple",
    "set",
    "frozenset",
    "object",
    "type",
    "None",
    "Ellipsis",
    "Exception",
    "BaseException",
    "ValueError",
    "TypeError",
    "RuntimeError",
    "OSError",
    "AssertionError",
    "KeyError",
)
nitpick_ignore_regex = [
    (r"py:.*", rf"({'|'.join(map(re.escape, _STDLIB + _DEPENDENCIES))})(\..*)?"),
    (r"py:.*", rf"({'|'.join(_BUILTINS)})"),
    # typing's names as Sphinx prints them once unqualified.
    (r"py:.*", r"(Any|Optional|Union|Callable|Iterable|Iterator|Mapping|IO|PathLike)"),
    # The WSGI type aliases of the (private) server module.
    (r"py:.*", r"(WSGIApplication|WSGIEnvironment|StartResponse|AuditTarget|Store|PostgresStore)"),
]

# Public objects live in private modules (lightd_sync._engine.SyncEngine is
# documented as lightd_sync.SyncEngine). Type hints name the private path;
# send such references to the public name when there is one.
_PUBLIC_HOMES = ("lightd_sync", "lightd_sync.receiver", "lightd_sync.api", "lightd_sync.testing")
_PRIVATE = re.compile(r"^lightd_sync(\.[A-Za-z_]\w*)*\._\w+(\.[A-Za-z_]\w*)*\.(?P<name>\w+)$")


def _public_reference(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    match = _PRIVATE.match(target)
    if match is not None:
        candidates = [f"{home}.{match['name']}" for home in _PUBLIC_HOMES]
    elif not target.startswith("lightd_sync."):
        # A short name in a docstring of a module whose objects are documented
        # elsewhere (``Update.event_id`` in the receiver's store): try the package.
        candidates = [f"lightd_sync.{target}"]
    else:
        return None
    domain = env.get_domain("py")
    for public in candidates:
        if domain.objects.get(public) is None:
            continue
        found = domain.resolve_xref(
            env, node["refdoc"], app.builder, node["reftype"], public, node, contnode
        )
        if found is not None:
            return found
    return None


def setup(app: Any) -> dict[str, Any]:
    app.connect("missing-reference", _public_reference)
    return {"parallel_read_safe": True}
