"""One local Ray cluster (2 CPUs) for every Ray test of the session, started on first use; skipped without ray."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'certquant[ray]' (setup.sh does)")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
