"""Keep freed memory in the process for reuse, so forward passes do not fault their activations in again every time.

A CPU forward pass of a certification chunk (200 noisy samples) allocates and frees tens of MB of activations. glibc's
malloc gives a freed block back to the kernel when the free space at the top of its heap exceeds ``M_TRIM_THRESHOLD``,
and serves blocks above ``M_MMAP_THRESHOLD`` by a fresh ``mmap``; both thresholds start at 128 KiB and grow only as
large blocks are freed. The next pass then faults every page in again (the kernel zeroes each). Whether that happens
depends on the process's history: the single-process engine, in the process that had loaded the dataset, took
almost no faults; a fresh Ray worker did, and measured on this project's 2-core CPU each CERTIFY of the small CNN (n = 2,000) took 76,000-98,000 page faults, 0.18-0.23 s of system time on
top of 0.22-0.25 s of compute: the Ray engine with one worker cost 1.9x the single-process engine. With the thresholds
below: 0-10 faults per image, in any process.

Both engines call ``keep_freed_memory`` where they run work (the local engine in its process, the Ray engine in each
worker), so their processes allocate alike. The cost: up to ``TRIM_THRESHOLD`` of freed memory stays in the process.
Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 512 << 20  # free space kept at the top of the heap
MMAP_THRESHOLDS = (256 << 20, 32 << 20)  # blocks below this come from the heap (older glibc refuse above 32 MiB)


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc malloc's trim and mmap thresholds for this process (once); False where malloc is not glibc's or
    refused."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap = any(mallopt(M_MMAP_THRESHOLD, size) == 1 for size in MMAP_THRESHOLDS)
    return bool(mmap and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
