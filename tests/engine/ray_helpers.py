"""Process helpers of the Ray tests (importable because tests/engine is on sys.path under pytest's prepend mode)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def ray_worker_pids(prefix: str = "ray::_") -> set[int]:
    """Processes titled by Ray after certquant's worker actor or task (``ray::_Worker``, ``ray::_graph_task``)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().decode(errors="replace").startswith(prefix):
                    pids.add(int(entry.name))
            except OSError:
                continue
    return pids


def wait_until(condition, timeout: float = 30.0, step: float = 0.05) -> bool:
    """Poll ``condition()`` until true or ``timeout`` seconds passed; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return bool(condition())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
