"""Certified accuracy of one or several ``certquant certify`` runs: a side-by-side markdown table and a PNG curve."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from certquant.smoothing.metrics import average_certified_radius, certified_accuracy, radius_grid
from certquant.utils.errors import CertquantError
from certquant.utils.io import read_jsonl
from certquant.utils.paths import check_input_path
from certquant.utils.tables import markdown_table


@dataclass
class CertifyRun:
    """The per-image records of a certify run (restricted to the indices of its summary, when there is one)."""

    name: str
    records: list[dict]
    summary: dict | None


def load_certify_run(path: str | Path, name: str | None = None) -> CertifyRun:
    """Read ``certificates.jsonl`` (and ``summary.json`` if present) from a run folder."""
    path = check_input_path(path, "certify run", "folder", "give the --out folder of 'certquant certify'")
    jsonl = path / "certificates.jsonl"
    if not jsonl.is_file():
        raise CertquantError(f"{path} holds no certificates.jsonl: give the --out folder of 'certquant certify'")
    by_index = {int(r["index"]): r for r in read_jsonl(jsonl)}
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    if summary and all(i in by_index for i in summary.get("indices", [])):
        records = [by_index[i] for i in summary["indices"]]
    else:  # a run still in progress: everything finished so far
        records = [by_index[i] for i in sorted(by_index)]
    if not records:
        raise CertquantError(f"{jsonl} has no finished images yet: wait for the run or resume it")
    return CertifyRun(name or path.name, records, summary)


def certified_accuracy_table(runs: Sequence[CertifyRun], step: float = 0.25) -> str:
    """Markdown: one row per run (images, ACR, abstain rate, certified accuracy at 0, step, 2 step, ...)."""
    radii = radius_grid([r for run in runs for r in run.records], step)
    headers = ["run", "images", "ACR"] + [f"r={r:g}" for r in radii] + ["abstain"]
    rows = []
    for run in runs:
        abstain = sum(1 for r in run.records if r["predicted"] == -1) / len(run.records)
        rows.append(
            [run.name, len(run.records), average_certified_radius(run.records)]
            + [certified_accuracy(run.records, r) for r in radii]
            + [abstain]
        )
    return markdown_table(headers, rows, digits=3)


def plot_certified_accuracy(runs: Sequence[CertifyRun], path: str | Path, title: str | None = None) -> Path:
    """Certified accuracy vs radius (one step curve per run) as a PNG, drawn with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    largest = max((float(r["radius"]) for run in runs for r in run.records if r["correct"]), default=0.0)
    grid = np.linspace(0.0, max(largest * 1.1, 0.1), 400)
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        ax.plot(grid, [certified_accuracy(run.records, float(r)) for r in grid], label=run.name)
    ax.set_xlabel("radius (L2, [0,1] pixel units)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
