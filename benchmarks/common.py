"""Helpers shared by the measures: engine configs, the request every client sends, RSS, stats."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

__all__ = [
    "STATUSES",
    "TOKEN",
    "base_headers",
    "encode",
    "engine_config",
    "lightd_threads",
    "percentile",
    "request_for",
    "rss_kb",
    "server_ids",
    "summary_ns",
]

# The same token as remotes.TOKEN (measures run in subprocesses that do not import remotes).
TOKEN = "lightd_" + "5eb1a7c0de" * 3 + "ab"
STATUSES = ("installing", "ready")


def engine_config(url: str, **overrides: Any) -> Any:
    """A RemoteConfig for *url*; keyword arguments override the defaults."""
    from lightd_sync import RemoteConfig

    return RemoteConfig(enabled=True, url=url, token=TOKEN, **overrides)


def server_ids(count: int, prefix: str = "bench") -> list[str]:
    """*count* distinct server ids, created once (the caller owns these strings)."""
    return [f"{prefix}-{i:05d}" for i in range(count)]


def base_headers() -> dict[str, str]:
    """The headers the engine sends with ``POST /update``, but the per-request event id."""
    import lightd_sync

    return {
        "Authorization": f"Bearer {TOKEN}",
        "Accept": "application/json",
        "User-Agent": f"lightd-sync/{lightd_sync.__version__}",
        "Content-Type": "application/json",
    }


def request_for(base: dict[str, str], server: str, status: str) -> tuple[bytes, dict[str, str]]:
    """Body and headers of one ``POST /update``, built as a hand-written loop would."""
    headers = dict(base)
    headers["X-Lightd-Event-Id"] = str(uuid.uuid4())
    return encode(server, status), headers


def encode(server: str, status: str) -> bytes:
    """The protocol's body of a status update, compact JSON (what the engine sends)."""
    body = {"event": "update", "server": server, "status": status}
    return json.dumps(body, separators=(",", ":")).encode("ascii")


def rss_kb() -> int:
    """Resident set size of this process in KiB, from ``/proc/self/status`` (VmRSS)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status (not Linux?)")


def lightd_threads() -> list[str]:
    """Names of the live lightd-sync threads."""
    return [t.name for t in threading.enumerate() if t.name.startswith("lightd-sync")]


def percentile(ordered: list[int], fraction: float) -> int:
    """The value at *fraction* (0..1) of an already sorted list (nearest rank)."""
    if not ordered:
        return 0
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def summary_ns(samples: list[int]) -> dict[str, int]:
    """Median, p99, p99.9 and max of per-call durations in nanoseconds."""
    ordered = sorted(samples)
    return {
        "median_ns": percentile(ordered, 0.5),
        "p99_ns": percentile(ordered, 0.99),
        "p999_ns": percentile(ordered, 0.999),
        "max_ns": ordered[-1] if ordered else 0,
    }
