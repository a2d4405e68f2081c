"""How many CPU threads torch uses, fixed for a block of work, and recorded with results.

Measured on this project's 2-core CPU (torch 2.13.0): forward passes (certification, calibration) give bitwise the
same logits with 1 and 2 threads, and DDPG updates of the search agent the same weights; the backward pass of
noise-aware fine-tuning does not (weights differ by 3.5e-5 after 10 steps: the gradient sums over a batch are split
across threads), which moved the default run's quantized rows by up to 0.01 ACR. Running fine-tuning at a fixed
thread count makes results independent of the machine's and OMP_NUM_THREADS's thread count.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(count)`` and restore the previous count after it (None: unchanged)."""
    previous = torch.get_num_threads()
    if count is not None and count != previous:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def machine_info() -> dict[str, Any]:
    """The machine a result was measured on: CPU model and count, torch's thread count, OMP_NUM_THREADS, platform."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
