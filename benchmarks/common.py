"""What the benchmarks share: where results go, how the measuring device is named, how a result pair is written."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from certquant.utils import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU with the thread count torch uses (timings depend on both)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def write_results(name: str, data: Any, markdown: str, results: Path | None = None) -> None:
    """<results>/<name>.json and <name>.md (default: benchmarks/results), each written atomically."""
    folder = Path(results) if results is not None else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / f"{name}.json", data)
    atomic_write_text(folder / f"{name}.md", markdown)


def heading(title: str, command: str) -> list[str]:
    """The first lines of a results markdown file: its title and the command that made it."""
    return [f"# {title}", "", f"`{command}`", ""]


def save_figure(fig: Any, path: Path) -> Path:
    """Save a matplotlib figure to ``path`` atomically (a temporary file, then a rename) and close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path
