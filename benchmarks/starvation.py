"""
Delivery beside a busy host thread (issue 15): ``python benchmarks/starvation.py [--quick]``.

Starts the fast remote (nginx if installed, else the built-in receiver) on
127.0.0.1, then for each round, each rate and each sender runs
``busy_host.py`` in a fresh subprocess with a hard timeout: a host thread of
pure-Python work, solo windows before and after the window in which a
producer offers the rate to the sender. Prints one table per rate (medians
of the rounds) and PASS/MISS for the targets at 500/s, writes the raw figures
as JSON, and stops the remote at the end, also on error or Ctrl-C.

``--quick``: 1 s windows, one round, 200 updates/s (the test suite runs it).
``--markdown FILE``: print the tables of a results file as Markdown.
Exit status: 0 when every subprocess ran, 1 when one failed, 2 on bad arguments.
See docs/performance.md, "Busy host".
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import remotes

HERE = Path(__file__).resolve().parent
CHILD = str(HERE / "busy_host.py")

#: The senders issue 15 compares (a-d), then the prototypes of benchmarks/pipelined.py.
SENDERS = (
    "floor_queue",
    "lightd_sync",
    "http_client",
    "sentry_sdk",
    "requests",
    "proto_drain",
    "proto_pipelined_1",
    "proto_pipelined_4",
)
LABELS = {
    "floor_queue": "floor: queue.Queue(1000) + a counting thread, no network",
    "lightd_sync": "lightd_sync SyncEngine, defaults (4 workers, queue 1000)",
    "http_client": "bare http.client keep-alive thread + SimpleQueue",
    "sentry_sdk": "sentry-sdk BackgroundWorker x 4 (queue 100 each)",
    "requests": "ThreadPoolExecutor(4) + requests",
    "proto_drain": "prototype: 1 lane, drain <= 64 per wake-up, http.client",
    "proto_pipelined_1": "prototype: 1 lane, pipelined batch <= 64, raw socket",
    "proto_pipelined_4": "prototype: 4 lanes, pipelined batch <= 64, raw socket",
}
TARGET_RATE = 500.0
TARGETS = {"delivered": 0.99, "host": 0.85, "cpu_ratio": 0.5}

FULL = {"window": 5.0, "drain": 1.0, "rounds": 3, "rates": [500.0, 2000.0], "warm": 20}
QUICK = {"window": 1.0, "drain": 1.0, "rounds": 1, "rates": [200.0], "warm": 5}
#: --quick runs the floor and the three senders the issue requires (a few seconds each).
QUICK_SENDERS = ("floor_queue", "lightd_sync", "http_client", "sentry_sdk")
#: The distribution each sender needs beyond lightd_sync; without it, the sender is skipped.
NEEDS = {"sentry_sdk": "sentry_sdk", "requests": "requests"}


class ChildError(RuntimeError):
    """A subprocess failed or ran out of time; the message says how."""


def child(params: dict[str, Any], limit: float) -> dict[str, Any]:
    """Run ``busy_host.py`` with *params* in a fresh interpreter, killed after *limit* s."""
    try:
        done = subprocess.run(
            [sys.executable, CHILD, json.dumps(params)],
            capture_output=True,
            text=True,
            timeout=limit,
            check=False,
            cwd=HERE,
        )
    except subprocess.TimeoutExpired as exc:
        raise ChildError(f"{params['sender']} did not finish within {limit:g} s") from exc
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT ") and done.returncode == 0:
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise ChildError(
        f"{params['sender']} exited with status {done.returncode}: {done.stderr.strip()[-1500:]}"
    )


# -- figures ------------------------------------------------------------------------


def figures(raw: dict[str, Any]) -> dict[str, Any]:
    """
    The reported figures of one subprocess.

    - ``host``: host work units per second in the measured window over the mean
      of the two solo windows' units per second;
    - ``cpu_us``: process CPU time from the start of the measured window to the
      end of the drain, minus the host's share (the host's work units in that
      span times the solo windows' CPU time per unit), divided by the updates
      delivered in that span, in µs.
    """
    offered = raw["offered"]
    solo = [raw["solo_1"], raw["solo_2"]]
    solo_rate = statistics.mean(s["units"] / s["seconds"] for s in solo)
    cpu_per_unit = sum(s["cpu"] for s in solo) / max(1, sum(s["units"] for s in solo))
    measured, drain = raw["measured"], raw["drain"]
    span_cpu = measured["cpu"] + drain["cpu"]
    span_units = measured["units"] + drain["units"]
    delivered = raw["delivered_after_drain"]
    sender_cpu = span_cpu - span_units * cpu_per_unit
    return {
        "in_window": raw["delivered_in_window"] / offered,
        "after_drain": delivered / offered,
        "refused": raw["refused"] / offered,
        "refused_count": raw["refused"],
        "host": measured["units"] / measured["seconds"] / solo_rate,
        "cpu_us": sender_cpu / delivered * 1e6 if delivered else float("nan"),
        "submit_p99_ns": raw["submit"]["p99_ns"],
        "submit_median_ns": raw["submit"]["median_ns"],
        "drain_s": drain["seconds"],
        "solo_units_per_s": solo_rate,
    }


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    """The median over the rounds of each figure."""
    per = [figures(r) for r in runs]
    return {key: statistics.median(f[key] for f in per) for key in per[0]}


def verdicts(table: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """PASS/MISS of lightd_sync (and, as INFO, of each prototype) against issue 15's target."""
    floor = table.get("http_client", {}).get("cpu_us")
    out = []
    for sender, m in table.items():
        if sender not in ("lightd_sync",) and not sender.startswith("proto_"):
            continue
        checks = [
            (
                f">= {TARGETS['delivered']:.0%} delivered within window + 1 s",
                m["after_drain"],
                m["after_drain"] >= TARGETS["delivered"],
            ),
            ("none refused", m["refused_count"], m["refused_count"] == 0),
            (
                f"host keeps >= {TARGETS['host']:.0%} of solo speed",
                m["host"],
                m["host"] >= TARGETS["host"],
            ),
        ]
        if floor:
            ratio = m["cpu_us"] / floor
            checks.append(
                (
                    f"CPU/update <= {TARGETS['cpu_ratio']:g}x http_client's",
                    ratio,
                    ratio <= TARGETS["cpu_ratio"],
                )
            )
        for condition, value, ok in checks:
            verdict = (
                ("PASS" if ok else "MISS")
                if sender == "lightd_sync"
                else ("(would pass)" if ok else "(would miss)")
            )
            out.append(
                {"sender": sender, "condition": condition, "value": value, "verdict": verdict}
            )
    return out


