"""
The sync engine and its collaborators (see ``docs/engine.md``).

- :mod:`.engine`: :class:`SyncEngine`, the facade (public API, lifecycle, reload, fork);
- :mod:`.outbox`: every per-server fact and every counter, under one lock;
- :mod:`.pool`: the worker threads and what they do with a batch;
- :mod:`.item`: the value that moves through them;
- :mod:`.policy`, :mod:`.settings`: frozen values (retries, backoff, bounds);
- :mod:`.health`, :mod:`.slot`, :mod:`.reload`, :mod:`.reentry`, :mod:`.exit_hook`;
- :mod:`.state`, :mod:`.state_file`: the state file (``remote.state_path``).
"""

from __future__ import annotations

from .engine import DEFAULT_WAIT, SyncEngine

__all__ = ["DEFAULT_WAIT", "SyncEngine"]
