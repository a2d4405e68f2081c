"""The Ray engine: certquant's tasks on Ray workers (a new local cluster, or the cluster ``address`` /
``RAY_ADDRESS`` names).

- ``map_unordered``: K actors (``ray.util.ActorPool``'s idea, written out to keep two items in flight per actor and
  to name failing items), each receiving the worker function once through the object store (so the model is
  deserialized once per worker) and calling it per item. Actors restart when their process dies (``kill -9``, out of
  memory) and Ray re-runs their unfinished items (``max_restarts`` / ``max_task_retries``); items are deterministic
  (noise seeded per image), so a retried item gives the same result.
- ``run_graph``: each task a Ray task with ``cpus_per_worker`` cores and ``gpus_per_worker`` of a GPU, submitted by
  the driver once its dependencies have finished, at most ``workers`` at a time.

A task's exception stops the run: the other workers are killed and the error becomes one ``CertquantError`` line
naming the task. Asking for more CPUs or GPUs than the cluster has is refused before anything runs.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError
from tqdm import tqdm

from certquant.engine.base import Engine, Items, Task, check_graph, setup_worker, torch_threads
from certquant.engine.config import EngineConfig
from certquant.utils.allocator import keep_freed_memory
from certquant.utils.errors import CertquantError

RETRIES = 3  # restarts of a dead worker (and re-runs of its unfinished items) before the run stops
IN_FLIGHT = 2  # items queued per actor: the next item is there when one finishes


class _Worker:
    """A Ray actor holding one worker function (and so one copy of the model) for all its items. Each call carries
    ``boxed_fn`` = ``[ObjectRef]`` of the function, fetched on the first call only: a restarted actor fetches it again
    when Ray re-runs its unfinished items (the driver keeps the reference alive)."""

    def __init__(self, threads: int | None):
        keep_freed_memory()  # as the local engine: without it a fresh worker faulted in every activation again
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        self.fn: Callable[[Any], Any] | None = None

    def _load(self, boxed_fn: list[Any]) -> Callable[[Any], Any]:
        if self.fn is None:
            self.fn = setup_worker(ray.get(boxed_fn[0]))
        return self.fn

    def ready(self, boxed_fn: list[Any]) -> int:
        self._load(boxed_fn)
        return os.getpid()

    def run(self, boxed_fn: list[Any], item: Any) -> tuple[Any, int]:
        return self._load(boxed_fn)(item), os.getpid()


def _graph_task(fn: Callable[..., Any], threads: int | None, args: tuple[Any, ...]) -> Any:
    keep_freed_memory()
    with torch_threads(threads):
        return fn(*args)


def task_error(name: str, exc: BaseException) -> CertquantError:
    """One line for a failed task: which task, and the first line of its error."""
    if isinstance(exc, RayTaskError):
        cause = exc.cause if exc.cause is not None else exc
        if isinstance(cause, (RayActorError, WorkerCrashedError)):
            return task_error(name, cause)
        text = str(cause) if isinstance(cause, CertquantError) else f"{type(cause).__name__}: {cause}"
    elif isinstance(exc, (RayActorError, WorkerCrashedError)) and _raised_in(exc):
        text = f"its Ray worker could not start: {_raised_in(exc)}"
    elif isinstance(exc, (RayActorError, WorkerCrashedError)):
        text = (
            f"its Ray worker died (killed, out of memory, or unable to start; restarted up to {RETRIES} times); "
            "finished work is kept: rerun the command with --resume"
        )
    else:
        text = f"{type(exc).__name__}: {exc}"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return CertquantError(f"{name} failed: {first}")


def _raised_in(exc: BaseException) -> str | None:
    """The last ``SomeError: message`` line of a dead actor's report (an exception in its constructor), if any."""
    lines = [line.strip() for line in str(exc).splitlines()]
    raised = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception): ", line)]
    return raised[-1] if raised else None


