"""
System calls per delivered update beside the busy host: ``python benchmarks/gil_profile.py``.

Runs ``busy_host.py`` (the same process as the starvation benchmark's) under
``strace -f -c`` for each sender and divides each counted system call by the
updates delivered. Every one of these calls releases the GIL (the network
calls, ``poll``, the sleeps) or is a wait for it or for a lock (``futex``):
beside a thread of pure-Python work, each release costs up to one switch
interval (5 ms) before the caller runs again. strace slows every system call,
so the counts are what matters here, not the times (run starvation.py for those).

Needs strace (``apt-get install -y strace``); starts nginx or the receiver
like starvation.py, and stops it at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import remotes
from starvation import CHILD, LABELS

#: The system calls counted: every one the senders make that can release the GIL.
TRACED = "%network,poll,ppoll,select,pselect6,epoll_wait,futex,clock_nanosleep,ioctl,fcntl"
SENDERS = (
    "floor_queue",
    "lightd_sync",
    "http_client",
    "sentry_sdk",
    "proto_drain",
    "proto_pipelined_1",
    "proto_pipelined_4",
)


def strace_counts(path: Path) -> dict[str, int]:
    """``{syscall: calls}`` from the summary ``strace -c -o PATH`` wrote."""
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) < 5 or not fields[3].isdigit() or fields[-1] == "total":
            continue
        counts[fields[-1]] = int(fields[3])
    return counts


def profile(sender: str, rate: float, url: str, window: float, strace: str) -> dict[str, Any]:
    """Run one sender under strace; its figures and the calls per delivered update."""
    params = {"sender": sender, "rate": rate, "url": url, "window": window, "drain": 1.0}
    params["warm"] = 20
    with tempfile.TemporaryDirectory(prefix="lightd-bench-strace-") as tmp:
        out = Path(tmp, "strace.txt")
        done = subprocess.run(
            [strace, "-f", "-c", "-o", str(out), "-e", f"trace={TRACED}",
             sys.executable, CHILD, json.dumps(params)],
            capture_output=True, text=True, timeout=4 * window + 60, check=False,
        )  # fmt: skip
        lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"{sender}: status {done.returncode}: {done.stderr[-1500:]}")
        result = json.loads(lines[-1][len("RESULT ") :])
        counts = strace_counts(out)
    delivered = result["delivered_at_close"] + params["warm"]  # all the process delivered
    per = {name: round(calls / delivered, 2) for name, calls in sorted(counts.items())}
    return {
        "sender": sender,
        "rate": rate,
        "delivered": delivered,
        "offered": result["offered"] + params["warm"],
        "calls": counts,
        "per_update": per,
        "total_per_update": round(sum(counts.values()) / delivered, 2),
        "extra": result.get("extra", {}),
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--rates", nargs="+", type=float, default=[500.0, 2000.0])
    parser.add_argument("--window", type=float, default=3.0)
    parser.add_argument("--senders", nargs="+", choices=SENDERS, default=list(SENDERS))
    parser.add_argument("--json", type=Path, default=Path(tempfile.gettempdir(), "gil.json"))
    args = parser.parse_args(argv)
    strace = shutil.which("strace")
    if strace is None:
        print("strace not found (apt-get install -y strace)", file=sys.stderr)
        return 1
    fast, note = remotes.start_fast_remote()
    rows = []
    try:
        print(f"fast remote: {fast.describe()} {note}", flush=True)
        for rate in args.rates:
            for sender in args.senders:
                row = profile(sender, rate, fast.url, args.window, strace)
                rows.append(row)
                top = ", ".join(f"{k} {v}" for k, v in row["per_update"].items() if v >= 0.05)
                print(
                    f"{rate:,.0f}/s {LABELS[sender]}: {row['delivered']}/{row['offered']} "
                    f"delivered; per update: {row['total_per_update']} calls ({top}) "
                    f"{row['extra'] or ''}",
                    flush=True,
                )
    finally:
        fast.stop()
    args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
