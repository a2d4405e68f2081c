"""Dataset-level metrics of smoothing results (pure functions of per-image records).

A record is a dict with at least ``radius`` (float), ``correct`` (bool) and ``predicted`` (-1 = abstain). An
image's radius counts only when it is certified AND correct; certified accuracy at r = fraction with
correct and radius >= r; clean smoothed accuracy = certified accuracy at 0; ACR = mean counted radius.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from scipy.stats import t as student_t

from certquant.smoothing.bounds import clopper_pearson_lower, clopper_pearson_upper

Record = dict[str, Any]  # one image's result: radius, correct, predicted, ...


def counted_radius(record: Record) -> float:
    """The record's radius if it is certified and correct, else 0."""
    return float(record["radius"]) if record["correct"] else 0.0


def certified_accuracy(records: Sequence[Record], radius: float) -> float:
    """Fraction of images that are correct with certified radius >= ``radius``."""
    if not records:
        return 0.0
    return sum(1 for r in records if r["correct"] and float(r["radius"]) >= radius) / len(records)


def average_certified_radius(records: Sequence[Record]) -> float:
    """ACR: the mean counted radius (0 for wrong or abstaining images)."""
    return sum(counted_radius(r) for r in records) / len(records) if records else 0.0


def radius_grid(records: Iterable[Record], step: float = 0.25) -> list[float]:
    """0, step, 2*step, ... up to and including the first radius where certified accuracy reaches 0."""
    largest = max((counted_radius(r) for r in records), default=0.0)
    count = int(math.floor(largest / step + 1e-9)) + 1  # radii 0 .. floor(largest/step)*step, then one where it is 0
    grid = [round(k * step, 10) for k in range(count + 1)]
    return grid if largest > 0 else [0.0]


def proportion_ci(successes: int, total: int, level: float = 0.95) -> list[float] | None:
    """Two-sided Clopper-Pearson confidence interval of a proportion (None when total = 0)."""
    if total == 0:
        return None
    tail = (1.0 - level) / 2
    return [clopper_pearson_lower(successes, total, tail), clopper_pearson_upper(successes, total, tail)]


def mean_ci(values: Sequence[float], level: float = 0.95) -> list[float] | None:
    """Student-t confidence interval of a mean over images (None below 2 values)."""
    count = len(values)
    if count < 2:
        return None
    mean = sum(values) / count
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (count - 1))
    half = float(student_t.ppf(0.5 + level / 2, count - 1)) * sd / math.sqrt(count)
    return [mean - half, mean + half]


def certify_metrics(records: Sequence[Record], step: float = 0.25) -> Record:
    """Clean accuracy, ACR (each with a 95% CI over images), certified accuracy on a radius grid, abstain rate."""
    total = len(records)
    correct = sum(1 for r in records if r["correct"])
    radii = [counted_radius(r) for r in records]
    acr_ci = mean_ci(radii)
    return {
        "num_images": total,
        "clean_accuracy": correct / total if total else 0.0,
        "clean_accuracy_ci95": proportion_ci(correct, total),
        "acr": average_certified_radius(records),
        "acr_ci95": [max(0.0, acr_ci[0]), acr_ci[1]] if acr_ci else None,  # radii are >= 0
        "certified_accuracy": {f"{r:g}": certified_accuracy(records, r) for r in radius_grid(records, step)},
        "abstain_rate": sum(1 for r in records if r["predicted"] == -1) / total if total else 0.0,
    }


def predict_metrics(records: Sequence[Record]) -> Record:
    """Accuracy of the smoothed prediction (with a 95% CI) and abstain rate."""
    total = len(records)
    correct = sum(1 for r in records if r["correct"])
    return {
        "num_images": total,
        "accuracy": correct / total if total else 0.0,
        "accuracy_ci95": proportion_ci(correct, total),
        "abstain_rate": sum(1 for r in records if r["predicted"] == -1) / total if total else 0.0,
    }