class RayEngine(Engine):
    """See the module docstring. Connects on first use; ``close`` kills this engine's workers and shuts down a
    cluster it started itself."""

    def __init__(self, config: EngineConfig):
        super().__init__(config)
        self._started_cluster = False
        self.pids_seen: set[int] = set()  # worker processes that started or returned results (tests see restarts)
        self.startup_seconds = 0.0  # the last map's time until every worker held its model (benchmarks subtract it)

    # -- cluster ------------------------------------------------------------------------------------------------

    def connect(self) -> dict[str, float]:
        """Join (or start) the cluster; return its total resources."""
        if not ray.is_initialized():
            where = self.config.address or os.environ.get("RAY_ADDRESS") or "a new local cluster"
            # Ray runs workers at niceness 15 by default: on a shared machine they would then get less CPU than the
            # single-process engine they replace
            os.environ.setdefault("RAY_worker_niceness", "0")
            try:
                ray.init(address=self.config.address, include_dashboard=False, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
                raise CertquantError(
                    f"could not start or join Ray ({where}): {first}; check RAY_ADDRESS / "
                    "engine.address, or unset it for a local cluster"
                ) from None
            self._started_cluster = True
        return dict(ray.cluster_resources())

    def workers_for(self, items: int | None = None) -> int:
        """Workers to start: the configured count, refused when the cluster lacks the CPUs or GPUs; by default as many
        as the cluster's CPUs (GPUs, when each worker takes a share) allow, at most one per item."""
        c = self.config
        resources = self.connect()
        cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
        if c.gpus_per_worker > 0 and gpus <= 0:
            raise CertquantError(
                f"--gpus-per-worker {c.gpus_per_worker} but the Ray cluster has no GPU: use "
                "--gpus-per-worker 0 (and --device cpu) or a cluster with GPUs"
            )
        if c.workers is not None:
            workers = c.workers
            if workers * c.gpus_per_worker > gpus + 1e-9:
                raise CertquantError(
                    f"{workers} workers x {c.gpus_per_worker} GPU = {workers * c.gpus_per_worker:g} "
                    f"GPUs, but the Ray cluster has {gpus:g}: lower --workers or --gpus-per-worker"
                )
            if workers * c.cpus_per_worker > cpus + 1e-9:
                raise CertquantError(
                    f"{workers} workers x {c.cpus_per_worker:g} CPU = {workers * c.cpus_per_worker:g} "
                    f"CPUs, but the Ray cluster has {cpus:g}: lower --workers"
                )
        else:
            workers = int(cpus // c.cpus_per_worker)
            if c.gpus_per_worker > 0:
                workers = min(workers, int(gpus // c.gpus_per_worker + 1e-9))
            workers = max(1, workers)
        return max(1, min(workers, items)) if items is not None else workers

    def check_device(self, device_type: str) -> None:
        c = self.config
        if device_type == "cuda" and c.gpus_per_worker <= 0:
            raise CertquantError(
                "the model is on cuda but Ray workers get no GPU: give --gpus-per-worker (e.g. 1, or "
                "0.25 for four workers per GPU) or --device cpu"
            )
        if device_type != "cuda" and c.gpus_per_worker > 0:
            raise CertquantError(
                f"--gpus-per-worker {c.gpus_per_worker} but the model runs on {device_type}: use "
                "--device cuda, or --gpus-per-worker 0"
            )
        self.workers_for()

    def close(self) -> None:
        if self._started_cluster and ray.is_initialized():
            ray.shutdown()
        self._started_cluster = False

    # -- work -----------------------------------------------------------------------------------------------------

    def map_unordered(
        self, fn: Callable[[Any], Any], items: Items, names: Sequence[str] | None = None
    ) -> Iterator[tuple[int, Any]]:
        if not items:
            return
        c = self.config
        count = self.workers_for(len(items))
        actor_class = ray.remote(_Worker).options(
            num_cpus=c.cpus_per_worker, num_gpus=c.gpus_per_worker, max_restarts=RETRIES, max_task_retries=RETRIES
        )
        started = time.perf_counter()
        boxed_fn = [ray.put(fn)]
        actors: list[Any] = [actor_class.remote(c.threads) for _ in range(count)]
        ready = [actor.ready.remote(boxed_fn) for actor in actors]  # before the items: once the model is loaded
        pending: dict[Any, tuple[int, Any]] = {}
        todo = iter(range(len(items)))

        def submit(actor: Any) -> None:
            position = next(todo, None)
            if position is not None:
                pending[actor.run.remote(boxed_fn, items[position])] = (position, actor)

        try:
            for actor in actors:
                for _ in range(IN_FLIGHT):
                    submit(actor)
            try:
                self.pids_seen.update(ray.get(ready))
            except (RayTaskError, RayActorError, WorkerCrashedError) as exc:
                raise task_error("starting the Ray workers", exc) from None
            self.startup_seconds = time.perf_counter() - started
            while pending:
                self.running = len({id(a) for _, a in pending.values()})
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                position, actor = pending.pop(ref)
                try:
                    value, pid = ray.get(ref)
                except (RayTaskError, RayActorError, WorkerCrashedError) as exc:
                    raise task_error(names[position] if names else f"item {position}", exc) from None
                self.pids_seen.add(pid)
                submit(actor)
                yield position, value
        finally:
            self.running = 0
            for actor in actors:
                ray.kill(actor, no_restart=True)

    def run_graph(self, tasks: Sequence[Task], progress: bool = False, desc: str = "tasks") -> dict[str, Any]:
        check_graph(tasks)
        c = self.config
        limit = self.workers_for()
        remote = ray.remote(_graph_task).options(
            num_cpus=c.cpus_per_worker, num_gpus=c.gpus_per_worker, max_retries=RETRIES
        )
        results: dict[str, Any] = {}
        waiting = list(tasks)
        pending: dict[Any, Task] = {}
        bar = tqdm(total=len(tasks), desc=desc, unit="task", disable=not progress)
        try:
            while waiting or pending:
                for task in [t for t in waiting if all(d in results for d in t.deps)]:
                    if len(pending) >= limit:
                        break
                    waiting.remove(task)
                    args = (*[results[d] for d in task.deps], *task.args)
                    pending[remote.remote(task.fn, c.threads, args)] = task
                self.running = len(pending)
                bar.set_postfix_str(f"running: {', '.join(t.name for t in pending.values())}", refresh=True)
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                task = pending.pop(ref)
                try:
                    results[task.name] = ray.get(ref)
                except (RayTaskError, RayActorError, WorkerCrashedError) as exc:
                    raise task_error(task.name, exc) from None
                bar.update(1)
        finally:
            bar.close()
            self.running = 0
            for ref in pending:
                ray.cancel(ref, force=True)
        return results
