"""Software versions recorded with every result."""

from __future__ import annotations

import platform


def software_versions() -> dict[str, str]:
    import numpy
    import scipy
    import torch

    import certquant

    return {
        "certquant": certquant.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
    }
