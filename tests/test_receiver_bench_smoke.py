"""The receiver's benchmark must keep running: ``receiver_load.py --quick``, end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "receiver_load.py"

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("LIGHTD_SYNC_BENCH_SMOKE") == "0",
        reason="LIGHTD_SYNC_BENCH_SMOKE=0: tox runs it in one env of the matrix (py311)",
    ),
    pytest.mark.skipif(
        shutil.which("node") is None or shutil.which("npm") is None,
        reason="the Express remote it compares with needs node and npm",
    ),
    pytest.mark.timeout(240),
]


def test_the_receiver_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
        cwd=SCRIPT.parent,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "figures-receiver.json").read_text())
    names = [row["name"] for row in result["rows"]]
    assert names[:2] == ["Express.js, in memory", "receiver, SQLite"]
    if os.environ.get("LIGHTD_TEST_POSTGRES_URL"):
        assert "2 receivers, one PostgreSQL" in names
    for row in result["rows"]:
        assert row["updates_per_s"] > 0
        assert 0 < row["p50_ms"] <= row["p99_ms"]
