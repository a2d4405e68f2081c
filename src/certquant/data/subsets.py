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


def compact_indices(indices: list[int]) -> dict:
    """An index set written compactly: ``{"count": N, "ranges": [[start, stop, step], ...]}``, each range meaning
    ``range(start, stop, step)``, in order (every 100th of 10,000 images is one range). ``expand_indices`` inverts it."""
    ranges: list[list[int]] = []
    values = [int(i) for i in indices]
    k = 0
    while k < len(values):
        start = values[k]
        if k + 1 < len(values) and values[k + 1] > start:
            step = values[k + 1] - start
            end = k + 1
            while end + 1 < len(values) and values[end + 1] - values[end] == step:
                end += 1
            if end - k >= 2 or step == 1 or k + 2 >= len(values):  # 3+ terms, a consecutive pair, the last pair
                ranges.append([start, values[end] + step, step])
                k = end + 1
                continue
        ranges.append([start, start + 1, 1])
        k += 1
    return {"count": len(values), "ranges": ranges}


def expand_indices(compact: dict) -> list[int]:
    """The index list ``compact_indices`` wrote compactly."""
    return [i for start, stop, step in compact["ranges"] for i in range(start, stop, step)]


def index_count(indices: list[int] | dict) -> int:
    """How many indices a provenance index set holds, written as a list (older runs) or compactly."""
    return int(indices["count"]) if isinstance(indices, dict) else len(indices)


def describe_indices(indices: list[int]) -> str:
    """A short human reading of an index set, e.g. '0 to 9900 in steps of 100' (every 100th of 10,000 images)."""
    compact = compact_indices(indices)
    if compact["count"] == 0:
        return "none"
    parts = []
    for start, stop, step in compact["ranges"]:
        last = start + (stop - start - 1) // step * step
        if last == start:
            parts.append(f"{start}")
        elif step == 1:
            parts.append(f"{start}-{last}")
        else:
            parts.append(f"{start} to {last} in steps of {step}")
    return "; ".join(parts)
