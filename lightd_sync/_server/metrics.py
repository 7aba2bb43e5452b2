"""The receiver's own figures in the Prometheus text exposition format 0.0.4."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Union

__all__ = ["render_receiver_metrics"]

_Number = Union[int, float]


def _value(value: _Number) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, value: _Number, **labels: str) -> None:
        inner = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        self.lines.append(
            f"{name}{{{inner}}} {_value(value)}" if inner else f"{name} {_value(value)}"
        )


def render_receiver_metrics(
    *,
    counters: Mapping[tuple[str, str], int],
    nodes: Sequence[Mapping[str, Any]],
    servers: Mapping[str, int],
    stuck: int,
    alerts: Mapping[str, int],
    resources: Mapping[str, Mapping[str, float]],
) -> str:
    """The text of ``GET /metrics``: what this receiver counted plus what the database holds."""
    out = _Lines()
    p = "lightd_sync_receiver"
    out.family(f"{p}_updates_total", "counter", "Updates this receiver stored, by status.")
    for (kind, label), n in sorted(counters.items()):
        if kind == "status":
            out.sample(f"{p}_updates_total", n, status=label)
    out.family(f"{p}_node_updates_total", "counter", "Updates this receiver stored, by node.")
    for (kind, label), n in sorted(counters.items()):
        if kind == "node":
            out.sample(f"{p}_node_updates_total", n, node=label)
    out.family(f"{p}_rejected_total", "counter", "Requests or batch items refused, by reason.")
    for (kind, label), n in sorted(counters.items()):
        if kind == "rejected":
            out.sample(f"{p}_rejected_total", n, reason=label)
    out.family(f"{p}_nodes", "gauge", "Nodes by heartbeat state.")
    by_state = {"online": 0, "stale": 0, "never_seen": 0}
    for node in nodes:
        by_state[str(node["state"])] += 1
    for state, n in by_state.items():
        out.sample(f"{p}_nodes", n, state=state)
    out.family(f"{p}_servers", "gauge", "Servers by latest status (fleet-wide).")
    for status, n in sorted(servers.items()):
        out.sample(f"{p}_servers", n, status=status)
    out.family(f"{p}_servers_stuck", "gauge", "Servers installing for longer than stuck-after.")
    out.sample(f"{p}_servers_stuck", stuck)
    out.family(f"{p}_alerts", "gauge", "Alerts by delivery state (fleet-wide).")
    for state in ("pending", "failed", "sent"):
        out.sample(f"{p}_alerts", alerts.get(state, 0), state=state)
    out.family(f"{p}_node_cost_24h", "gauge", "Sum of estimated_cost over the last 24 h, by node.")
    for node in nodes:
        out.sample(f"{p}_node_cost_24h", float(node.get("cost_24h") or 0.0), node=str(node["name"]))
    names = {
        "memory_gb": "Memory (GB) of the servers' latest usage, by node.",
        "cpu_vcpus": "vCPUs of the servers' latest usage, by node.",
        "storage_gb": "Storage (GB) of the servers' latest usage, by node.",
        "egress_gb": "Egress (GB) of the servers' latest usage, by node.",
        "estimated_cost": "Estimated cost of the servers' latest usage, by node.",
    }
    for field, help_text in names.items():
        out.family(f"{p}_node_{field}", "gauge", help_text)
        for name, sums in sorted(resources.items()):
            out.sample(f"{p}_node_{field}", float(sums.get(field, 0.0)), node=name)
    return "\n".join(out.lines) + "\n"
