"""Explicit index subsets: evaluation subsets as the literature picks them, and a seeded validation split."""

from __future__ import annotations

import torch

from certquant.utils.errors import CertquantError


def every_kth(total: int, skip: int = 1, max_count: int | None = None, start: int = 0) -> list[int]:
    """Indices start, start+skip, ... below ``total`` (Cohen et al.: every 20th CIFAR-10 test image), at most ``max_count``."""
    if skip < 1:
        raise CertquantError(f"--skip must be >= 1, got {skip}")
    if max_count is not None and max_count < 1:
        raise CertquantError(f"--max must be >= 1, got {max_count}")
    indices = list(range(start, total, skip))
    return indices[:max_count] if max_count is not None else indices


def train_val_split(total: int, val_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of ``range(total)`` into (train indices, validation indices)."""
    if not 0 <= val_size < total:
        raise CertquantError(f"validation size {val_size} must be in [0, {total})")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return order[val_size:].sort().values, order[:val_size].sort().values
