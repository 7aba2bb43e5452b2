"""
The sync engine and its collaborators (see ``docs/engine.md``), one owner per piece of state.

- :mod:`.engine`: :class:`SyncEngine`, the facade that owns the public API;
- :mod:`.runtime`: the :class:`~.runtime.Runtime` it delegates to, which makes the
  collaborators (the one fork path) and owns the lifecycle; :mod:`.reloading`: reload;
- :mod:`.intake`, :mod:`.outbox`, :mod:`.counts`: the outbox, every per-server fact
  and every counter under one lock (the caller's side, the workers' side, the counters);
- :mod:`.pool`: the ``lightd-sync-worker-N`` threads and what they do with a batch;
- :mod:`.item`: the value that moves through them;
- :mod:`.policy`, :mod:`.settings`: frozen values (retries, backoff, bounds);
- :mod:`.health`, :mod:`.slot`, :mod:`.reload`, :mod:`.reentry`, :mod:`.exit_hook`;
- :mod:`.state`, :mod:`.state_writer`, :mod:`.state_rows`, :mod:`.state_file`: the
  state file (``remote.state_path``), fed by the outbox: the ``StateStore`` facade
  over what is pending (``Pending``), what its writer reports (``Progress``) and
  the writer thread with the file (``Writer``).
"""

from __future__ import annotations

from .engine import DEFAULT_WAIT, SyncEngine

__all__ = ["DEFAULT_WAIT", "SyncEngine"]
