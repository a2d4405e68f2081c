"""The engine's settings: which engine runs certquant's tasks, on how many workers, with what resources."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from certquant.utils.config import check

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class EngineConfig:
    """Where tasks run: ``local`` in this process, one after another (the default; needs nothing); ``ray`` on Ray
    workers of a new local Ray cluster or of the one ``address`` (or ``RAY_ADDRESS``) names."""

    engine: str = "local"
    """local (this process) or ray (Ray workers; pip install 'certquant[ray]')."""
    workers: Optional[int] = None
    """Ray: workers at once (null: as many as the cluster's CPUs, or GPUs with gpus_per_worker, allow)."""
    gpus_per_worker: float = 0.0
    """Ray: GPU share of each worker (1: a GPU each; 0.25: four workers per GPU); refused beyond the cluster's."""
    cpus_per_worker: float = 1.0
    """Ray: CPU cores reserved for each worker."""
    threads_per_worker: Optional[int] = None
    """torch threads of each worker (null: 1 on Ray, so workers x threads = cores; torch's own count locally)."""
    address: Optional[str] = None
    """Ray: cluster address, e.g. HEAD:6379 (null: RAY_ADDRESS, else a new local cluster)."""

    def __post_init__(self) -> None:
        check(self.engine in ENGINES, f"unknown engine '{self.engine}': use local or ray")
        check(
            self.workers is None or (isinstance(self.workers, int) and self.workers >= 1),
            f"workers must be an integer >= 1, got {self.workers!r}",
        )
        check(float(self.gpus_per_worker) >= 0, f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}")
        check(float(self.cpus_per_worker) > 0, f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        check(
            self.threads_per_worker is None
            or (isinstance(self.threads_per_worker, int) and self.threads_per_worker >= 1),
            f"threads_per_worker must be an integer >= 1, got {self.threads_per_worker!r}",
        )
        check(
            self.engine == "ray" or ((self.workers or 1) == 1 and not self.gpus_per_worker and not self.address),
            "workers > 1, gpus_per_worker and address need the Ray engine: add --engine ray (engine.engine=ray in "
            "a run config)",
        )

    @property
    def threads(self) -> int | None:
        """torch threads per worker: the setting, else 1 on Ray workers (workers x threads = cores), else None."""
        if self.threads_per_worker is not None:
            return self.threads_per_worker
        return 1 if self.engine == "ray" else None
