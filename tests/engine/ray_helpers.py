"""Process helpers of the Ray tests (importable because tests/engine is on sys.path under pytest's prepend mode)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def stat_fields(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, ...); empty when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def parent_pid(pid: int) -> int:
    """The parent of ``pid`` (0 when it is gone)."""
    fields = stat_fields(pid)
    return int(fields[1]) if len(fields) > 1 else 0


def descends_from(pid: int, ancestor: int) -> bool:
    """Whether ``ancestor`` is among ``pid``'s parents (a Ray cluster started by these tests runs under pytest)."""
    while pid > 1:
        pid = parent_pid(pid)
        if pid == ancestor:
            return True
    return False


def ray_worker_pids(prefix: str = "ray::_") -> set[int]:
    """Processes titled by Ray after certquant's worker actor or task (``ray::_Worker``, ``ray::_graph_task``) that
    belong to this test session's cluster: another Ray cluster on the machine (a benchmark running beside the tests)
    is none of the tests' business."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().decode(errors="replace").startswith(prefix):
                    pids.add(int(entry.name))
            except OSError:
                continue
    return {pid for pid in pids if descends_from(pid, os.getpid())}


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
    fields = stat_fields(pid)
    return bool(fields) and fields[0] != "Z"


class PageFaults:
    """A worker function around ``fn``: runs it on the item once, then twice more, and returns the fewer page faults
    (``ru_minflt``) of those two runs: a process that keeps freed memory faults its activations in once (growing its
    heap may still take a few thousand faults in one later run), one that gives it back faults them in on every run."""

    def __init__(self, fn):
        self.fn = fn

    def setup(self) -> None:
        setup = getattr(self.fn, "setup", None)
        if callable(setup):
            setup()

    def __call__(self, item) -> int:
        import resource

        self.fn(item)
        faults = []
        for _ in range(2):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            self.fn(item)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return min(faults)
