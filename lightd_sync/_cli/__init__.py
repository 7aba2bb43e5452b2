"""
The ``lightd-sync`` command's subcommands, one module each.

Every module listed in :data:`COMMANDS` exposes ``add_parser(subparsers)``
and ``run(args) -> int``; adding a subcommand is adding its name here.
Modules import what is heavy (urllib3, the engine, the receiver) inside
``run``, so that ``--help`` and ``tail`` start fast.
"""

from __future__ import annotations

__all__ = ["COMMANDS"]

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS = (
    "demo",
    "check",
    "send",
    "tail",
    "receiver",
    "agent",
)
