"""
Release 0.2.0: what a newcomer reads and types is true.

- One version everywhere: ``--version``, the package metadata, the newest
  CHANGELOG section and the docs' ``release``.
- No doc tells the user to install lightd-sync from a package index (it is on none).
- The README's example logs and prints the counters after the ``with`` block;
  run as written (its config path aside), it delivers and prints final counters.
- The README's agent example starts the agent (which needs an API token).
- The tutorial names the server ``serve()`` runs on; index.md's cost claim points
  at performance.md.
- docs/_ext/check_offline.py, which ``tox -e docs`` runs with ``--render``, finds a
  diagram that Chromium could not draw from ``file://``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import lightd_sync

from .conftest import TOKEN
from .test_cli import cli_env, running_receiver, write_config

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
CHANGELOG = ROOT / "CHANGELOG.md"
#: A subprocess's budget: interpreter start-up, an engine, a flush.
RUN_TIMEOUT = 30


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def user_docs() -> dict[str, str]:
    """Every page a user reads: README, CHANGELOG and docs/*.md."""
    pages = {path.name: text(path) for path in sorted(DOCS.glob("*.md"))}
    return {"README.md": text(README), "CHANGELOG.md": text(CHANGELOG), **pages}


def fenced(markdown: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", markdown, flags=re.M | re.S)


# -- one version ----------------------------------------------------------------------


def newest_changelog_section() -> re.Match[str]:
    match = re.search(r"^## \[([^\]]+)\](.*)$", text(CHANGELOG), flags=re.M)
    assert match is not None, "CHANGELOG.md has no version section"
    return match


def test_the_version_is_one_value_everywhere() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "lightd_sync", "--version"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=RUN_TIMEOUT,
        check=True,
    ).stdout.strip()
    metadata = importlib.metadata.version("lightd-sync")
    section = newest_changelog_section()
    conf = text(DOCS / "conf.py")
    assert re.search(r"^release = lightd_sync\.__version__\b", conf, flags=re.M)
    assert shown == f"lightd-sync {metadata}"
    assert lightd_sync.__version__ == metadata == section[1] == "0.2.0"


def test_the_newest_changelog_section_is_a_dated_release_in_keep_a_changelog_form() -> None:
    section = newest_changelog_section()
    assert re.fullmatch(r" - \d{4}-\d{2}-\d{2}", section[2]), section[0]
    changelog = text(CHANGELOG)
    assert "[Unreleased]" not in changelog.split(section[0], 1)[0]
    body = changelog.split(section[0], 1)[1].split("\n## ", 1)[0]
    kinds = re.findall(r"^### (.+)$", body, flags=re.M)
    assert kinds, "the section has no Added / Changed / ... groups"
    allowed = ["Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"]
    assert [kind for kind in allowed if kind in kinds] == kinds, kinds
    assert "0.2.0-dev" not in changelog


def test_the_docs_show_no_development_version() -> None:
    for name, page in user_docs().items():
        # performance.md's appendix is the history, dated by commits
        shown = page.split("\n## Appendix", 1)[0] if name == "performance.md" else page
        assert "0.2.0-dev" not in shown, name


def test_the_docs_quote_the_running_version() -> None:
    quoted = {
        (name, found)
        for name, page in user_docs().items()
        if name != "CHANGELOG.md"
        for found in re.findall(r"lightd-sync[-/](\d+\.\d+\.\d+)", page)
    }
    assert quoted, "no doc quotes the version any more: drop this test"
    assert {found for _, found in quoted} == {lightd_sync.__version__}, sorted(quoted)


# -- install commands -----------------------------------------------------------------

_INSTALL = re.compile(r"pip install\s+([^`#\n]*)")


def index_installs(page: str) -> list[str]:
    """The arguments of ``pip install`` commands that name lightd-sync (from an index)."""
    found = []
    for match in _INSTALL.finditer(page):
        command = re.split(r"&&|\|\||;|\|", match[1])[0]  # this command only
        for word in shlex.split(command.replace("\\", ""), posix=True):
            if re.match(r"lightd[-_]sync\b", word, flags=re.I):
                found.append(word)
    return found


def test_the_install_finder_finds_index_installs() -> None:
    assert index_installs("python3 -m pip install 'lightd-sync[postgres]'\n") == [
        "lightd-sync[postgres]"
    ]
    assert index_installs("a server that `pip install lightd-sync` installs") == ["lightd-sync"]
    assert index_installs("pip install gunicorn lightd_sync") == ["lightd_sync"]
    assert index_installs("python3 -m pip install '.[postgres]'    # lightd-sync checkout") == []
    assert index_installs("python3 -m pip install . && python3 -m lightd_sync demo") == []


@pytest.mark.parametrize("name", sorted(user_docs()))
def test_no_doc_installs_lightd_sync_from_a_package_index(name: str) -> None:
    assert index_installs(user_docs()[name]) == [], (
        f"{name}: lightd-sync is on no package index: install from a checkout "
        "(pip install . / '.[postgres]') or a wheel built there"
    )


# -- the README's examples ------------------------------------------------------------


def readme_python_example() -> str:
    (example,) = [b for b in fenced(text(README), "python") if "SyncEngine.from_file" in b]
    return example


def test_the_readme_example_sets_up_logging_and_reads_the_counters_after_the_block() -> None:
    example = readme_python_example()
    lines = example.splitlines()
    logging_at = next(i for i, line in enumerate(lines) if "logging.basicConfig(" in line)
    with_at = next(i for i, line in enumerate(lines) if line.startswith("with SyncEngine"))
    (stats_line,) = [line for line in lines if "sync.stats()" in line]
    assert logging_at < with_at
    assert not stats_line.startswith(" "), "stats() is printed inside the with block"


def test_the_readme_example_runs_and_prints_the_final_counters(tmp_path: Path) -> None:
    with running_receiver() as receiver:
        config = write_config(tmp_path / "config.json", receiver.url)
        script = readme_python_example().replace("/etc/lightd/config.json", config)
        assert config in script
        (tmp_path / "example.py").write_text(script, encoding="utf-8")
        proc = subprocess.run(
            [sys.executable, "example.py"],
            capture_output=True,
            text=True,
            encoding="utf-8",
            env=cli_env(),
            cwd=tmp_path,
            timeout=RUN_TIMEOUT,
            check=True,
        )
        stored = receiver.store.latest()
    assert "submitted=3, delivered=3, failed=0, dropped=0, pending=0" in proc.stdout
    assert set(stored) == {"my-server-001", "my-server-002"}
    assert "INFO:lightd_sync" in proc.stderr  # the logging set-up shows the library's log


def readme_agent_example() -> tuple[dict[str, str], list[str], str]:
    """The README's agent block: (variables it exports, the agent's argv, its stdin)."""
    (block,) = [b for b in fenced(text(README), "sh") if "lightd-sync agent" in b]
    env: dict[str, str] = {}
    argv: list[str] = []
    stdin = []
    for line in block.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export ") :].split("#", 1)[0].strip().partition("=")
            # $(openssl rand -hex 16): 32 hex digits
            env[name] = re.sub(r"\$\(openssl rand -hex 16\)", "0123456789abcdef" * 2, value)
        elif line.startswith("lightd-sync agent"):
            argv = shlex.split(line)[1:]
        elif line.startswith("{"):
            stdin.append(line)
    assert argv and stdin
    return env, argv, "\n".join(stdin) + "\n"


def run_agent(tmp_path: Path, exported: dict[str, str]) -> subprocess.CompletedProcess[str]:
    _, argv, stdin = readme_agent_example()
    with running_receiver() as receiver:
        config = write_config(tmp_path / "config.json", receiver.url)
        args = [config if arg == "/etc/lightd/config.json" else arg for arg in argv]
        args = ["127.0.0.1:0" if re.fullmatch(r"127\.0\.0\.1:\d+", a) else a for a in args]
        env = {k: v for k, v in cli_env().items() if k != "LIGHTD_API_TOKEN"}
        return subprocess.run(
            [sys.executable, "-m", "lightd_sync", *args],
            input=stdin,
            capture_output=True,
            text=True,
            encoding="utf-8",
            env={**env, **exported},
            timeout=RUN_TIMEOUT,
            check=False,
        )


def test_the_readme_agent_example_gives_the_api_token_the_agent_needs(tmp_path: Path) -> None:
    exported, _, _ = readme_agent_example()
    proc = run_agent(tmp_path, exported)
    assert proc.returncode == 0, proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr


def test_without_the_readme_s_token_the_agent_refuses_to_start(tmp_path: Path) -> None:
    """What the old README's example did: the test above can fail."""
    proc = run_agent(tmp_path, {})
    assert proc.returncode == 2
    assert "no API token" in proc.stderr


# -- the tutorial and index.md --------------------------------------------------------


def test_the_tutorial_names_the_server_serve_runs_on() -> None:
    tutorial = " ".join(text(DOCS / "tutorial.md").split())
    assert "standard library's HTTP server" not in tutorial
    assert re.search(r"`~lightd_sync\.receiver\.serve` runs it on \[?waitress", tutorial)
    code = subprocess.run(
        [sys.executable, "-c", "import sys; from lightd_sync import receiver; "
         "app = receiver.create_app('x' * 32, audit=None); "
         "server = receiver.serve(app); print('waitress' in sys.modules); "
         "server.stop(); app.close()"],
        capture_output=True, text=True, env=cli_env(), timeout=RUN_TIMEOUT, check=True,
    )  # fmt: skip
    assert code.stdout.strip() == "True"


def test_the_tutorial_shows_the_logging_set_up() -> None:
    assert "logging.basicConfig(level=logging.INFO)" in text(DOCS / "tutorial.md")


def test_index_md_gives_the_cost_of_update_as_performance_md_measures_it() -> None:
    index = " ".join(text(DOCS / "index.md").split())
    assert "about a queue put" not in index
    assert re.search(r"`update\(\)`[^.]*queue\.Queue\.put_nowait[^.]*\{doc\}`performance`", index)
    (example,) = [b for b in fenced(text(DOCS / "index.md"), "python") if "SyncEngine" in b]
    assert example == readme_python_example()


# -- placeholders the integrator fills ------------------------------------------------


def test_no_placeholder_is_left_for_the_release() -> None:
    left = [name for name, page in user_docs().items() if "TBD-INTEGRATOR" in page]
    assert left == []


# -- diagrams drawn from file:// ------------------------------------------------------


def load_ext(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, DOCS / "_ext" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("dom", "left"),
    [
        ('<pre class="mermaid">flowchart TB\n  A --> B</pre>', ["flowchart TB"]),
        ('<pre class="mermaid" data-processed="true"><svg id="m1"><g></g></svg></pre>', []),
        ('<pre class="mermaid">sequenceDiagram</pre><pre class="mermaid"><svg></svg></pre>',
         ["sequenceDiagram"]),
        ('<pre class="literal">flowchart TB</pre>', []),
    ],
)  # fmt: skip
def test_the_render_check_finds_a_diagram_left_as_text(dom: str, left: list[str]) -> None:
    assert load_ext("check_offline").unrendered_diagrams(dom) == left


_DIAGRAM = '<pre class="mermaid">flowchart TB\n  A --> B</pre>\n'
#: What mermaid.run does to a diagram, as a classic script and as an ES module.
_DRAW = (
    "document.querySelectorAll('pre.mermaid').forEach(function (pre) {"
    " pre.innerHTML = '<svg><g></g></svg>'; });"
)


@pytest.mark.skipif(
    load_ext("check_offline").chromium() is None, reason="needs Chromium (apt-get install chromium)"
)
@pytest.mark.skipif(
    os.environ.get("LIGHTD_SYNC_BROWSER") == "0",
    reason="LIGHTD_SYNC_BROWSER=0: tox runs the browser checks in one env of the matrix (py311)",
)
def test_chromium_from_disk_draws_with_a_classic_script_and_not_with_a_module(
    tmp_path: Path,
) -> None:
    """The cause of the blank diagrams, reproduced: a module script is refused to file://."""
    check = load_ext("check_offline")
    (tmp_path / "draw.js").write_text(_DRAW, encoding="utf-8")
    (tmp_path / "draw.mjs").write_text(f"export default 1; {_DRAW}", encoding="utf-8")
    classic = tmp_path / "classic.html"
    classic.write_text(_DIAGRAM + '<script src="draw.js"></script>', encoding="utf-8")
    module = tmp_path / "module.html"
    module.write_text(
        _DIAGRAM + '<script type="module">import x from "./draw.mjs";</script>', encoding="utf-8"
    )
    browser = check.chromium()
    assert check.unrendered_diagrams(check.render(module.as_uri(), browser, 3000)) == [
        "flowchart TB"
    ]
    assert check.main(["--render", str(tmp_path)]) == 1  # the module page fails the check
    module.unlink()
    assert check.main(["--render", str(tmp_path)]) == 0  # the classic page alone draws


def test_the_docs_load_mermaid_as_a_classic_script_in_tox_docs() -> None:
    conf = text(DOCS / "conf.py")
    extensions = re.search(r"^extensions = \[(.*?)\]", conf, flags=re.M | re.S)
    assert extensions is not None
    names = re.findall(r'"([\w.]+)"', extensions[1])
    assert names.index("mermaid_offline") > names.index("sphinxcontrib.mermaid")
    # Read as text: the test envs have no Sphinx to import the extension with.
    assert 'UMD_SCRIPT = "mermaid/mermaid.min.js"' in text(DOCS / "_ext" / "mermaid_offline.py")
    assert "mermaid.esm" not in conf
    tox = text(ROOT / "tox.ini").split("[testenv:docs]", 1)[1]
    assert "check_offline.py --render docs/_build/html" in tox
    # Deprecation warnings of Sphinx and its extensions fail the HTML build.
    assert "-W error::DeprecationWarning -W error::PendingDeprecationWarning" in tox
    assert re.search(r"^\s+apt-get install .*\bchromium\b", text(ROOT / ".ci" / "run"), re.M)
