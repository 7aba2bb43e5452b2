"""
The busy-host benchmark must keep running: ``benchmarks/starvation.py --quick``, in a subprocess.

No performance figure is asserted (CI machines are noisy); the script prints
PASS/MISS itself. This checks that every sender ran and that its figures are
what docs/performance.md ("Busy host") says they are; the answer parser of the
pipelining prototype is checked on answers split at every byte.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
SCRIPT = BENCH / "starvation.py"


def _bench(name: str) -> ModuleType:
    """A module of benchmarks/ (not a package: its scripts import each other by name)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def _fast_remote_available() -> bool:
    remotes = _bench("remotes")
    if remotes.find_nginx() is not None:
        return True
    try:
        remotes.ReceiverRemote().start().stop()
    except Exception:
        return False
    return True


@pytest.mark.skipif(
    os.environ.get("LIGHTD_SYNC_BENCH_SMOKE") == "0",
    reason="LIGHTD_SYNC_BENCH_SMOKE=0: tox runs it in one env of the matrix (py311)",
)
@pytest.mark.timeout(60)
def test_quick_starvation_runs_every_sender(tmp_path: Path) -> None:
    if not _fast_remote_available():
        pytest.skip("no nginx, and the built-in receiver did not start")
    out = tmp_path / "starvation.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    starvation = _bench("starvation")
    assert results["mode"] == "quick"
    assert results["errors"] == []
    expected = set(starvation.QUICK_SENDERS) - set(results["skipped"])
    assert {"floor_queue", "lightd_sync", "http_client"} <= expected
    raw = results["raw"]["200.0"]
    assert set(raw) == expected
    for sender, runs in raw.items():
        (run,) = runs
        assert run["offered"] == 200, sender  # 200/s for a 1 s window, paced exactly
        assert run["producer_done"], sender
        assert 0 <= run["delivered_in_window"] <= run["delivered_after_drain"] <= 200, sender
        if sender in ("floor_queue", "lightd_sync"):  # ours and the no-network floor keep up
            assert run["delivered_after_drain"] + run["refused"] >= 150, (sender, run)
        else:  # a baseline that the busy host starves (that is what the benchmark shows)
            assert run["delivered_after_drain"] + run["refused"] > 0, (sender, run)
        for span in ("solo_1", "measured", "solo_2"):  # the drain may take no time at all
            assert run[span]["units"] > 0, (sender, span)
        assert 0 <= run["drain"]["seconds"] <= 1.5, sender
        figures = results["medians"]["200.0"][sender]
        assert all(math.isfinite(v) for v in figures.values()), (sender, figures)
        assert starvation.LABELS[sender] in done.stdout  # the table was printed
    markdown = subprocess.run(
        [sys.executable, str(SCRIPT), "--markdown", str(out)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert markdown.count("| lightd_sync SyncEngine") == 1


def _raw(**overrides: Any) -> dict[str, Any]:
    span = {"seconds": 1.0, "units": 1000, "cpu": 1.0}  # solo: 1 ms of CPU per unit
    raw: dict[str, Any] = {
        "offered": 100,
        "refused": 10,
        "delivered_in_window": 50,
        "delivered_after_drain": 80,
        "solo_1": span,
        "solo_2": {"seconds": 1.0, "units": 1000, "cpu": 1.0},
        "measured": {"seconds": 1.0, "units": 800, "cpu": 1.0},
        "drain": {"seconds": 0.5, "units": 400, "cpu": 0.5},
        "submit": {"p99_ns": 5000, "median_ns": 900},
    }
    raw.update(overrides)
    return raw


def test_figures_are_as_documented() -> None:
    figures = _bench("starvation").figures(_raw())
    assert figures["in_window"] == 0.5
    assert figures["after_drain"] == 0.8
    assert figures["refused"] == 0.1
    assert figures["host"] == pytest.approx(0.8)  # 800 units/s over a solo 1000/s
    # 1.5 s of CPU over window + drain, minus 1200 host units at 1 ms: 0.3 s over 80 updates
    assert figures["cpu_us"] == pytest.approx(3750)
    assert figures["submit_p99_ns"] == 5000


def test_targets_judge_lightd_sync_only() -> None:
    starvation = _bench("starvation")
    good = {"after_drain": 1.0, "refused_count": 0, "host": 0.9, "cpu_us": 40.0}
    table = {"http_client": {**good, "cpu_us": 100.0}, "lightd_sync": dict(good)}
    assert {v["verdict"] for v in starvation.verdicts(table)} == {"PASS"}
    table["lightd_sync"]["cpu_us"] = 51.0  # just over 0.5x the http.client sender's
    by_condition = {v["condition"]: v["verdict"] for v in starvation.verdicts(table)}
    assert list(by_condition.values()).count("MISS") == 1
    assert by_condition["CPU/update <= 0.5x http_client's"] == "MISS"


ANSWER = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\n"
    b'Content-Length: 17\r\nConnection: keep-alive\r\n\r\n{"success": true}'
)
REFUSED = b"HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n"


def test_pipelined_answers_parse_at_every_split() -> None:
    parse = _bench("pipelined").parse_answers
    stream = ANSWER + REFUSED + ANSWER
    for cut in range(len(stream) + 1):
        answered, good, rest = parse(stream[:cut], 3)
        answered2, good2, rest2 = parse(rest + stream[cut:], 3 - answered)
        assert (answered + answered2, good + good2, rest2) == (3, 2, b""), cut
    assert parse(stream + ANSWER, 3) == (3, 2, ANSWER)  # never more than asked for


def test_the_busy_host_section_shows_the_senders_it_compares() -> None:
    """Each table names senders the benchmark has: the floor, lightd_sync, the bare sender first."""
    page = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    section = page.split("\n## Busy host\n", 1)[1].split("\n## ", 1)[0]
    starvation = _bench("starvation")
    known = {starvation.LABELS[s] for s in starvation.SENDERS}
    compared = [starvation.LABELS[s] for s in ("floor_queue", "lightd_sync", "http_client")]
    tables = [
        part.split("\n\n", 2)[1]
        for part in section.split("\n500 updates/s beside the busy host")[1:]
    ]
    assert len(tables) == 2, "one table with batches offered, one without"
    for table in tables:
        shown = [line.split(" | ")[0].lstrip("| ") for line in table.splitlines()[2:]]
        assert set(shown) <= known, shown
        assert compared == shown[:3], shown
