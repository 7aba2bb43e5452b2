"""
The engine's figures in the Prometheus text exposition format 0.0.4, written by hand.

The format (https://prometheus.io/docs/instrumenting/exposition_formats/):
for every metric family a ``# HELP`` and a ``# TYPE`` line, then its samples
``name{label="value"} number``, one per line, and a final newline. No client
library is needed for a dozen lines.

``lightd_sync_remote_healthy`` and ``lightd_sync_health_check_latency_seconds``
have no sample before the first health check (their HELP and TYPE lines are
still there): "not known yet" is absent rather than ``NaN``, so that
``sum()`` over a fleet stays a number and ``absent()`` finds the nodes that
have not checked yet.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Optional, Union

from ._exceptions import REASONS
from ._model import HealthState, LatencyHistogram, SyncStats

__all__ = ["CONTENT_TYPE", "render_metrics"]

#: The Content-Type of the text exposition format 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_Number = Union[int, float]


def format_value(value: _Number) -> str:
    """Write a sample value or ``le`` bound as Prometheus reads it (``+Inf``, ``NaN``, ``0.25``)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Writer:
    """Collects the lines of one exposition."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(
        self, name: str, value: Optional[_Number], labels: Optional[dict[str, str]] = None
    ) -> None:
        if value is None:
            return  # not known yet: no sample (see the module docstring)
        label_text = ""
        if labels:
            inner = ",".join(f'{key}="{_escape_label(val)}"' for key, val in labels.items())
            label_text = "{" + inner + "}"
        self.lines.append(f"{name}{label_text} {format_value(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


#: The reasons an update is dropped for.
DROP_REASONS = ("queue_full", "closed")


def render_metrics(
    stats: SyncStats,
    health: HealthState,
    latency: LatencyHistogram,
    reasons: Optional[Mapping[tuple[str, str], int]] = None,
    version: Optional[str] = None,
) -> str:
    """
    Return the exposition of one engine's counters, health and delivery latency.

    Metric families: ``lightd_sync_updates_total{outcome=delivered|failed|dropped|superseded}``,
    ``lightd_sync_updates_failed_total{reason=...}``,
    ``lightd_sync_updates_dropped_total{reason=...}`` (every reason, 0 included, so
    the series exist from the start; they sum to the ``outcome`` totals),
    ``lightd_sync_updates_submitted_total`` and ``lightd_sync_updates_resynced_total``
    (counters); ``lightd_sync_updates_pending``, ``lightd_sync_remote_healthy``,
    ``lightd_sync_health_check_latency_seconds``,
    ``lightd_sync_health_consecutive_failures`` and ``lightd_sync_info{version=...}``
    (gauges); ``lightd_sync_delivery_seconds`` (histogram).
    """
    out = _Writer()
    if version is not None:
        out.family("lightd_sync_info", "gauge", "The lightd-sync library; always 1.")
        out.sample("lightd_sync_info", 1, {"version": version})
    out.family(
        "lightd_sync_updates_total",
        "counter",
        "Updates that reached an outcome: delivered, failed (given up on), dropped "
        "(queue full or engine closed), superseded (a newer update of the server replaced it).",
    )
    for outcome in ("delivered", "failed", "dropped", "superseded"):
        out.sample("lightd_sync_updates_total", getattr(stats, outcome), {"outcome": outcome})
    if reasons is not None:
        for result, known in (("failed", REASONS), ("dropped", DROP_REASONS)):
            name = f"lightd_sync_updates_{result}_total"
            out.family(name, "counter", f"Updates {result}, by reason (sums to the outcome total).")
            extra = sorted({r for (res, r) in reasons if res == result} - set(known))
            for reason in (*known, *extra):
                out.sample(name, reasons.get((result, reason), 0), {"reason": reason})
    out.family(
        "lightd_sync_updates_submitted_total",
        "counter",
        "Updates submitted, including resync re-sends; "
        "equals the sum of lightd_sync_updates_total and lightd_sync_updates_pending.",
    )
    out.sample("lightd_sync_updates_submitted_total", stats.submitted)
    out.family(
        "lightd_sync_updates_resynced_total",
        "counter",
        "Re-sends of a server's latest update after the remote recovered (part of submitted).",
    )
    out.sample("lightd_sync_updates_resynced_total", stats.resynced)
    out.family("lightd_sync_updates_pending", "gauge", "Updates queued or in flight now.")
    out.sample("lightd_sync_updates_pending", stats.pending)
    out.family(
        "lightd_sync_remote_healthy",
        "gauge",
        "1 if the last health check of the remote succeeded, 0 if it failed; "
        "no sample before the first check.",
    )
    healthy = None if health.healthy is None else int(health.healthy)
    out.sample("lightd_sync_remote_healthy", healthy)
    out.family(
        "lightd_sync_health_check_latency_seconds",
        "gauge",
        "How long the last health check took; no sample before the first check.",
    )
    out.sample("lightd_sync_health_check_latency_seconds", health.latency)
    out.family(
        "lightd_sync_health_consecutive_failures",
        "gauge",
        "Failed health checks in a row (0 when healthy).",
    )
    out.sample("lightd_sync_health_consecutive_failures", health.consecutive_failures)
    name = "lightd_sync_delivery_seconds"
    out.family(
        name,
        "histogram",
        "How long successful deliveries took, one request each (retries not included).",
    )
    for bound, count in latency.cumulative():
        out.sample(f"{name}_bucket", count, {"le": format_value(bound)})
    out.sample(f"{name}_sum", latency.total)
    out.sample(f"{name}_count", latency.count)
    return out.text()
