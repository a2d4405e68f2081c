"""Fixtures of the smoothing tests: a linear classifier whose smoothed probability is known in closed form."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from linear_models import LinearTwoClass
from scipy.stats import norm


@dataclass
class LinearCase:
    model: LinearTwoClass
    x: torch.Tensor
    sigma: float
    p1: float  # P[f(x + e) = 1]
    true_radius: float  # |w.x + b| / ||w||


def make_linear_case(p1: float, sigma: float = 0.5, shape: tuple[int, ...] = (1, 4, 4)) -> LinearCase:
    """A linear classifier and an image x = 0.5 whose class-1 probability under N(0, sigma^2 I) is exactly ``p1``."""
    w = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    x = torch.full(shape, 0.5)
    w_norm = float(w.norm())
    margin = float(norm.ppf(p1)) * sigma * w_norm  # w.x + b
    b = margin - float((w * x).sum())
    return LinearCase(LinearTwoClass(w, b), x, sigma, p1, abs(margin) / w_norm)


@pytest.fixture
def linear_case():
    return make_linear_case


def close(a: float, b: float, rel: float = 1e-12) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-15)
