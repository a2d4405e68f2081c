"""Random state without side effects: library code draws from ``torch.Generator`` objects it is given or seeds
itself; where torch offers no generator argument (weight initialisation, dropout) ``seeded_global_rng`` seeds the
global RNG for one block and restores the caller's state afterwards, so no library call changes global random state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded_global_rng(seed: int, device: str | torch.device = "cpu") -> Iterator[None]:
    """Run the block with torch's global RNG seeded by ``seed`` (the CPU generator, and every CUDA device's when
    ``device`` is a CUDA device), then restore the state it had before. What the block draws depends on ``seed``
    only; what the caller draws afterwards is what it would have drawn without the call."""
    cuda = torch.device(device).type == "cuda"
    devices = list(range(torch.cuda.device_count())) if cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(int(seed))
        if cuda:
            torch.cuda.manual_seed_all(int(seed))
        yield
