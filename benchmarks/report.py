"""
Turn raw figures into rows: value, floor, ratio, target and verdict; print them as a table.

A row's ``verdict`` is ``PASS`` or ``MISS`` against the issue's target, or
``INFO`` for a figure reported for context (a second floor, an alternative).
"""

from __future__ import annotations

import statistics
from typing import Any, Optional

__all__ = ["Row", "format_table", "rows_for"]

Row = dict[str, Any]

P99_RATIO = 2.0  # caller cost: p99 at most 2x the floor's
THROUGHPUT_RATIO = 0.8  # at least 0.8x the bare http.client keep-alive loop's
STATE_THROUGHPUT_RATIO = 0.9  # with state_path, at least 0.9x the engine without it
STATE_FILE_KB = 5 * 1024  # the state file after 1,000,000 updates over 10,000 servers
OUTAGE_KB = 1024  # RSS growth with the default queue
RESYNC_KB = 5 * 1024  # RSS growth with 10,000 servers remembered
CLOSE_SLACK = 0.05  # close(timeout) returns by timeout + 50 ms
IMPORT_EXTRA_MS = 30.0  # import lightd_sync (+ what it sends with) over import urllib3
SOAK_KB = 1024  # RSS growth after the warm-up of the soak


def _row(
    measure: str,
    condition: str,
    value: float,
    unit: str,
    *,
    floor: Optional[float] = None,
    ratio: Optional[float] = None,
    target: str = "",
    ok: Optional[bool] = None,
    note: str = "",
) -> Row:
    verdict = "INFO" if ok is None else ("PASS" if ok else "MISS")
    return {
        "measure": measure,
        "condition": condition,
        "value": value,
        "unit": unit,
        "floor": floor,
        "ratio": ratio,
        "target": target,
        "verdict": verdict,
        "note": note,
    }


def _caller_cost(raw: dict[str, Any]) -> list[Row]:
    rows = _caller_rows(raw["as_is"], "1 caller cost p99", judged=True)
    if "pretouched" in raw:
        rows += _caller_rows(raw["pretouched"], "1 caller cost p99, no page faults", judged=False)
    return rows


def _caller_rows(raw: dict[str, Any], measure: str, judged: bool) -> list[Row]:
    rows = []
    for condition, fig in raw.items():
        floor = fig["floor"]
        ratio = fig["p99_ns"] / max(1, floor["p99_ns"])
        note = (
            f"median {fig['median_ns']} ns vs {floor['median_ns']} ns "
            f"({fig['median_ns'] / max(1, floor['median_ns']):.2f}x); "
            f"page faults {fig['faults']} vs {floor['faults']}, voluntary context switches "
            f"{fig['voluntary_cs']} vs {floor['voluntary_cs']}"
        )
        rows.append(
            _row(
                measure,
                condition,
                fig["p99_ns"],
                "ns",
                floor=floor["p99_ns"],
                ratio=ratio,
                target=f"<= {P99_RATIO:g}x floor" if judged else "(diagnostic)",
                ok=(ratio <= P99_RATIO) if judged else None,
                note=note,
            )
        )
    return rows


def _median_rate(runs: list[dict[str, Any]]) -> Optional[float]:
    rates = [r["per_second"] for r in runs if "per_second" in r]
    return statistics.median(rates) if rates else None


def _throughput(raw: dict[str, Any]) -> list[Row]:
    rows = []
    for workers, variants in sorted(raw.items()):
        engine = _median_rate(variants.get("engine", []))
        if engine is None:
            continue
        cond = f"{workers} worker{'s' if workers != '1' else ''}"
        floors = [
            ("http_client", f">= {THROUGHPUT_RATIO:g}x", True),
            ("urllib3", "(PoolManager loop)", None),
            ("requests", "(alternative)", None),
        ]
        rows.append(_row("2 throughput", cond, engine, "updates/s"))
        for name, target, judged in floors:
            floor = _median_rate(variants.get(name, []))
            if floor is None:
                skipped = next((r["skipped"] for r in variants.get(name, []) if "skipped" in r), "")
                rows.append(
                    _row(
                        "2 throughput",
                        f"{cond} vs {name}",
                        engine,
                        "updates/s",
                        note=skipped or "not measured",
                    )
                )
                continue
            ratio = engine / floor
            ok = (ratio >= THROUGHPUT_RATIO) if judged else None
            rows.append(
                _row(
                    "2 throughput",
                    f"{cond} vs {name}",
                    engine,
                    "updates/s",
                    floor=floor,
                    ratio=ratio,
                    target=target,
                    ok=ok,
                )
            )
    return rows


