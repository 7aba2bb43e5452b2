"""
The docs say what the code does: every quoted log line, wire capture and CLI session.

- Log lines quoted in docs/engine.md and docs/troubleshooting.md are format
  strings (or f-strings) of lightd_sync's code.
- docs/protocol.md's requests "captured on the wire" are generated at build
  time by docs/_ext/wire_capture.py, and its header table matches a capture.
- docs/cli.md's ``--help`` output and ``check`` sessions are what the
  commands print (numbers and ports aside).
- docs/_ext/check_offline.py, which ``tox -e docs`` runs on the built HTML,
  does find a script loaded from another host.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import pytest

from .conftest import TOKEN
from .test_cli import cli_env, running_receiver, write_config

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PACKAGE = ROOT / "lightd_sync"


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def load_ext(name: str) -> ModuleType:
    """A helper module of docs/_ext, imported by path (docs/ is no package)."""
    spec = importlib.util.spec_from_file_location(name, DOCS / "_ext" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- log lines ----------------------------------------------------------------------

_SPEC = re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[sdrgfi]")
_MIN_LITERAL = 8  # shorter strings ("%s: %s") would match any line


def _code_regex(parts: list[str | None]) -> str:
    """A regex from literal parts and holes (None)."""
    return "".join(".+" if part is None else re.escape(part) for part in parts)


@lru_cache(maxsize=1)
def code_strings() -> list[tuple[re.Pattern[str], str, str]]:
    """``(regex, sample, longest literal)`` of every string constant and f-string in lightd_sync."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            parts: list[str | None] = []
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                pieces = _SPEC.split(node.value)
                for i, piece in enumerate(pieces):
                    if i:
                        parts.append(None)
                    parts.append(piece)
            elif isinstance(node, ast.JoinedStr):
                for value in node.values:
                    if isinstance(value, ast.Constant) and isinstance(value.value, str):
                        parts.append(value.value)
                    else:
                        parts.append(None)
            else:
                continue
            literals = [p for p in parts if p]
            if sum(map(len, literals)) < _MIN_LITERAL:
                continue
            sample = "".join("X" if p is None else p for p in parts)
            regex = re.compile(_code_regex(parts), re.DOTALL)
            found.append((regex, sample, max(literals, key=len)))
    return found


# A placeholder in a quoted line: ..., <reason>, or a word in capitals (N, SERVER, HOST:PORT).
_PLACEHOLDER = re.compile(r"\.\.\.|…|<[^<>]+>|\b[A-Z][A-Z_]*\b")


def _doc_regex(line: str) -> re.Pattern[str]:
    parts = []
    last = 0
    for match in _PLACEHOLDER.finditer(line):
        parts.append(re.escape(line[last : match.start()]))
        parts.append(".*")
        last = match.end()
    parts.append(re.escape(line[last:]))
    return re.compile("".join(parts), re.DOTALL)


def in_code(line: str) -> bool:
    """True if *line* (with concrete values or placeholders) is a string of the code."""
    doc = _doc_regex(line)
    doc_literal = max(_PLACEHOLDER.split(line), key=len)
    for regex, sample, literal in code_strings():
        if literal in line and regex.fullmatch(line):
            return True
        if doc_literal in sample and doc.fullmatch(sample):
            return True
    return False


