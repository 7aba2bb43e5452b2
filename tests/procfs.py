"""What Linux's ``/proc`` says about a thread: the signals it blocks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Union

#: Whether ``/proc/PID/task/TID/status`` can be read here (Linux).
HAS_TASKS = Path("/proc/self/task").is_dir()


def blocked_signals(tid: int, pid: Union[int, str] = "self") -> set[int]:
    """The signals thread *tid* of process *pid* blocks, from the kernel's record of its mask."""
    status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    found = re.search(r"^SigBlk:\s*([0-9a-f]+)$", status, re.M)
    assert found, status
    mask = int(found.group(1), 16)
    return {sig for sig in range(1, 65) if mask >> (sig - 1) & 1}
