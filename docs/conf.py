"""
Sphinx configuration of the lightd-sync documentation.

Build: ``tox -e docs`` (HTML and doctests, warnings are errors, nitpicky).
The built HTML works offline: no intersphinx, and the Mermaid script is served
from ``_static/mermaid`` next to the pages, never from a CDN (see
:func:`_vendor_mermaid`). At every build, ``_ext/wire_capture.py`` captures the
requests the http transport really sends, for ``protocol.md`` to include.
"""

from __future__ import annotations

import doctest
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import lightd_sync

# docs/_ext: this folder's own extension (mermaid_offline) and helpers (wire_capture).
sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))

project = "lightd-sync"
author = "The lightd-sync developers"
copyright = "The lightd-sync developers"
release = lightd_sync.__version__  # the one place: the installed distribution's metadata
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinxcontrib.mermaid",
    "mermaid_offline",  # after sphinxcontrib.mermaid: its page script, as a classic script
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "examples", "_generated", "_ext"]

# -- MyST --------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
myst_fence_as_directive = ["mermaid"]

# -- HTML --------------------------------------------------------------------
html_theme = "furo"
html_title = f"lightd-sync {release}"
html_static_path = ["_static"]
html_show_sourcelink = False

# -- Mermaid, served with the docs -------------------------------------------
# The extension's default imports mermaid from a CDN as an ES module when the
# page is viewed; offline readers would see the diagrams' source text, and a
# module script is refused to a page opened from disk (origin null) even when
# it is served next to it. _ext/mermaid_offline.py replaces that script with
# the UMD build of the npm package mermaid (MIT licence, kept next to it as
# LICENSE; one 2.7 MB file), loaded by a classic <script src> from
# _static/mermaid, at the version the extension expects. check_offline.py
# --render proves it in headless Chromium from file://.
MERMAID_VERSION = "11.12.1"
mermaid_version = MERMAID_VERSION
mermaid_include_elk = False
mermaid_include_zenuml = False
mermaid_d3_zoom = False
_HERE = Path(__file__).resolve().parent
_MERMAID_DIR = _HERE / "_static" / "mermaid"
_MERMAID_KEEP = ("LICENSE", "dist/mermaid.min.js")


def _vendor_mermaid() -> None:
    """
    Put mermaid's UMD build into ``_static/mermaid`` (once; the folder is not committed).

    ``npm pack`` fetches the package from the npm registry (npm checks its
    integrity); only ``dist/mermaid.min.js`` and the licence are kept. An
    offline machine can copy the folder from another build.
    """
    marker = _MERMAID_DIR / f"VERSION-{MERMAID_VERSION}-umd"
    if marker.exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            f"docs/_static/mermaid has no mermaid {MERMAID_VERSION} and npm is not installed: "
            "install npm (it fetches the package once), or copy that folder from another build"
        )
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(  # noqa: S603  (npm as found on PATH, fixed arguments)
            [npm, "pack", f"mermaid@{MERMAID_VERSION}", "--pack-destination", tmp, "--silent"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (archive,) = Path(tmp).glob("mermaid-*.tgz")
        if _MERMAID_DIR.exists():
            shutil.rmtree(_MERMAID_DIR)
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                name = member.name.removeprefix("package/")
                if name not in _MERMAID_KEEP or not member.isfile():
                    continue
                target = _MERMAID_DIR / name.removeprefix("dist/")
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                target.write_bytes(source.read())
    missing = [
        name for name in _MERMAID_KEEP if not (_MERMAID_DIR / name.removeprefix("dist/")).is_file()
    ]
    if missing:
        raise RuntimeError(f"mermaid {MERMAID_VERSION} from npm lacks {missing}")
    marker.write_text(f"mermaid {MERMAID_VERSION} from npm, MIT licence (LICENSE)\n")


_vendor_mermaid()

# -- the requests on the wire, captured at every build -------------------------
import wire_capture  # noqa: E402  (found in _ext, on sys.path above)

wire_capture.write(_HERE / "_generated")

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
_DOCS = str(_HERE)
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
    # DeliveryError's docstring names REASONS, which lightd_sync does not export
    # (yet): nothing public to link to.
    (r"py:data", r"REASONS"),
    # The WSGI type aliases of the (private) server module.
    (r"py:.*", r"(WSGIApplication|WSGIEnvironment|StartResponse|AuditTarget|Store|PostgresStore)"),
    # The TypeVar of start() and __enter__ (they return the engine itself).
    (r"py:class", r"lightd_sync\._engine\.engine\._E"),
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