def inline_code(text: str) -> list[str]:
    """The inline code spans of a Markdown page (fenced blocks left out), one line each."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", text)]


def table_column(text: str, heading: str, column: str) -> list[str]:
    """The inline code of *column* in the first table after *heading*."""
    rows: list[str] = []
    for line in text.split(heading, 1)[1].splitlines():
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            break
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    index = header.index(column)
    spans = []
    for row in rows[2:]:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        spans += re.findall(r"(?<![}\w])`([^`]+)`", cells[index])  # not {class}`...`
    return spans


def documented_log_lines() -> list[str]:
    """Every log line the docs quote."""
    trouble = page("troubleshooting.md")
    table = table_column(trouble, "## Engine log lines, all of them", "message")
    assert len(table) > 15, "the table of log lines was not found"
    checklist = [
        span
        for span in table_column(trouble, "## The checklist", "log line when it fails")
        if " " in span and len(span) > 15
    ]
    # Prose: inline code that starts the way a line of the table does.
    starts = {" ".join(_PLACEHOLDER.sub("", line).split()[:2]) for line in table}
    prose = [
        span
        for name in ("engine.md", "troubleshooting.md")
        for span in inline_code(page(name))
        if " " in span and " ".join(_PLACEHOLDER.sub("", span).split()[:2]) in starts
    ]
    return list(dict.fromkeys(table + checklist + prose))


def test_the_log_line_finder_finds_the_lines_known_to_be_quoted() -> None:
    lines = documented_log_lines()
    assert "the remote is healthy (5 ms)" in lines  # prose of engine.md
    assert any(line.startswith("re-sending the latest status") for line in lines)
    assert any(line.startswith("update of my-server-002") for line in lines)


def test_the_matcher_rejects_a_line_the_code_does_not_print() -> None:
    assert in_code("re-sending the latest status of 2 servers the remote missed (0 more wait)")
    assert not in_code("re-sending the latest status of 2 servers the remote missed (2 queued)")
    assert in_code("update of SERVER (STATUS) failed: REASON")
    assert not in_code("update of SERVER failed because REASON")


@pytest.mark.parametrize("line", documented_log_lines())
def test_every_quoted_log_line_is_printed_by_the_code(line: str) -> None:
    assert in_code(line), f"no string of lightd_sync prints {line!r}"


def test_check_lines_quoted_in_the_docs_are_printed_by_check() -> None:
    """``✓ step  detail`` lines of every console block: the layout, and the detail's words."""
    from lightd_sync._cli.check import STEPS

    width = max(map(len, STEPS))
    line_re = re.compile(rf"^([✓✗!]) ({'|'.join(STEPS)})( +)(\S.*)$")
    seen = 0
    for name in ("cli.md", "troubleshooting.md"):
        for line in page(name).splitlines():
            match = line_re.match(line)
            if match is None:
                continue
            seen += 1
            step, pad, detail = match.group(2), match.group(3), match.group(4)
            assert len(step) + len(pad) == width + 2, f"{name}: column layout of {line!r}"
            assert in_code(detail) or in_code(re.sub(r"\S+\.json", "X", detail)), (
                f"{name}: check prints no {detail!r}"
            )
    assert seen > 30


# -- the wire capture ---------------------------------------------------------------


def test_protocol_md_includes_the_capture_made_at_build_time() -> None:
    text = page("protocol.md")
    assert "```{literalinclude} _generated/wire-get.http" in text
    assert "```{literalinclude} _generated/wire-post.http" in text
    assert "GET /api/health HTTP/1.1" not in text  # no copy that could go stale


def header_table() -> dict[str, str]:
    """``{header: sent with}`` from protocol.md's table of request headers."""
    section = page("protocol.md").split("## Request headers", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    table = {}
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        if cells[1] in ("both", "`GET /health`", "`POST /update`"):
            table[cells[0].strip("`")] = cells[1].strip("`")
    return table


def headers_of(request: str) -> dict[str, str]:
    head = request.split("\n\n", 1)[0].splitlines()[1:]
    return dict(line.split(": ", 1) for line in head)


def test_the_header_table_is_what_the_http_transport_sends() -> None:
    found = load_ext("wire_capture").capture("http")
    get, post = headers_of(found["get"]), headers_of(found["post"])
    assert found["get"].startswith("GET /api/health HTTP/1.1\n")
    assert found["post"].startswith("POST /api/update HTTP/1.1\n")
    expected = {}
    for name in set(get) | set(post) - {"Host"}:
        if name == "Host":
            continue
        expected[name] = "both" if name in get and name in post else (
            "GET /health" if name in get else "POST /update"
        )  # fmt: skip
    assert header_table() == expected
    assert get["Authorization"] == post["Authorization"] == f"Bearer {TOKEN}"
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                        post["X-Lightd-Event-Id"])  # fmt: skip


def test_the_requests_transport_adds_what_protocol_md_says() -> None:
    capture = load_ext("wire_capture").capture
    http, extra = headers_of(capture("http")["post"]), headers_of(capture("requests")["post"])
    added = {name: value for name, value in extra.items() if name not in http}
    text = " ".join(page("protocol.md").split())
    for name, value in added.items():
        assert f"`{name}: {value}`" in text
    assert set(http) <= set(extra)


# -- CLI sessions -------------------------------------------------------------------


def console_blocks(name: str) -> list[str]:
    return re.findall(r"```console\n(.*?)```", page(name), flags=re.DOTALL)


