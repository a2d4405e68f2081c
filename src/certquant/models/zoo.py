"""The noise-trained checkpoints shipped inside the package (``certquant/zoo``), described by ``zoo.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"
MANIFEST = ZOO_DIR / "zoo.json"


def zoo_entries() -> list[dict[str, Any]]:
    """[{name, path, dataset, model, sigma, clean_accuracy, noisy_accuracy, command}] with absolute paths."""
    if not MANIFEST.is_file():
        return []
    entries = json.loads(MANIFEST.read_text())
    return [{**entry, "path": str(ZOO_DIR / entry["file"])} for entry in entries]