# -- tables --------------------------------------------------------------------------

_COLUMNS = (
    "sender",
    "in window",
    "+ drain",
    "refused",
    "host keeps",
    "CPU µs/update",
    "submit p99 ns",
    "(floor)",
)


def _cells(sender: str, m: dict[str, float], floor_p99: Optional[float]) -> tuple[str, ...]:
    return (
        LABELS.get(sender, sender),
        f"{m['in_window']:.0%}",
        f"{m['after_drain']:.0%}",
        f"{m['refused']:.0%}",
        f"{m['host']:.0%}",
        f"{m['cpu_us']:,.0f}",
        f"{m['submit_p99_ns']:,.0f}",
        "-" if floor_p99 is None else f"{floor_p99:,.0f}",
    )


def tables(results: dict[str, Any], markdown: bool = False) -> str:
    """One table per rate (medians of the rounds), then the verdicts at the target rate."""
    out = []
    for rate, table in results["medians"].items():
        floor = table.get("floor_queue", {}).get("submit_p99_ns")
        rows = [_cells(s, m, floor) for s, m in table.items()]
        out.append(
            f"\n{float(rate):,.0f} updates/s beside the busy host "
            f"(medians of {results['params']['rounds']} rounds):"
        )
        if markdown:
            out.append("")
            out.append("| " + " | ".join(_COLUMNS) + " |")
            out.append("|---|" + "---:|" * (len(_COLUMNS) - 1))
            out += ["| " + " | ".join(r) + " |" for r in rows]
        else:
            widths = [max(len(x) for x in col) for col in zip(_COLUMNS, *rows)]
            for line in (_COLUMNS, *rows):
                out.append("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip())
    if results.get("verdicts"):
        out.append(f"\ntarget at {TARGET_RATE:,.0f}/s:")
        for v in results["verdicts"]:
            value = v["value"]
            shown = (
                f"{value:.2f}x"
                if "x http_client" in v["condition"]
                else (f"{value:.1%}" if isinstance(value, float) else str(value))
            )
            line = f"{v['sender']}: {v['condition']}: {shown} {v['verdict']}"
            out.append(("- " if markdown else "  ") + line)
    return "\n".join(out)


# -- the run -------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = dict(QUICK if args.quick else FULL)
    if args.rates:
        cfg["rates"] = args.rates
    if args.rounds:
        cfg["rounds"] = args.rounds
    if args.window:
        cfg["window"] = args.window
    senders = args.senders or list(QUICK_SENDERS if args.quick else SENDERS)
    skipped = [s for s in senders if s in NEEDS and importlib.util.find_spec(NEEDS[s]) is None]
    senders = [s for s in senders if s not in skipped]
    limit = 4 * cfg["window"] + cfg["drain"] + 30
    results: dict[str, Any] = {
        "schema": 1,
        "mode": "quick" if args.quick else "full",
        "params": {**cfg, "senders": senders},
        "skipped": {s: f"{NEEDS[s]} is not installed" for s in skipped},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
        "cores": os.cpu_count(),
        "raw": {},
        "errors": [],
    }
    fast, note = remotes.start_fast_remote(use_nginx=not args.no_nginx, batches=args.batches)
    try:
        results["remote"] = {
            "fast": fast.describe(),
            "nginx": fast.kind == "nginx",
            "batches": args.batches,
            "note": note,
        }
        print(f"fast remote: {fast.describe()}" + (f"\n  {note}" if note else ""), flush=True)
        for sender, why in results["skipped"].items():
            print(f"  {sender} skipped: {why}", flush=True)
        for r in range(cfg["rounds"]):  # rounds outermost: a noisy minute hits every sender
            for rate in cfg["rates"]:
                for sender in senders:
                    params = {
                        "sender": sender,
                        "rate": rate,
                        "url": fast.url,
                        **{k: cfg[k] for k in ("window", "drain", "warm")},
                    }
                    print(f"round {r + 1}, {rate:g}/s, {sender} ...", flush=True)
                    try:
                        raw = child(params, limit)
                    except ChildError as exc:
                        results["errors"].append(str(exc))
                        print(f"  ERROR: {exc}", file=sys.stderr, flush=True)
                        continue
                    results["raw"].setdefault(str(rate), {}).setdefault(sender, []).append(raw)
    finally:
        fast.stop()
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["medians"] = {
        rate: {s: medians(runs) for s, runs in by_sender.items()}
        for rate, by_sender in results["raw"].items()
    }
    target = results["medians"].get(str(TARGET_RATE))
    results["verdicts"] = verdicts(target) if target else []
    return results


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s windows, 1 round, 200/s")
    parser.add_argument(
        "--json",
        type=Path,
        default=HERE / "results-starvation.json",
        help="where to write the results (default: benchmarks/results-starvation.json)",
    )
    parser.add_argument("--no-nginx", action="store_true", help="use the built-in receiver")
    parser.add_argument(
        "--batches",
        type=int,
        default=0,
        metavar="N",
        help="nginx offers batches of up to N updates in its health answer (0: none)",
    )
    parser.add_argument(
        "--senders", nargs="+", choices=SENDERS, metavar="SENDER", help=", ".join(SENDERS)
    )
    parser.add_argument("--rates", nargs="+", type=float, metavar="R", help="updates/s")
    parser.add_argument("--rounds", type=int, help="rounds (default 3, quick 1)")
    parser.add_argument("--window", type=float, help="window seconds (default 5, quick 1)")
    parser.add_argument(
        "--markdown",
        type=Path,
        metavar="FILE",
        help="print the tables of a results file as Markdown, and exit",
    )
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        print(tables(json.loads(args.markdown.read_text()), markdown=True))
        return 0

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    started = time.monotonic()
    try:
        results = run(args)
    except KeyboardInterrupt:
        print("interrupted; the remote was stopped", file=sys.stderr)
        return 130
    results["duration_s"] = round(time.monotonic() - started, 1)
    print(tables(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(
        f"\n{len(results['errors'])} errors; {results['duration_s']} s; "
        f"results written to {args.json}"
    )
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