def _state_throughput(raw: dict[str, Any]) -> list[Row]:
    rows = []
    for workers, variants in sorted(raw.items()):
        engine = _median_rate(variants.get("engine", []))
        state = _median_rate(variants.get("engine_state", []))
        if engine is None or state is None:
            continue
        cond = f"{workers} worker{'s' if workers != '1' else ''}, state_path vs without"
        ratio = state / engine
        rows.append(
            _row(
                "2 throughput",
                cond,
                state,
                "updates/s",
                floor=engine,
                ratio=ratio,
                target=f">= {STATE_THROUGHPUT_RATIO:g}x",
                ok=ratio >= STATE_THROUGHPUT_RATIO,
            )
        )
    return rows


def _memory(raw: dict[str, Any]) -> list[Row]:
    rows = []
    floors = {"default": raw.get("floor_queue"), "servers_10k": raw.get("floor_dict_10k")}
    for name, limit, floor_key, label in (
        ("silent", OUTAGE_KB, "default", "silent remote, default queue"),
        ("refused", OUTAGE_KB, "default", "refused port, default queue"),
        ("servers_10k", RESYNC_KB, "servers_10k", "silent remote, 10,000 servers"),
        ("state_10k", RESYNC_KB, "servers_10k", "state_path, silent remote, 10,000 servers"),
    ):
        fig = raw.get(name)
        if fig is None:
            continue
        floor = floors[floor_key]
        growth = fig["growth_kb"]
        rows.append(
            _row(
                "3 RSS growth",
                f"{label}, {fig['calls']:,} calls",
                growth,
                "KiB",
                floor=None if floor is None else floor["growth_kb"],
                ratio=growth / limit,
                target=f"< {limit} KiB",
                ok=growth < limit,
                note="ratio is to the target; floor: the same loop on a full queue.Queue(1000), "
                "or a dict of the latest status per server",
            )
        )
        if "file_kb" in fig:
            rows.append(
                _row(
                    "3 state file size",
                    f"{label}, {fig['calls']:,} calls",
                    fig["file_kb"],
                    "KiB",
                    ratio=fig["file_kb"] / STATE_FILE_KB,
                    target=f"< {STATE_FILE_KB} KiB",
                    ok=fig["file_kb"] < STATE_FILE_KB,
                    note="the file and its -wal; ratio is to the target",
                )
            )
    return rows


def _shutdown(raw: dict[str, Any]) -> list[Row]:
    close = raw["close"]
    limit = close["timeout"] + CLOSE_SLACK
    left = close["threads_left"]
    rows = [
        _row(
            "4 shutdown",
            f"close(timeout={close['timeout']:g}), silent remote, full queue",
            close["seconds"],
            "s",
            floor=close["timeout"],
            ratio=close["seconds"] / close["timeout"],
            target=f"< {limit:g} s, no thread left",
            ok=close["seconds"] < limit and not left,
            note=f"threads left: {left or 'none'}",
        )
    ]
    exits = raw["exit"]
    floor = statistics.median(exits["none"])
    shutdown = raw["shutdown_timeout"]
    for mode, label, limit, judged in (
        ("silent", "process exit, engine left open, silent remote", shutdown + CLOSE_SLACK, True),
        ("fast", "process exit, engine left open and idle", CLOSE_SLACK, None),
    ):
        seconds = statistics.median(exits[mode])
        extra = seconds - floor
        rows.append(
            _row(
                "4 shutdown",
                label,
                seconds,
                "s",
                floor=floor,
                ratio=seconds / floor if floor > 0 else None,
                target=f"exit adds < {limit:g} s",
                ok=(extra < limit) if judged else None,
                note=f"adds {extra:.3f} s to the exit of a process that only imported",
            )
        )
    return rows


def _import(raw: dict[str, Any]) -> list[Row]:
    urllib3_ms = raw["urllib3_ms"]
    rows = []
    for key, label, judged in (
        ("lightd_sync_send_ms", "import lightd_sync + HttpTransport", True),
        ("lightd_sync_ms", "import lightd_sync (urllib3 not loaded)", None),
    ):
        ms = raw[key]
        extra = ms - urllib3_ms
        rows.append(
            _row(
                "5 import",
                label,
                ms,
                "ms",
                floor=urllib3_ms,
                ratio=ms / urllib3_ms if urllib3_ms > 0 else None,
                target=f"adds <= {IMPORT_EXTRA_MS:g} ms" if judged else "",
                ok=(extra <= IMPORT_EXTRA_MS) if judged else None,
                note=f"{extra:+.1f} ms over import urllib3",
            )
        )
    return rows


