"""What every engine offers, and the local engine (this process, one task after another).

Two kinds of work:

- ``map_unordered(fn, items, names)``: the same function over many small items (images), with state built once per
  worker: ``fn`` is a picklable callable carrying its heavy state (the model); the engine calls ``fn.setup()`` (when
  it has one) once per worker, then ``fn(item)`` per item, and yields ``(position, result)`` as items finish. The
  caller (the driver) alone writes results.
- ``run_graph(tasks)``: heterogeneous tasks with dependencies (the pipeline's searches, fine-tunes and
  certifications); a task runs once every task it depends on has finished and gets their results as its first
  arguments.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from certquant.engine.config import EngineConfig
from certquant.utils.allocator import keep_freed_memory
from certquant.utils.errors import CertquantError


class Items(Protocol):
    """What ``map_unordered`` maps over: a list, or anything with a length that makes item ``position`` on demand."""

    def __len__(self) -> int: ...

    def __getitem__(self, position: int) -> Any: ...


@dataclass(frozen=True)
class Task:
    """One node of a task graph: ``fn(*[result of d for d in deps], *args)``; ``fn`` must be picklable (a
    module-level function) for the Ray engine."""

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    deps: tuple[str, ...] = ()


def check_graph(tasks: Sequence[Task]) -> None:
    """Refuse duplicate names and dependencies on a task not listed before (so the given order is a valid one)."""
    seen: set[str] = set()
    for task in tasks:
        if task.name in seen:
            raise CertquantError(f"task '{task.name}' appears twice in the task graph")
        missing = [d for d in task.deps if d not in seen]
        if missing:
            raise CertquantError(f"task '{task.name}' depends on {missing}, which is not listed before it")
        seen.add(task.name)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch threads (None: unchanged), restoring the previous count after."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def setup_worker(fn: Any) -> Any:
    """Call ``fn.setup()`` when it has one (per-worker state: memory format, device), return ``fn``."""
    setup = getattr(fn, "setup", None)
    if callable(setup):
        setup()
    return fn


class Engine(abc.ABC):
    """Runs certquant's tasks; use as a context manager (``close`` frees workers)."""

    def __init__(self, config: EngineConfig):
        self.config = config

    running: int = 0  # tasks running right now (for progress bars)

    def check_device(self, device_type: str) -> None:
        """Refuse a model device the workers cannot use (checked before work starts)."""
        return None

    @abc.abstractmethod
    def map_unordered(
        self, fn: Callable[[Any], Any], items: Items, names: Sequence[str] | None = None
    ) -> Iterator[tuple[int, Any]]:
        """``fn(item)`` for every item, yielded as ``(position in items, result)`` in completion order."""

    @abc.abstractmethod
    def run_graph(self, tasks: Sequence[Task], progress: bool = False, desc: str = "tasks") -> dict[str, Any]:
        """Run every task after its dependencies; return each task's result by name."""

    def close(self) -> None:
        """Free the engine's workers (idempotent)."""
        return None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalEngine(Engine):
    """This process, one task after another, with ``config.threads`` torch threads when set (restored after), and
    freed memory kept for reuse (``keep_freed_memory``, as in every Ray worker)."""

    def map_unordered(
        self, fn: Callable[[Any], Any], items: Items, names: Sequence[str] | None = None
    ) -> Iterator[tuple[int, Any]]:
        keep_freed_memory()
        with torch_threads(self.config.threads):
            setup_worker(fn)
            self.running = 1
            try:
                for position in range(len(items)):
                    yield position, fn(items[position])
            finally:
                self.running = 0

    def run_graph(self, tasks: Sequence[Task], progress: bool = False, desc: str = "tasks") -> dict[str, Any]:
        check_graph(tasks)
        keep_freed_memory()
        results: dict[str, Any] = {}
        with torch_threads(self.config.threads):
            for task in tasks:
                results[task.name] = task.fn(*[results[d] for d in task.deps], *task.args)
        return results