def test_the_help_in_cli_md_is_what_the_command_prints() -> None:
    (block,) = [b for b in console_blocks("cli.md") if b.startswith("$ lightd-sync --help\n")]
    proc = subprocess.run(
        [sys.executable, "-m", "lightd_sync", "--help"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=cli_env(COLUMNS="80"),
        timeout=20,
        check=True,
    )
    shown = proc.stdout.replace("\noptional arguments:\n", "\noptions:\n")  # Python 3.9
    assert block.split("\n", 1)[1] == shown


def _shape(text: str) -> list[str]:
    """Lines with every number (ports, milliseconds) made 0."""
    return [re.sub(r"\d+(\.\d+)?", "0", line) for line in text.rstrip("\n").splitlines()]


@pytest.mark.parametrize("config", ["config.json", "bad.json"])
def test_the_check_sessions_in_cli_md_are_what_check_prints(
    config: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = next(b for b in console_blocks("cli.md")
                   if b.startswith(f"$ lightd-sync check --config {config}\n"))  # fmt: skip
    shown, _, after = session.split("\n", 1)[1].partition("$ echo $?\n")
    token = TOKEN if config == "config.json" else TOKEN[:-1] + "6"
    with running_receiver() as receiver:
        write_config(tmp_path / config, receiver.url, token=token)
        proc = subprocess.run(
            [sys.executable, "-m", "lightd_sync", "check", "--config", config],
            capture_output=True,
            text=True,
            encoding="utf-8",
            env=cli_env(),
            cwd=tmp_path,
            timeout=20,
            check=False,
        )
    assert _shape(proc.stdout) == _shape(shown)
    assert str(proc.returncode) == after.strip()


# -- the built HTML loads nothing from another host ------------------------------------


@pytest.mark.parametrize(
    ("html", "found"),
    [
        ('<script src="https://cdn.jsdelivr.net/npm/mermaid.js"></script>', True),
        ('<script type="module">import mermaid from "https://cdn.example/m.mjs";</script>', True),
        ('<script>import("//cdn.example/m.mjs")</script>', True),
        ('<link rel="stylesheet" href="https://fonts.example/f.css">', True),
        ('<script type="module">import mermaid from "./_static/mermaid/m.mjs";</script>', False),
        ('<script src="_static/doctools.js"></script>', False),
        ('<a href="https://example.org/">a link is no load</a>', False),
    ],
)
def test_the_offline_check_finds_scripts_from_another_host(html: str, found: bool) -> None:
    assert bool(load_ext("check_offline").external_loads(html)) is found


def test_conf_py_serves_mermaid_with_the_docs() -> None:
    conf = page("conf.py")
    assert re.search(r'^_MERMAID_KEEP = \("LICENSE", "dist/mermaid\.min\.js"\)$', conf, re.M)
    assert re.search(r'^html_static_path = \["_static"\]$', conf, re.M)
    assert "check_offline.py --render docs/_build/html" in (ROOT / "tox.ini").read_text()


# -- README and docs/performance.md -------------------------------------------------

#: Every condition performance.md measures update()'s p99 in: the README's figure covers all.
CALLER_CONDITIONS = (
    "fast",
    "silent",
    "refused",
    "full",
    "fast+state_path",
    "silent+state_path",
    "refused+state_path",
)
PLACEHOLDER = "TBD-INTEGRATOR"


def performance_section(heading: str) -> str:
    """The text of one ``## `` section of performance.md."""
    return page("performance.md").split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def caller_cost_ratios() -> dict[str, float]:
    """``{condition: p99 ratio}`` from performance.md's table of update()'s cost."""
    section = performance_section("What `update()` costs your thread")
    rows = re.findall(r"^\| ([\w+]+) \| [\d,]+ ns \| [\d,]+ ns \| ([\d.]+)x \|$", section, re.M)
    return {condition: float(ratio) for condition, ratio in rows}


def test_the_caller_cost_in_the_readme_is_the_measured_one() -> None:
    """
    The README's figure is the range of every p99 ratio of performance.md.

    Until the integrator re-measures, both carry the placeholder; then the
    README's ``Ax-Bx`` must be the table's minimum and maximum, rounded.
    """
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    claimed = re.search(
        rf"`update\(\)` costs the caller (?:({PLACEHOLDER})|([\d.]+)x-([\d.]+)x) ", readme
    )
    assert claimed is not None, "the README does not give update()'s cost as a ratio"
    ratios = caller_cost_ratios()
    assert tuple(ratios) == CALLER_CONDITIONS, "a condition is missing from performance.md"
    section = performance_section("What `update()` costs your thread")
    if claimed[1]:
        assert PLACEHOLDER in section, "the README waits for a figure performance.md has"
        return
    assert PLACEHOLDER not in section, "performance.md's caller cost is still to re-measure"
    assert (float(claimed[2]), float(claimed[3])) == (
        round(min(ratios.values()), 1),
        round(max(ratios.values()), 1),
    )


def test_performance_md_is_a_user_s_page_with_the_history_last() -> None:
    headings = re.findall(r"^## (.+)$", page("performance.md"), flags=re.MULTILINE)
    assert headings == [
        "At a glance",
        "What `update()` costs your thread",
        "Busy host",  # what delivery costs the host (tests/test_benchmark_starvation.py reads it)
        "Throughput",
        "Memory",
        "Shutdown and exit",
        "Receiver",
        "How it is measured",
        "Known limits",
        "Appendix: how the figures got here",
    ]
    user_part = page("performance.md").split("\n## Appendix", 1)[0]
    # The history (commit hashes, issue numbers, prototypes' verdicts) is in the appendix;
    # before it, a commit is named only where a figure is marked for re-measuring.
    assert not re.search(r"\bissue \d+", user_part)
    assert not re.search(
        r"\*\*MISS\*\*|\| (PASS|MISS) \||: \d[\d.]*%? (PASS|MISS)$", user_part, re.M
    )
    for paragraph in user_part.split("\n\n"):
        if re.search(r"commit `[0-9a-f]{7}`", paragraph):
            assert PLACEHOLDER in paragraph or "100 of 100" in paragraph, paragraph


@pytest.mark.parametrize(
    "heading",
    ["What `update()` costs your thread", "Busy host", "Throughput", "Memory",
     "Shutdown and exit", "Receiver"],
)  # fmt: skip
def test_each_cost_on_performance_md_says_the_command_that_reproduces_it(heading: str) -> None:
    section = performance_section(heading)
    assert re.search(r"`python benchmarks/\w+\.py[^`]*`", section), heading
    assert re.search(r"\d\.\d+x", section) or "%" in section, f"{heading}: no ratio"


def test_the_loggers_listed_in_troubleshooting_are_the_code_s() -> None:
    named = set(re.findall(r'get_logger\("(\w+)"\)', "\n".join(
        path.read_text(encoding="utf-8") for path in PACKAGE.rglob("*.py")
    )))  # fmt: skip
    section = page("troubleshooting.md").split("## See the library's log", 1)[1]
    listed = set(re.findall(r"`lightd_sync\.(\w+)`", section.split("## The checklist", 1)[0]))
    assert named == listed


def test_the_demo_session_in_cli_md_is_what_demo_prints() -> None:
    (block,) = [b for b in console_blocks("cli.md") if b.startswith("$ lightd-sync demo\n")]
    proc = subprocess.run(
        [sys.executable, "-m", "lightd_sync", "demo"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=cli_env(),
        timeout=20,
        check=True,
    )

    def shape(text: str) -> list[str]:
        return _shape(re.sub(r"lightd_…\w{4}", "lightd_…", text))

    assert shape(proc.stdout) == shape(block.split("\n", 1)[1])


def test_every_error_and_warning_quoted_in_cli_md_is_printed_by_the_code() -> None:
    quoted = [
        match[1]
        for block in console_blocks("cli.md") + console_blocks("troubleshooting.md")
        for match in re.finditer(r"^lightd-sync: (?:error|warning): (.+)$", block, re.M)
    ]
    assert len(quoted) >= 4
    for message in quoted:
        assert in_code(re.sub(r"\S+\.jsonl", "X", message)), message


def test_the_bodies_protocol_md_shows_are_what_the_library_sends() -> None:
    """Each body in protocol.md's ``POST {url}/update`` section is one the model makes."""
    import json

    from lightd_sync import BillingEvent, Update

    section = page("protocol.md").split("## `POST {url}/update`", 1)[1].split("\n## ", 1)[0]
    shown = [
        json.loads(line)
        for block in re.findall(r"```json\n(.*?)```", section, flags=re.S)
        for line in block.replace(",\n ", ", ").splitlines()
        if line.strip()
    ]
    shown = [body for body in shown if "event" in body]  # not the answer, {"success": true}
    made = [
        Update("my-server-001", "installing").body(),
        Update(
            "my-server-001", "failed", "Docker container creation failed: image not found"
        ).body(),
        Update("my-server-002", "failed", error="timeout").body(),
        Update("my-server-003", "failed", error="disk quota exceeded").body(),
        BillingEvent(
            "my-server-001",
            memory_gb=0.5,
            cpu_vcpus=0.25,
            storage_gb=2,
            egress_gb=0.01,
            duration_hours=1,
            estimated_cost=0.0123,
            timestamp=1767225600,
        ).body(),
    ]
    assert made == shown
    # In the order Lightd's client sends the fields.
    assert [list(body) for body in made] == [list(body) for body in shown]