def soak_summary(raw: dict[str, Any]) -> dict[str, Any]:
    """Thread counts and RSS over the soak, after a warm-up of the first 10% of updates."""
    samples = raw["samples"]
    warm_at = raw["updates"] // 10
    steady = [s for s in samples if s["submitted"] >= warm_at] or samples[-1:]
    rss = [s["rss_kb"] for s in steady]
    lightd = [s["lightd_threads"] for s in steady]
    threads = [s["threads"] for s in steady]
    return {
        "rss_growth_kb": rss[-1] - rss[0],
        "rss_peak_growth_kb": max(rss) - rss[0],
        "lightd_threads": sorted(set(lightd)),
        "threads": sorted(set(threads)),
        "samples": len(samples),
    }


def _soak(raw: dict[str, Any]) -> list[Row]:
    summary = soak_summary(raw)
    stats = raw["stats"]
    label = f"{raw['updates']:,} updates, {raw['health_checks']:,} health checks"
    flat_threads = len(summary["lightd_threads"]) == 1 and len(summary["threads"]) == 1
    return [
        _row(
            "6 soak",
            f"{label}: thread count",
            summary["lightd_threads"][-1],
            "threads",
            target="constant",
            ok=flat_threads and not raw["threads_left"],
            note=f"lightd-sync threads seen {summary['lightd_threads']}, all threads "
            f"{summary['threads']}, left after close: {raw['threads_left'] or 'none'}",
        ),
        _row(
            "6 soak",
            f"{label}: RSS after warm-up",
            summary["rss_peak_growth_kb"],
            "KiB",
            ratio=summary["rss_peak_growth_kb"] / SOAK_KB,
            target=f"< {SOAK_KB} KiB",
            ok=summary["rss_peak_growth_kb"] < SOAK_KB,
            note=f"{stats['delivered']:,} delivered, {stats['failed']} failed in "
            f"{raw['seconds']:.1f} s; growth at the end {summary['rss_growth_kb']} KiB",
        ),
    ]


_BUILDERS = {
    "caller_cost": _caller_cost,
    "throughput": lambda raw: _throughput(raw) + _state_throughput(raw),
    "memory": _memory,
    "shutdown": _shutdown,
    "import": _import,
    "soak": _soak,
}


def rows_for(measure: str, raw: dict[str, Any]) -> list[Row]:
    """The table rows of one measure's raw figures."""
    return _BUILDERS[measure](raw)


def _fmt(value: Optional[float], unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "ms":
        return f"{value:.1f} ms"
    if isinstance(value, int) or value >= 100:
        return f"{value:,.0f} {unit}".strip()
    return f"{value:.2f} {unit}".strip()


def format_table(rows: list[Row]) -> str:
    """A plain-text table: measure, condition, value, floor, ratio, target, verdict."""
    header = ("measure", "condition", "value", "floor", "ratio", "target", "verdict")
    lines = [
        (
            r["measure"],
            r["condition"],
            _fmt(r["value"], r["unit"]),
            _fmt(r["floor"], r["unit"]),
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
            r["target"],
            r["verdict"],
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    out = []
    for line in (header, *lines):
        out.append("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip())
    return "\n".join(out)


def markdown_table(rows: list[Row]) -> str:
    """The rows as a Markdown table (what docs/performance.md shows)."""
    out = [
        "| measure | condition | value | floor | ratio | target | verdict |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        cells = (
            r["measure"],
            r["condition"],
            _fmt(r["value"], r["unit"]),
            _fmt(r["floor"], r["unit"]),
            ratio,
            r["target"].replace("<=", "≤").replace(">=", "≥"),
            f"**{r['verdict']}**" if r["verdict"] == "MISS" else r["verdict"],
        )
        out.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":  # python benchmarks/report.py results.json: the Markdown table
    import json
    import sys
    from pathlib import Path

    data = json.loads(Path(sys.argv[1]).read_text())
    print(markdown_table([r for m in data["measures"].values() for r in m.get("rows", [])]))
