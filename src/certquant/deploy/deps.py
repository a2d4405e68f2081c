"""The optional dependencies of ``certquant.deploy`` (the ``deploy`` extra), imported on first use with a one-line
error when missing, so the rest of certquant never needs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from certquant.utils.errors import CertquantError

EXTRA = "pip install 'certquant[deploy]' (onnx==1.23.2, onnxruntime==1.32.0)"


def require(module: str) -> ModuleType:
    """``import module`` or a CertquantError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CertquantError(f"{module} is not installed: {EXTRA}") from None
