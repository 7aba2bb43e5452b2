"""
lightd_sync's benchmark: ``python benchmarks/run.py [--quick] [--json PATH]``.

Starts its own remotes on 127.0.0.1 (nginx if installed, else the built-in
receiver; a silent remote; a refused port), runs each measure in fresh
subprocesses with a hard timeout, prints a table of figures with their floors,
ratios and PASS/MISS per target, writes the raw figures as JSON and stops
every remote it started, also on error or Ctrl-C. ``--quick`` scales
everything down to a few seconds (the test suite runs it so that it cannot rot).

Exit status: 0 when every measure ran (whatever the verdicts), 1 when one
failed or timed out, 2 on bad arguments. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import remotes
import report

HERE = Path(__file__).resolve().parent
WORKER = str(HERE / "worker.py")
MEASURES = ("caller_cost", "throughput", "memory", "shutdown", "import", "soak")

FULL: dict[str, Any] = {
    "caller": {
        "calls": 100_000,
        "blocks": 10,
        "close_timeout": 0.5,
        "limit": 300,
        "diagnostic": True,
    },
    "throughput": {"updates": 50_000, "requests_updates": 10_000, "warm": 500, "repeats": 3},
    "throughput_limit": 300,
    "memory": {"calls": 1_000_000, "settle": 0.3, "limit": 300},
    "shutdown": {"close_timeout": 2.0, "shutdown_timeout": 2.0, "exit_repeats": 3},
    "import_runs": 9,
    "soak": {
        "updates": 1_000_000,
        "health_cycles": 1000,
        "health_interval": 0.1,
        "sample_every": 1.0,
        "max_wait": 120.0,
        "limit": 900,
    },
}
QUICK: dict[str, Any] = {
    "caller": {
        "calls": 3_000,
        "blocks": 2,
        "close_timeout": 0.2,
        "limit": 60,
        "diagnostic": False,
    },
    "throughput": {"updates": 400, "requests_updates": 150, "warm": 20, "repeats": 1},
    "throughput_limit": 60,
    "memory": {"calls": 5_000, "settle": 0.05, "limit": 60},
    "shutdown": {"close_timeout": 0.3, "shutdown_timeout": 0.3, "exit_repeats": 1},
    "import_runs": 2,
    "soak": {
        "updates": 3_000,
        "health_cycles": 20,
        "health_interval": 0.05,
        "sample_every": 0.05,
        "max_wait": 10.0,
        "limit": 60,
    },
}


#: With the built-in receiver (no nginx), the remote bounds the rate: fewer updates.
SLOW_REMOTE_DIVISOR = 5


def scaled_for_slow_remote(cfg: dict[str, Any]) -> dict[str, Any]:
    """*cfg* with the throughput and soak update counts divided by SLOW_REMOTE_DIVISOR."""
    t, soak = dict(cfg["throughput"]), dict(cfg["soak"])
    for key in ("updates", "requests_updates", "warm"):
        t[key] = max(10, t[key] // SLOW_REMOTE_DIVISOR)
    soak["updates"] = max(1000, soak["updates"] // SLOW_REMOTE_DIVISOR)
    return {**cfg, "throughput": t, "soak": soak}


class MeasureError(RuntimeError):
    """A measure failed or ran out of time; the message says how."""


#: The caller-cost diagnostic without first-touch page faults: glibc malloc for every
#: object, keeping what is freed (no trim, no mmap), with a heap grown once beforehand.
PRETOUCH_ENV = {
    "PYTHONMALLOC": "malloc",
    "MALLOC_TRIM_THRESHOLD_": str(1 << 40),
    "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
}


def worker(
    name: str, params: dict[str, Any], limit: float, env: Optional[dict[str, str]] = None
) -> dict[str, Any]:
    """Run one measure in a fresh interpreter (``worker.py``), killed after *limit* seconds."""
    try:
        done = subprocess.run(
            [sys.executable, WORKER, name, json.dumps(params)],
            capture_output=True,
            text=True,
            timeout=limit,
            check=False,
            cwd=HERE,
            env=None if env is None else {**os.environ, **env},
        )
    except subprocess.TimeoutExpired as exc:
        raise MeasureError(f"{name} did not finish within {limit:g} s (killed)") from exc
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            if done.returncode != 0:
                break
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise MeasureError(
        f"{name} exited with status {done.returncode}: {done.stderr.strip()[-1500:]}"
    )


# -- the measures (each returns its raw figures) --------------------------------


def measure_caller_cost(cfg: dict[str, Any], urls: dict[str, str]) -> dict[str, Any]:
    c = cfg["caller"]
    params = {"calls": c["calls"], "blocks": c["blocks"], "close_timeout": c["close_timeout"]}
    raw = {"as_is": worker("caller_cost", {**params, "urls": urls}, c["limit"])}
    if c["diagnostic"]:  # the same without first-touch page faults (a full run only)
        raw["pretouched"] = worker(
            "caller_cost", {**params, "urls": urls, "pretouch": True}, c["limit"], PRETOUCH_ENV
        )
    return raw


def measure_throughput(cfg: dict[str, Any], urls: dict[str, str]) -> dict[str, Any]:
    t = cfg["throughput"]
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {"1": {}, "4": {}}
    for _ in range(t["repeats"]):  # interleaved, so that a noisy minute hits every variant
        for workers in (1, 4):
            for variant in ("engine", "engine_state", "urllib3", "requests", "http_client"):
                updates = t["requests_updates"] if variant == "requests" else t["updates"]
                params = {
                    "variant": variant,
                    "workers": workers,
                    "updates": updates,
                    "warm": t["warm"],
                    "url": urls["fast"],
                    "limit": cfg["throughput_limit"] / 2,
                }
                result = worker("throughput", params, cfg["throughput_limit"])
                raw[str(workers)].setdefault(variant, []).append(result)
    return raw


def measure_memory(cfg: dict[str, Any], urls: dict[str, str]) -> dict[str, Any]:
    m = cfg["memory"]
    scenarios = {
        "silent": {"kind": "engine", "url": urls["silent"], "servers": 100},
        "refused": {"kind": "engine", "url": urls["refused"], "servers": 100},
        "servers_10k": {"kind": "engine", "url": urls["silent"], "servers": 10_000},
        "state_10k": {"kind": "engine", "url": urls["silent"], "servers": 10_000, "state": True},
        "floor_queue": {"kind": "floor_queue", "servers": 100},
        "floor_dict_10k": {"kind": "floor_dict", "servers": 10_000},
    }
    return {
        name: worker("memory", {**params, "calls": m["calls"], "settle": m["settle"]}, m["limit"])
        for name, params in scenarios.items()
    }


def _timed_exit(params: dict[str, Any], limit: float) -> float:
    """Seconds from the child's last statement to its exit as seen here."""
    proc = subprocess.Popen(
        [sys.executable, WORKER, "exit_child", json.dumps(params)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=HERE,
    )
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.communicate()
        raise MeasureError(f"a process using the engine did not exit within {limit:g} s") from exc
    exited = time.time()
    lines = [x for x in out.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise MeasureError(f"exit_child failed ({proc.returncode}): {err.strip()[-1000:]}")
    return exited - float(json.loads(lines[-1][len("RESULT ") :])["t_end"])


def measure_shutdown(cfg: dict[str, Any], urls: dict[str, str]) -> dict[str, Any]:
    s = cfg["shutdown"]
    close = worker("close_time", {"url": urls["silent"], "timeout": s["close_timeout"]}, 60)
    exits: dict[str, list[float]] = {"none": [], "fast": [], "silent": []}
    for _ in range(s["exit_repeats"]):
        for mode, seconds in exits.items():
            url = urls["silent"] if mode == "silent" else urls["fast"]
            params = {"mode": mode, "url": url, "shutdown_timeout": s["shutdown_timeout"]}
            seconds.append(_timed_exit(params, 60))
    return {"close": close, "exit": exits, "shutdown_timeout": s["shutdown_timeout"]}


def _importtime(code: str) -> str:
    # Bytecode caches on, as in an installed package (pip compiles them at install):
    # with PYTHONDONTWRITEBYTECODE set, every run would compile lightd_sync from source.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    return done.stderr


def import_cost_ms(code: str, startup: set[str]) -> float:
    """Cumulative import time (ms) of the top-level imports *code* makes, from -X importtime."""
    total = 0
    for name, cumulative in _top_level_imports(_importtime(code)):
        if name not in startup:
            total += cumulative
    return total / 1000


def _top_level_imports(stderr: str) -> list[tuple[str, int]]:
    found = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line[len("import time:") :].split("|")
        if name.startswith(" ") and not name.startswith("  "):  # depth 0: one space
            found.append((name.strip(), int(cumulative)))
    return found


def measure_import(cfg: dict[str, Any], urls: dict[str, str]) -> dict[str, Any]:
    startup = {name for name, _ in _top_level_imports(_importtime("pass"))}
    codes = {
        "urllib3": "import urllib3",
        "lightd_sync": "import lightd_sync",
        "lightd_sync_send": "import lightd_sync; lightd_sync.HttpTransport",
    }
    runs: dict[str, list[float]] = {key: [] for key in codes}
    for code in codes.values():  # compile and cache the .pyc files first
        import_cost_ms(code, startup)
    for _ in range(cfg["import_runs"]):
        for key, code in codes.items():
            runs[key].append(import_cost_ms(code, startup))
    out: dict[str, Any] = {f"{key}_ms": statistics.median(v) for key, v in runs.items()}
    out["runs_ms"] = runs
    return out


def measure_soak(cfg: dict[str, Any], urls: dict[str, str]) -> dict[str, Any]:
    params = {k: v for k, v in cfg["soak"].items() if k != "limit"}
    return worker("soak", {**params, "url": urls["fast"]}, cfg["soak"]["limit"])


RUNNERS: dict[str, Callable[[dict[str, Any], dict[str, str]], dict[str, Any]]] = {
    "caller_cost": measure_caller_cost,
    "throughput": measure_throughput,
    "memory": measure_memory,
    "shutdown": measure_shutdown,
    "import": measure_import,
    "soak": measure_soak,
}


# -- the run -----------------------------------------------------------------------


def _version_of(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "urllib3": _version_of("urllib3"),
        "requests": _version_of("requests"),
        "lightd_sync": _version_of("lightd-sync"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _stop_on_sigterm() -> None:
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[report.Row]]:
    cfg = QUICK if args.quick else FULL
    started = time.time()
    results: dict[str, Any] = {
        "schema": 1,
        "mode": "quick" if args.quick else "full",
        "command": "python benchmarks/run.py " + " ".join(sys.argv[1:]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": machine(),
        "params": cfg,
        "measures": {},
    }
    rows: list[report.Row] = []
    started_remotes: list[Any] = []
    try:
        fast, note = remotes.start_fast_remote(use_nginx=not args.no_nginx)
        started_remotes.append(fast)
        silent = remotes.SilentRemote().start()
        started_remotes.append(silent)
        refused = remotes.RefusedPort().start()
        started_remotes.append(refused)
        results["remote"] = {
            "fast": fast.describe(),
            "nginx": fast.kind == "nginx",
            "nginx_version": getattr(fast, "version", None),
            "note": note,
        }
        print(f"fast remote: {fast.describe()}" + (f"\n  {note}" if note else ""), flush=True)
        urls = {"fast": fast.url, "silent": silent.url, "refused": refused.url}
        if fast.kind != "nginx":
            cfg = scaled_for_slow_remote(cfg)
            results["params"] = cfg
            print(f"  throughput and soak counts divided by {SLOW_REMOTE_DIVISOR}", flush=True)
        for name in args.only or MEASURES:
            t0 = time.monotonic()
            print(f"measuring {name} ...", flush=True)
            entry: dict[str, Any] = {}
            try:
                entry["raw"] = RUNNERS[name](cfg, urls)
                entry["rows"] = report.rows_for(name, entry["raw"])
                entry["status"] = "ok"
                rows += entry["rows"]
            except (MeasureError, subprocess.SubprocessError, OSError, ValueError) as exc:
                entry["status"] = "error"
                entry["error"] = str(exc)
                print(f"  ERROR: {exc}", file=sys.stderr, flush=True)
            except Exception as exc:  # a bug here must not leave the remotes running
                entry["status"] = "error"
                entry["error"] = "".join(traceback.format_exception_only(type(exc), exc))
                traceback.print_exc()
            entry["seconds"] = round(time.monotonic() - t0, 2)
            results["measures"][name] = entry
    finally:
        for remote in reversed(started_remotes):
            remote.stop()
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["duration_s"] = round(time.time() - started, 1)
    verdicts = [r["verdict"] for r in rows]
    results["summary"] = {
        "pass": verdicts.count("PASS"),
        "miss": verdicts.count("MISS"),
        "info": verdicts.count("INFO"),
        "errors": [n for n, e in results["measures"].items() if e["status"] != "ok"],
        "misses": [f"{r['measure']}: {r['condition']}" for r in rows if r["verdict"] == "MISS"],
    }
    return results, rows


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="everything scaled down (seconds)")
    parser.add_argument(
        "--json",
        type=Path,
        default=HERE / "results.json",
        help="where to write the results (default: benchmarks/results.json)",
    )
    parser.add_argument("--no-nginx", action="store_true", help="use the built-in receiver")
    parser.add_argument(
        "--only", nargs="+", choices=MEASURES, metavar="MEASURE", help=", ".join(MEASURES)
    )
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    _stop_on_sigterm()
    try:
        results, rows = run(args)
    except KeyboardInterrupt:
        print("interrupted; the remotes were stopped", file=sys.stderr)
        return 130
    print()
    print(report.format_table(rows))
    summary = results["summary"]
    m = results["machine"]
    remote = results.get("remote", {}).get("fast", "?")
    print(
        f"\n{summary['pass']} PASS, {summary['miss']} MISS, errors: "
        f"{', '.join(summary['errors']) or 'none'}; {m['cores']} cores, Python {m['python']}, "
        f"urllib3 {m['urllib3']}, remote: {remote}; {results['duration_s']} s"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(f"results written to {args.json}")
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
