"""Closed-form test models for the smoothing tests (importable because tests/smoothing is on sys.path under pytest's
prepend mode)."""

import torch
from torch import nn


class LinearTwoClass(nn.Module):
    """f(x) = 1 if w.x + b > 0 else 0, as two logits (-z, z) with z = w.x + b.

    Smoothed: P[f(x + e) = 1] = Phi((w.x + b) / (sigma ||w||)); the true radius of g at x is |w.x + b| / ||w||.
    """

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.register_buffer("w", w.clone())
        self.b = float(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x * self.w).flatten(1).sum(1) + self.b
        return torch.stack([-z, z], dim=1)
