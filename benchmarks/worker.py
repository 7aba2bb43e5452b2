"""
Run one measure in this (fresh) process: ``python benchmarks/worker.py NAME PARAMS_JSON``.

Prints one line ``RESULT <json>`` on stdout. ``run.py`` starts one worker per
measure, so that memory and throughput measures never disturb each other.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

import measures
import throughput

MEASURES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "caller_cost": measures.caller_cost,
    "close_time": measures.close_time,
    "exit_child": measures.exit_child,
    "memory": measures.memory,
    "soak": measures.soak,
    "throughput": throughput.throughput,
}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in MEASURES:
        print(f"usage: worker.py {{{','.join(MEASURES)}}} PARAMS_JSON", file=sys.stderr)
        return 2
    result = MEASURES[argv[1]](json.loads(argv[2]))
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
